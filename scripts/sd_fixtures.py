"""Tiny SD1.5-style models (diffusers layout) and the reference ELLA pipeline on diffusers,
for make_fixtures.py. Writes:

  sd/unet/       config.json, diffusion_pytorch_model.safetensors (UNet2DConditionModel)
  sd/vae/        config.json, diffusion_pytorch_model.safetensors (AutoencoderKL)
  sd/scheduler/  scheduler_config.json (SD1.5's own: a PNDMScheduler config)
  reference/sd.safetensors, reference/schedulers.json, reference/pipeline_*.safetensors,
  reference/vae_tiling.safetensors
"""

import json
from pathlib import Path

import numpy as np
import torch
import PIL.Image
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
from diffusers.schedulers import AysSchedules
from safetensors.torch import save_file
from transformers import T5EncoderModel, T5Tokenizer

import ella_reference

# The scheduler_config.json of runwayml/stable-diffusion-v1-5 (written by PNDMScheduler).
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {}),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}


def make_scheduler(name, overrides=None):
    cls, extra = SCHEDULERS[name]
    return cls.from_config({**SD15_SCHEDULER_CONFIG, **extra, **(overrides or {})})


def randomize_norms(model, gen):
    """Default init leaves norms as identity; perturb them so that their weights matter."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def tiny_unet(cross_attention_dim, in_channels=4, seeds=(11, 12)):
    torch.manual_seed(seeds[0])
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=2,
        attention_head_dim=2,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=4,
    ).eval()
    gen = torch.Generator().manual_seed(seeds[1])
    randomize_norms(unet, gen)
    with torch.no_grad():
        # diffusers leaves conv_out small; a unit-scale output makes each sampling step move.
        unet.conv_out.weight.mul_(4.0)
    return unet


def tiny_vae(seed=13):
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.18215,
    ).eval()
    randomize_norms(vae, torch.Generator().manual_seed(seed + 1))
    return vae


def scheduler_fixtures(out):
    """Timesteps, sigmas and a few steps with fixed model outputs, for every scheduler."""
    gen = torch.Generator().manual_seed(21)
    sample = torch.randn(1, 4, 4, 4, generator=gen)
    outputs = [torch.randn(1, 4, 4, 4, generator=gen) for _ in range(6)]
    tensors = {"step.sample": sample}
    for i, o in enumerate(outputs):
        tensors[f"step.model_output{i}"] = o
    cases = {}
    variants = [(name, {}) for name in SCHEDULERS]
    variants += [
        ("ddim", {"timestep_spacing": "trailing"}),
        ("ddim", {"timestep_spacing": "linspace"}),
        ("euler", {"timestep_spacing": "leading"}),
        ("euler", {"timestep_spacing": "trailing"}),
        ("euler", {"use_karras_sigmas": True}),
        ("dpm++2m", {"timestep_spacing": "leading"}),
        ("dpm++2m", {"timestep_spacing": "trailing"}),
        ("dpm++2m", {"prediction_type": "v_prediction"}),
        ("ddim", {"prediction_type": "v_prediction"}),
        ("euler", {"prediction_type": "v_prediction"}),
    ]
    for name, overrides in variants:
        key = name + "".join(f"/{k}={v}" for k, v in overrides.items())
        case = {"scheduler": name, "overrides": overrides, "steps": {}}
        for steps in [1, 4, 10, 25, 50]:
            s = make_scheduler(name, overrides)
            s.set_timesteps(steps)
            entry = {"timesteps": s.timesteps.tolist(), "init_noise_sigma": float(s.init_noise_sigma)}
            if hasattr(s, "sigmas"):
                entry["sigmas"] = s.sigmas.tolist()
            case["steps"][str(steps)] = entry
        # Six steps of a 6-step schedule with fixed model outputs.
        s = make_scheduler(name, overrides)
        s.set_timesteps(6)
        x = sample.clone() * s.init_noise_sigma
        for i, t in enumerate(s.timesteps):
            inp = s.scale_model_input(x, t)
            tensors[f"{key}.scaled{i}"] = inp.clone()
            x = s.step(outputs[i], t, x).prev_sample
            tensors[f"{key}.prev{i}"] = x
        cases[key] = case
    # Align Your Steps (SD1.5's published 10 timesteps) through DPM-Solver++.
    s = make_scheduler("dpm++2m")
    s.set_timesteps(timesteps=AysSchedules["StableDiffusionTimesteps"])
    cases["dpm++2m/ays"] = {
        "scheduler": "dpm++2m",
        "overrides": {},
        "steps": {"10": {"timesteps": s.timesteps.tolist(), "sigmas": s.sigmas.tolist(), "init_noise_sigma": 1.0}},
    }
    (out / "reference" / "schedulers.json").write_text(json.dumps(cases, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "reference" / "scheduler_steps.safetensors"))


def scheduler_limit_fixtures(out):
    """What diffusers does at the largest step counts (999 and 1000) with SD1.5's config:
    the timesteps, and whether all the steps run (with fixed, smooth model outputs) to a
    finite sample. At 1000 steps DDIM indexes past the 1000 training timesteps (IndexError)
    and DPM-Solver++ spaces timestep 500 twice and divides by the zero-length step; ella
    refuses those step counts (naming the largest that works) where diffusers fails."""
    gen = torch.Generator().manual_seed(22)
    sample = torch.randn(1, 4, 4, 4, generator=gen)
    cases = {}
    for name in SCHEDULERS:
        for steps in [999, 1000]:
            s = make_scheduler(name)
            s.set_timesteps(steps)
            entry = {"timesteps": s.timesteps.tolist()}
            x = sample.clone() * s.init_noise_sigma
            try:
                for i, t in enumerate(s.timesteps):
                    output = torch.sin(s.scale_model_input(x, t) * 0.7 + i * 0.01)
                    x = s.step(output, t, x).prev_sample
                entry["runs"] = bool(torch.isfinite(x).all())
                entry["failure"] = None if entry["runs"] else f"non-finite sample after step {i}"
            except IndexError as e:
                entry["runs"] = False
                entry["failure"] = f"IndexError at step {i}: {e}"
            cases[f"{name}/{steps}"] = entry
    (out / "reference" / "scheduler_limits.json").write_text(json.dumps(cases) + "\n")


class ELLAProxyUNet(torch.nn.Module):
    """The official inference.py's proxy: ELLA runs on every U-Net call with the U-Net's
    timestep; in flexible mode each row is cut back to its own token count first.
    `ella=None` passes the pipeline's own (CLIP) states through; `clip_states` ([negative;
    positive]) are appended after ELLA's tokens, as ComfyUI-ELLA's concat mode does."""

    def __init__(self, ella, unet, clip_states=None):
        super().__init__()
        self.ella = ella
        self.unet = unet
        self.clip_states = clip_states
        self.config = unet.config
        self.dtype = unet.dtype
        self.device = unet.device
        self.flexible_max_length_workaround = None
        self.conditions = []

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        if self.ella is None:
            cond = encoder_hidden_states
        elif self.flexible_max_length_workaround is not None:
            rows = [
                self.ella(encoder_hidden_states[i : i + 1, :length], timestep)
                for i, length in enumerate(self.flexible_max_length_workaround)
            ]
            cond = torch.cat(rows, dim=0)
        else:
            cond = self.ella(encoder_hidden_states, timestep)
        if self.clip_states is not None:
            cond = torch.cat([cond, self.clip_states], dim=1)
        self.conditions.append(cond)
        return self.unet(sample=sample, timestep=timestep, encoder_hidden_states=cond, **kwargs)


def sample_and_save(out, name, pipe, proxy, latents, guidance, tensors, steps=4, **call):
    """Runs `pipe` for `steps` steps from `latents` (the initial noise; for image-to-image,
    the noise added to the image's latent) and saves every step's latents and condition tokens
    (recorded by `proxy`), the final latents and the image to pipeline_{name}."""
    num_steps = steps
    steps = []

    def on_step(pipe_, i, t, kwargs):
        steps.append((float(t), kwargs["latents"].clone()))
        return kwargs

    height, width = latents.shape[2] * 2, latents.shape[3] * 2
    if "strength" not in call:  # image-to-image takes its size from the image, its noise given
        call = {**call, "latents": latents.clone(), "height": height, "width": width}
    with torch.no_grad():
        image = pipe(
            **call, guidance_scale=guidance, num_inference_steps=num_steps, output_type="np",
            callback_on_step_end=on_step,
        ).images[0]
    tensors = {**tensors, "init_latents": latents}
    for i, (t, lat) in enumerate(steps):
        tensors[f"latents_step{i}"] = lat
        if guidance > 1:
            uncond, cond = proxy.conditions[i].chunk(2)
            tensors[f"condition_uncond_step{i}"] = uncond
        else:  # without guidance the U-Net sees the prompt's branch alone
            cond = proxy.conditions[i]
        tensors[f"condition_cond_step{i}"] = cond
    tensors["final_latents"] = steps[-1][1].clone()
    tensors["image"] = torch.from_numpy(np.round(image * 255).astype(np.uint8))
    tensors["timesteps"] = torch.tensor([t for t, _ in steps], dtype=torch.float32)
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(out / "reference" / f"pipeline_{name}.safetensors"))
    return height, width


def run_pipeline(out, name, t5, tokenizer, ella, unet, vae, scheduler, mode, prompt, negative, guidance, latents,
                 clip_states=None, img2img=None, extra=None):
    """An ELLA sampling; `img2img` = (init image, strength, steps) runs diffusers'
    StableDiffusionImg2ImgPipeline instead; `extra` adds arguments to the pipeline call."""
    proxy = ELLAProxyUNet(ella, unet, clip_states)
    pipe_class = StableDiffusionPipeline if img2img is None else StableDiffusionImg2ImgPipeline
    pipe = pipe_class(
        vae=vae, text_encoder=None, tokenizer=None, unet=proxy, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if mode == "fixed":
        enc = tokenizer([negative, prompt], padding="max_length", max_length=128, truncation=True, return_tensors="pt")
        with torch.no_grad():
            states = t5(**enc).last_hidden_state
        neg_states, pos_states = states[:1], states[1:]
        t5_tensors = {"t5_hidden": states}
    else:
        neg = tokenizer([negative], return_tensors="pt")
        pos = tokenizer([prompt], return_tensors="pt")
        with torch.no_grad():
            neg_states = t5(**neg).last_hidden_state
            pos_states = t5(**pos).last_hidden_state
        n = max(neg_states.shape[1], pos_states.shape[1])
        lengths = [neg_states.shape[1], pos_states.shape[1]]
        # Without guidance the U-Net's batch is the prompt's row alone.
        proxy.flexible_max_length_workaround = lengths if guidance > 1 else lengths[1:]
        t5_tensors = {"t5_hidden_uncond": neg_states, "t5_hidden_cond": pos_states}
        pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))
        neg_states, pos_states = pad(neg_states), pad(pos_states)
    call = {"prompt_embeds": pos_states, "negative_prompt_embeds": neg_states, **(extra or {})}
    steps, run = 4, {}
    if img2img is not None:
        image, strength, steps = img2img
        call.update(image=PIL.Image.fromarray(image.numpy()), strength=strength)
        run = {"init_image": f"pipeline_{name}.safetensors", "strength": strength}
    height, width = sample_and_save(out, name, pipe, proxy, latents, guidance, t5_tensors, steps=steps, **call)
    return {"prompt": prompt, "negative": negative, "guidance": guidance, "steps": steps, "mode": mode,
            "scheduler": name.split("_")[0], "height": height, "width": width,
            "conditioning": "ella" if clip_states is None else "ella-clip", **run}


def run_clip_pipeline(out, name, text_encoder, tokenizer, unet, vae, scheduler, prompt, negative, guidance, latents,
                      **extra):
    """Plain SD1.5: diffusers' StableDiffusionPipeline with its CLIP text encoder; `extra`
    adds arguments to the pipeline call."""
    proxy = ELLAProxyUNet(None, unet)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=proxy, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    height, width = sample_and_save(out, name, pipe, proxy, latents, guidance, {}, prompt=prompt,
                                    negative_prompt=negative, **extra)
    return {"prompt": prompt, "negative": negative, "guidance": guidance, "steps": 4, "mode": "flexible",
            "scheduler": name.split("_")[0], "height": height, "width": width, "conditioning": "clip"}


def load_tiny_models(out, ella_config):
    """The committed tiny models: (U-Net, VAE, T5, T5's tokenizer, ELLA's connector)."""
    from safetensors.torch import load_file

    sd = out / "sd"
    unet = UNet2DConditionModel.from_pretrained(str(sd / "unet")).eval()
    vae = AutoencoderKL.from_pretrained(str(sd / "vae")).eval()
    t5 = T5EncoderModel.from_pretrained(str(out / "t5")).eval()
    tokenizer = T5Tokenizer.from_pretrained(str(out / "t5"))
    ella = ella_reference.ELLA(**ella_config).eval()
    ella.load_state_dict(load_file(str(out / "ella" / "ella.safetensors")))
    return unet, vae, t5, tokenizer, ella


def make_conditioning(out, ella_config):
    """Samplings conditioned on the tiny CLIP (sd/text_encoder, sd/tokenizer): plain SD, and
    ELLA's tokens followed by CLIP's. Adds them to reference/pipelines.json."""
    from transformers import CLIPTextModel, CLIPTokenizer

    sd = out / "sd"
    unet, vae, t5, tokenizer, ella = load_tiny_models(out, ella_config)
    text_encoder = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
    clip_tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(42))
    prompt, negative = "the red hat and the other book", "a red book"
    runs = json.loads((out / "reference" / "pipelines.json").read_text())
    runs["dpm++2m_clip"] = run_clip_pipeline(out, "dpm++2m_clip", text_encoder, clip_tokenizer, unet, vae,
                                             make_scheduler("dpm++2m"), prompt, negative, 7.5, latents)
    # diffusers' own prompt encoding gives the CLIP states the concat mode appends.
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer, unet=unet,
                                   scheduler=make_scheduler("dpm++2m"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
    runs["dpm++2m_ella-clip"] = run_pipeline(out, "dpm++2m_ella-clip", t5, tokenizer, ella, unet, vae,
                                             make_scheduler("dpm++2m"), "flexible", prompt, negative, 7.5, latents,
                                             clip_states=torch.cat([neg, pos]))
    (out / "reference" / "pipelines.json").write_text(json.dumps(runs, indent=1) + "\n")


def make_vae_tiling(out):
    """diffusers' tiled VAE decode (enable_tiling) of two latents larger than one tile of the
    tiny VAE (sample_size 32: 16-latent tiles, stride 12, 8-pixel blends; the last row of
    tiles is exactly one blend high), and the whole decode of the same latents."""
    vae = AutoencoderKL.from_pretrained(str(out / "sd" / "vae")).eval()
    latents = torch.randn(2, 4, 40, 30, generator=torch.Generator().manual_seed(51))
    ref = {"latents": latents}
    with torch.no_grad():
        ref["whole"] = vae.decode(latents).sample
        vae.enable_tiling()
        ref["tiled"] = vae.decode(latents).sample
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "vae_tiling.safetensors"))


def make_sd(out, ella_config):
    sd = out / "sd"
    unet = tiny_unet(ella_config["width"])
    vae = tiny_vae()
    for sub, model in [("unet", unet), ("vae", vae)]:
        (sd / sub).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(sd / sub), safe_serialization=True)
    (sd / "scheduler").mkdir(parents=True, exist_ok=True)
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2) + "\n")

    gen = torch.Generator().manual_seed(31)
    ref = {}
    with torch.no_grad():
        # One U-Net forward: CFG-style batch of 2, 8 condition tokens, one timestep each.
        sample = torch.randn(2, 4, 8, 8, generator=gen)
        cond = torch.randn(2, 8, ella_config["width"], generator=gen)
        ref["unet.sample"], ref["unet.cond"] = sample, cond
        ref["unet.out"] = unet(sample, torch.tensor([999, 250]), encoder_hidden_states=cond).sample
        # Any token count (13), a fractional timestep, and a latent size (9×7) that the U-Net's
        # downsampling does not divide: the up-blocks resize to the skip connection.
        sample = torch.randn(1, 4, 9, 7, generator=gen)
        cond = torch.randn(1, 13, ella_config["width"], generator=gen)
        ref["unet_odd.sample"], ref["unet_odd.cond"] = sample, cond
        ref["unet_odd.out"] = unet(sample, torch.tensor([741.5]), encoder_hidden_states=cond).sample
        # VAE decode (with post_quant_conv), as the pipeline calls it.
        latents = torch.randn(1, 4, 16, 16, generator=gen)
        ref["vae.latents"] = latents
        ref["vae.decoded"] = vae.decode(latents).sample
        # VAE encode (mean of the latent distribution) for img2img.
        image = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
        ref["vae.image"] = image
        ref["vae.encoded_mean"] = vae.encode(image).latent_dist.mean
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "sd.safetensors"))
    make_vae_tiling(out)
    scheduler_fixtures(out)

    # Complete 4-step CFG samplings with the tiny T5 + connector + U-Net + VAE.
    t5 = T5EncoderModel.from_pretrained(str(out / "t5")).eval()
    tokenizer = T5Tokenizer.from_pretrained(str(out / "t5"))
    ella = ella_reference.ELLA(**ella_config).eval()
    from safetensors.torch import load_file
    ella.load_state_dict(load_file(str(out / "ella" / "ella.safetensors")))
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(41))
    runs = {}
    for name, mode, guidance in [("dpm++2m_flexible", "flexible", 10.0), ("ddim_fixed", "fixed", 7.5),
                                 ("euler_flexible", "flexible", 5.0)]:
        scheduler = make_scheduler(name.split("_")[0])
        runs[name] = run_pipeline(out, name, t5, tokenizer, ella, unet, vae, scheduler, mode,
                                  "a red book on a wooden table", "", guidance, latents)
    (out / "reference" / "pipelines.json").write_text(json.dumps(runs, indent=1) + "\n")


def make_img2img(out, ella_config):
    """ELLA image-to-image with three schedulers (each noises the image its own way and starts
    at its own step), via diffusers' StableDiffusionImg2ImgPipeline. The image's latent is the
    VAE posterior's mean (`retrieve_latents(..., sample_mode="argmax")`) and the added noise
    is given (saved as `init_latents`), so that the run is reproducible outside torch's RNG.
    Adds the runs to reference/pipelines.json; the init image is saved in each run's file."""
    from safetensors.torch import load_file

    unet, vae, t5, tokenizer, ella = load_tiny_models(out, ella_config)
    gen = torch.Generator().manual_seed(81)
    # A smooth gradient with some texture: an image whose content the result should keep.
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    rgb = torch.stack([x, y, 1 - x * y], dim=-1) * 200 + torch.rand(32, 32, 3, generator=gen) * 55
    image = rgb.round().clamp(0, 255).to(torch.uint8)
    noise = torch.randn(1, 4, 16, 16, generator=gen)
    argmax = img2img_module.retrieve_latents
    img2img_module.retrieve_latents = lambda encoded, generator=None, sample_mode="sample": argmax(
        encoded, generator, "argmax")
    img2img_module.randn_tensor = lambda shape, generator=None, device=None, dtype=None: noise.clone()
    runs = json.loads((out / "reference" / "pipelines.json").read_text())
    for name, strength, steps in [("dpm++2m_img2img", 0.7, 6), ("euler_img2img", 0.6, 5), ("ddim_img2img", 0.75, 4)]:
        runs[name] = run_pipeline(out, name, t5, tokenizer, ella, unet, vae, make_scheduler(name.split("_")[0]),
                                  "flexible", "a red book on a wooden table", "", 7.5, noise,
                                  img2img=(image, strength, steps))
        path = out / "reference" / f"pipeline_{name}.safetensors"
        tensors = load_file(str(path))
        tensors["init_image"] = image.contiguous()
        save_file(tensors, str(path))
    img2img_module.retrieve_latents = argmax
    (out / "reference" / "pipelines.json").write_text(json.dumps(runs, indent=1) + "\n")
