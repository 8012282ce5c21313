"""Inpainting and outpainting references for make_fixtures.py, by diffusers'
StableDiffusionInpaintPipeline and StableDiffusionControlNetInpaintPipeline
(docs/inpainting-reference.md says what they do, step by step). Writes:

  sd-inpaint/                       a complete diffusers SD folder (model_index.json of a
                                    StableDiffusionInpaintPipeline) whose U-Net is a tiny
                                    9-channel inpainting U-Net (sd-v1-5-inpainting layout:
                                    input = concat(latents, mask, masked-image latents));
                                    vae/, scheduler/, text_encoder/, tokenizer/ copied from sd/
  sd-inpaint-single-file.safetensors  the same 9-channel U-Net, the tiny VAE of sd/vae and the
                                    CLIP of sd/text_encoder as one LDM single-file checkpoint
                                    (model.diffusion_model.input_blocks.0.0.weight: [16, 9, 3, 3])
  reference/inpaint_unet.safetensors  one forward of the 9-channel U-Net
  reference/pipeline_*_inpaint*.safetensors, reference/pipeline_*_outpaint*.safetensors
                                    samplings (listed in reference/pipelines_inpaint.json)

Each sampling's file holds, besides what every pipeline run holds (init_latents = the noise,
latents_step{i} after the step's blend, condition_*_step{i}, final_latents, image, timesteps):
  init_image      uint8 H×W×3, the image given to the pipeline (for outpainting: the canvas)
  mask            uint8 H×W, the mask given (255 = repaint, 0 = keep, greys in between)
  mask_latent     f32 [1, 1, h, w], the mask as the pipeline uses it (binarized, at latent size)
  image_latents   f32 [1, 4, h, w], the init image encoded (posterior mean) and scaled
  start_latents   f32 [1, 4, h, w], the latents entering the first step
  masked_image_latents  (9-channel runs) f32 [1, 4, h, w], (image * (mask < 0.5)) encoded, scaled
  control_image   (ControlNet run) uint8 H×W×3
  original_image  (outpainting) uint8, the image before it was padded onto the canvas

As in make_img2img, the VAE posterior's mean stands for its sample and `randn_tensor` hands
out the given noise, so that the runs are reproducible outside torch's RNG.
"""

import json
import shutil
from contextlib import contextmanager

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
import diffusers.pipelines.controlnet.pipeline_controlnet_inpaint as controlnet_inpaint_module
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint as inpaint_module
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

import controlnet_fixtures
import ella_reference
import sd_fixtures
import single_file_fixtures

# Outpainting: the test image padded on the right; the mask also covers OVERLAP pixels of the
# original next to the seam.
OUTPAINT = {"left": 0, "top": 0, "right": 16, "bottom": 0, "overlap": 4, "fill": "edge"}


MODEL_INDEX = {
    "_class_name": "StableDiffusionInpaintPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def tiny_inpaint_unet(cross_attention_dim):
    """sd_fixtures.tiny_unet's architecture with 9 input channels, its own weights."""
    unet = sd_fixtures.tiny_unet(cross_attention_dim, in_channels=9, seeds=(111, 112))
    with torch.no_grad():
        # The mask and masked-image channels: of the same weight as the latents' so they matter.
        unet.conv_in.weight[:, 4:].mul_(2.0)
    return unet


def test_image():
    """make_img2img's kind of image: a smooth gradient with some texture (32×32 RGB)."""
    gen = torch.Generator().manual_seed(121)
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    rgb = torch.stack([1 - x * y, x, y], dim=-1) * 200 + torch.rand(32, 32, 3, generator=gen) * 55
    return rgb.round().clamp(0, 255).to(torch.uint8).numpy()


def test_mask():
    """A rectangle with a soft, grey edge: rings of 64 and 127 (kept: < 0.5 after /255) and of
    128 (repainted: >= 0.5) around a 255 core, bounds on odd pixels so that the latent-size
    mask (nearest: pixel 2i of latent i) differs from a max-pool or area resize; and a blob of
    200 (repainted)."""
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[6:26, 9:27] = 64
    mask[7:25, 10:26] = 127
    mask[8:24, 11:25] = 128
    mask[9:23, 12:24] = 255
    mask[26:30, 2:6] = 200
    return mask


def outpaint_canvas(image):
    """The image on a wider canvas: the new columns repeat the edge pixels (np.pad "edge"),
    mask 255 over the new area and OUTPAINT["overlap"] columns of the original beside it."""
    o = OUTPAINT
    canvas = np.pad(image, ((o["top"], o["bottom"]), (o["left"], o["right"]), (0, 0)), mode="edge")
    # 0 over the original's rectangle, shrunk by the overlap on each side that was padded.
    h, w = image.shape[:2]
    k = lambda side: o["overlap"] if o[side] else 0
    mask = np.full(canvas.shape[:2], 255, dtype=np.uint8)
    mask[o["top"] + k("top"):o["top"] + h - k("bottom"), o["left"] + k("left"):o["left"] + w - k("right")] = 0
    return canvas, mask


@contextmanager
def given_noise(noise):
    """The inpainting pipelines' VAE encodes give the posterior's mean; `randn_tensor` gives
    `noise` (the pipelines draw only the initial noise)."""
    saved = [(m, m.retrieve_latents, m.randn_tensor) for m in (inpaint_module, controlnet_inpaint_module)]

    def randn(shape, generator=None, device=None, dtype=None):
        assert tuple(shape) == tuple(noise.shape), (shape, noise.shape)
        return noise.clone().to(dtype=dtype)

    for module, retrieve, _ in saved:
        module.retrieve_latents = (lambda r: lambda encoded, generator=None, sample_mode="sample": r(
            encoded, generator, "argmax"))(retrieve)
        module.randn_tensor = randn
    try:
        yield
    finally:
        for module, retrieve, randn_ in saved:
            module.retrieve_latents, module.randn_tensor = retrieve, randn_


class Models:
    def __init__(self, out, ella_config):
        sd = out / "sd"
        self.unet = UNet2DConditionModel.from_pretrained(str(sd / "unet")).eval()
        self.unet9 = UNet2DConditionModel.from_pretrained(str(out / "sd-inpaint" / "unet")).eval()
        self.vae = AutoencoderKL.from_pretrained(str(sd / "vae")).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
        self.clip_tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
        self.t5 = T5EncoderModel.from_pretrained(str(out / "t5")).eval()
        self.tokenizer = T5Tokenizer.from_pretrained(str(out / "t5"))
        self.ella = ella_reference.ELLA(**ella_config).eval()
        self.ella.load_state_dict(load_file(str(out / "ella" / "ella.safetensors")))
        self.controlnet = ControlNetModel.from_pretrained(str(out / "controlnet")).eval()

    def clip_states(self, prompt, negative):
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.clip_tokenizer,
                                       unet=self.unet, scheduler=sd_fixtures.make_scheduler("ddim"),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        with torch.no_grad():
            pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
        return torch.cat([neg, pos])

    def t5_states(self, prompt, negative):
        """Flexible mode: each prompt's states alone, padded to the longer for the pipeline."""
        with torch.no_grad():
            neg = self.t5(**self.tokenizer([negative], return_tensors="pt")).last_hidden_state
            pos = self.t5(**self.tokenizer([prompt], return_tensors="pt")).last_hidden_state
        lengths = [neg.shape[1], pos.shape[1]]
        n = max(lengths)
        pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))
        return pad(pos), pad(neg), lengths, {"t5_hidden_uncond": neg, "t5_hidden_cond": pos}


def run_inpaint(out, models, name, conditioning, image, mask, strength, noise, unet9=False, control=None,
                prompt="a red book on a wooden table", negative="", guidance=7.5, extra_tensors=None):
    """One masked sampling (4 steps) with diffusers' inpainting pipeline; returns the
    pipelines.json entry."""
    unet = models.unet9 if unet9 else models.unet
    scheduler = sd_fixtures.make_scheduler(name.split("_")[0])
    clip_states = models.clip_states(prompt, negative) if conditioning == "ella-clip" else None
    ella = None if conditioning == "clip" else models.ella
    proxy = sd_fixtures.ELLAProxyUNet(ella, unet, clip_states)
    parts = dict(vae=models.vae, unet=proxy, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    if conditioning == "clip":
        parts.update(text_encoder=models.text_encoder, tokenizer=models.clip_tokenizer)
        call = {"prompt": prompt, "negative_prompt": negative}
        t5_tensors = {}
    else:
        parts.update(text_encoder=None, tokenizer=None)
        pos, neg, lengths, t5_tensors = models.t5_states(prompt, negative)
        proxy.flexible_max_length_workaround = lengths
        call = {"prompt_embeds": pos, "negative_prompt_embeds": neg}
    if control is None:
        pipe = StableDiffusionInpaintPipeline(**parts)
    else:
        assert conditioning == "clip"
        pipe = StableDiffusionControlNetInpaintPipeline(controlnet=models.controlnet, **parts)
        call.update(control_image=PIL.Image.fromarray(control["image"]),
                    controlnet_conditioning_scale=control["scale"], control_guidance_start=control["start"],
                    control_guidance_end=control["end"])
    pipe.set_progress_bar_config(disable=True)

    # What the pipeline prepares, for debugging: the latent-size mask, the masked image's
    # latents and the latents entering the first step.
    captured = {}
    prepare_mask_latents, prepare_latents = pipe.prepare_mask_latents, pipe.prepare_latents

    def capture_mask(*args, **kwargs):
        mask_, masked = prepare_mask_latents(*args, **kwargs)
        captured["mask_latent"], captured["masked_image_latents"] = mask_[:1].clone(), masked[:1].clone()
        return mask_, masked

    def capture_latents(*args, **kwargs):
        outputs = prepare_latents(*args, **kwargs)
        captured["start_latents"] = outputs[0].clone()
        if len(outputs) == 3:
            captured["image_latents"] = outputs[2].clone()
        return outputs

    pipe.prepare_mask_latents, pipe.prepare_latents = capture_mask, capture_latents
    height, width = image.shape[:2]
    call.update(image=PIL.Image.fromarray(image), mask_image=PIL.Image.fromarray(mask),
                strength=strength, height=height, width=width)
    with given_noise(noise):
        sd_fixtures.sample_and_save(out, name, pipe, proxy, noise, guidance, t5_tensors, **call)

    # The init image's latents (posterior mean, scaled), as the 4-channel blend uses them.
    with torch.no_grad():
        pixels = pipe.image_processor.preprocess(PIL.Image.fromarray(image), height=height, width=width)
        image_latents = models.vae.encode(pixels).latent_dist.mean * models.vae.config.scaling_factor
    if "image_latents" in captured:
        assert torch.equal(captured["image_latents"], image_latents)
    path = out / "reference" / f"pipeline_{name}.safetensors"
    tensors = load_file(str(path))
    tensors.update(init_image=torch.from_numpy(image), mask=torch.from_numpy(mask),
                   mask_latent=captured["mask_latent"], image_latents=image_latents,
                   start_latents=captured["start_latents"], **(extra_tensors or {}))
    if unet9:
        tensors["masked_image_latents"] = captured["masked_image_latents"]
    if control is not None:
        tensors["control_image"] = torch.from_numpy(control["image"])
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    run = {"prompt": prompt, "negative": negative, "guidance": guidance, "steps": 4, "mode": "flexible",
           "scheduler": name.split("_")[0], "height": height, "width": width, "conditioning": conditioning,
           "init_image": f"pipeline_{name}.safetensors", "strength": strength, "mask": True,
           "unet": "sd-inpaint" if unet9 else "sd"}
    if control is not None:
        run.update(control_scale=control["scale"], control_start=control["start"], control_end=control["end"])
    return run


def make_inpaint_models(out, ella_config):
    """sd-inpaint/ (diffusers folders), sd-inpaint-single-file.safetensors, and one forward of
    the 9-channel U-Net."""
    sd, folder = out / "sd", out / "sd-inpaint"
    unet = tiny_inpaint_unet(ella_config["width"])
    (folder / "unet").mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(str(folder / "unet"), safe_serialization=True)
    for sub in ["vae", "scheduler", "text_encoder", "tokenizer"]:
        shutil.rmtree(folder / sub, ignore_errors=True)
        shutil.copytree(sd / sub, folder / sub)
    # What DiffusionPipeline.from_pretrained (and a pipeline's from_single_file, given this
    # folder as its config) reads to know the parts.
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")

    # LDM single file: the 9-channel U-Net, sd/vae's VAE (the same one: this file alone
    # reproduces the 9-channel runs) and sd/text_encoder's CLIP.
    vae = AutoencoderKL.from_pretrained(str(sd / "vae")).eval()
    state = {f"model.diffusion_model.{single_file_fixtures.unet_to_ldm(k, unet.config)}": v.contiguous()
             for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in single_file_fixtures.vae_state_to_ldm(vae).items()})
    clip_file = load_file(str(sd / "text_encoder" / "model.safetensors"))
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_file.items()})
    assert state["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    single = out / "sd-inpaint-single-file.safetensors"
    save_file(state, str(single))
    for cls, model, subfolder in [(UNet2DConditionModel, unet, "unet"), (AutoencoderKL, vae, "vae")]:
        loaded = cls.from_single_file(str(single), config=str(folder), subfolder=subfolder, local_files_only=True)
        expected, actual = model.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys(), subfolder
        for k in expected:
            assert torch.equal(expected[k], actual[k].reshape(expected[k].shape)), (subfolder, k)

    gen = torch.Generator().manual_seed(122)
    ref = {"sample": torch.randn(2, 9, 8, 8, generator=gen),
           "cond": torch.randn(2, 8, ella_config["width"], generator=gen)}
    with torch.no_grad():
        ref["out"] = unet(ref["sample"], torch.tensor([999, 250]), encoder_hidden_states=ref["cond"]).sample
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "inpaint_unet.safetensors"))


def make_inpaint(out, ella_config):
    make_inpaint_models(out, ella_config)
    models = Models(out, ella_config)
    image, mask = test_image(), test_mask()
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(123))
    clip_prompt, clip_negative = "the red hat and the other book", "a red book"
    # Apart from pipelines.json: the 9-channel runs need a pipeline of their own.
    runs = {}
    for name, conditioning, strength, unet9 in [
        ("dpm++2m_inpaint-ella", "ella", 1.0, False),
        ("ddim_inpaint-clip", "clip", 0.75, False),
        ("euler_inpaint-ella-clip", "ella-clip", 0.8, False),
        ("dpm++2m_inpaint9-ella", "ella", 1.0, True),
        ("euler_inpaint9-clip", "clip", 0.7, True),
    ]:
        prompts = {} if conditioning == "ella" else {"prompt": clip_prompt, "negative": clip_negative}
        runs[name] = run_inpaint(out, models, name, conditioning, image, mask, strength, noise, unet9=unet9,
                                 **prompts)

    control = {"image": controlnet_fixtures.control_image(), "scale": 0.8, "start": 0.0, "end": 0.75}
    name = "dpm++2m_inpaint-controlnet-clip"
    runs[name] = run_inpaint(out, models, name, "clip", image, mask, 1.0, noise, control=control,
                             prompt=clip_prompt, negative=clip_negative)

    canvas, canvas_mask = outpaint_canvas(image)
    wide_noise = torch.randn(1, 4, canvas.shape[0] // 2, canvas.shape[1] // 2,
                             generator=torch.Generator().manual_seed(124))
    name = "dpm++2m_outpaint-ella"
    runs[name] = run_inpaint(out, models, name, "ella", canvas, canvas_mask, 1.0, wide_noise,
                             extra_tensors={"original_image": torch.from_numpy(image)})
    runs[name]["outpaint"] = dict(OUTPAINT)
    (out / "reference" / "pipelines_inpaint.json").write_text(json.dumps(runs, indent=1) + "\n")
