"""Samplings with what community workflows add to ELLA: several ControlNets at once, and a
CLIP branch with a prompt of its own in ELLA + CLIP mode; for make_fixtures.py
(docs/multi-controlnet-reference.md says what the reference does, step by step). Writes:

  controlnet-b/   a second tiny ControlNet (diffusers layout: config.json,
                  diffusion_pytorch_model.safetensors), made like controlnet/ with other seeds
                  and its trunk (the weights copied from the U-Net) perturbed, so that no
                  weight of it equals controlnet/'s
  reference/multicontrolnet.safetensors   one forward of diffusers' MultiControlNetModel
                  (both ControlNets, own images and scales: the summed residuals) and the U-Net
                  with them
  reference/pipeline_<run>.safetensors    the samplings, listed in
  reference/pipelines_community.json      (pipelines.json's format, plus the keys below)

Runs:
  dpm++2m_multicontrolnet-clip   StableDiffusionControlNetPipeline(controlnet=[controlnet,
                                 controlnet-b]) on CLIP; 5 steps, whose ControlNet on/off pattern
                                 is A, A+B, A+B, B, none
  dpm++2m_multicontrolnet-ella   the same on ELLA (both ControlNets cross-attend to the step's
                                 ELLA tokens, as dpm++2m_controlnet-ella)
  dpm++2m_ella-clip-prompt       dpm++2m_ella-clip with a CLIP prompt and CLIP negative of its own
  dpm++2m_ella-clip-prompt-only  a CLIP prompt but no CLIP negative: the CLIP negative is the
                                 (T5) negative

New run keys:
  "controlnets": [{"folder", "scale", "start", "end", "image"}, ...]  (instead of control_scale,
      control_start, control_end); "image" names the run file's uint8 H×W×3 tensor
  "clip_prompt", "clip_negative": the CLIP branch's texts (an absent one is the T5 text's)
New tensors: control_image_{k} (uint8 H×W×3), control_scales (f32 [steps, n]: the scale each
ControlNet was given at each step, diffusers' scale × keep), clip_hidden_uncond and
clip_hidden_cond (f32 [1, 77, 32]: the CLIP states appended after ELLA's tokens).
"""

import json

import numpy as np
import PIL.Image
import torch
from diffusers import ControlNetModel, MultiControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

import controlnet_fixtures
import inpaint_fixtures
import sd_fixtures

PROMPT, NEGATIVE = "the red hat and the other book", ""
# ControlNet A (controlnet/) and B (controlnet-b/): ranges whose edges fall exactly on the step
# fractions of a 5-step run (A's end 0.6 = 3/5: still on at step 2; B's start 0.2 = 1/5: on at
# step 1), so that `<`/`>` vs `<=`/`>=` matter.
CONTROLNETS = [
    {"folder": "controlnet", "scale": 0.9, "start": 0.0, "end": 0.6, "image": "control_image_0"},
    {"folder": "controlnet-b", "scale": 0.6, "start": 0.2, "end": 0.9, "image": "control_image_1"},
]
MULTI_STEPS = 5

# ELLA + CLIP with a CLIP prompt of its own: natural language for T5, tags for CLIP.
T5_PROMPT = "a red book lying on a wooden table next to a cup of coffee"
T5_NEGATIVE = "a blurry photograph of an old man"
CLIP_PROMPT = "red hat, the other book, sks style"
CLIP_NEGATIVE = "red book, lowres"


def tiny_controlnet_b(unet):
    """controlnet_fixtures.tiny_controlnet with other seeds; the trunk (copied from the U-Net)
    scaled weight by weight by 1 + 0.2·N(0, 1), so that it differs from controlnet/'s too."""
    controlnet = controlnet_fixtures.tiny_controlnet(unet, seeds=(131, 132))
    gen = torch.Generator().manual_seed(133)
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if not name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    return controlnet


def control_image_1():
    """A 32×32 depth-map-like image: a grey radial falloff and a bright square."""
    y, x = np.mgrid[0:32, 0:32]
    v = np.clip(230 - 11 * np.sqrt((x - 19.5) ** 2 + (y - 11.5) ** 2), 0, 255)
    v[20:28, 4:12] = 250
    return np.repeat(v.round().astype(np.uint8)[:, :, None], 3, axis=2)


def control_images():
    return [controlnet_fixtures.control_image(), control_image_1()]


def keep(i, steps, start, end):
    """diffusers' controlnet_keep (pipeline_controlnet.py, step 7.2), in Python floats (f64)."""
    return 1.0 - float(i / steps < start or (i + 1) / steps > end)


def make_controlnet_b(out):
    unet = sd_fixtures.UNet2DConditionModel.from_pretrained(str(out / "sd" / "unet")).eval()
    controlnet = tiny_controlnet_b(unet)
    controlnet.save_pretrained(str(out / "controlnet-b"), safe_serialization=True)
    a = ControlNetModel.from_pretrained(str(out / "controlnet")).eval()
    b = ControlNetModel.from_pretrained(str(out / "controlnet-b")).eval()
    assert (out / "controlnet" / "config.json").read_text() == (out / "controlnet-b" / "config.json").read_text()
    sa, sb = a.state_dict(), b.state_dict()
    same = [k for k in sa if torch.equal(sa[k], sb[k])]
    # Only tensors that are constant in both (e.g. all-ones norms never randomized) may agree.
    assert all(sa[k].unique().numel() == 1 for k in same), same


def multi_forward(out):
    """One forward of MultiControlNetModel, checked equal to the sum of the two ControlNets'
    own (scaled) residuals, and the U-Net with the sum."""
    unet = sd_fixtures.UNet2DConditionModel.from_pretrained(str(out / "sd" / "unet")).eval()
    nets = [ControlNetModel.from_pretrained(str(out / c["folder"])).eval() for c in CONTROLNETS]
    multi = MultiControlNetModel(nets)
    sd_ref = load_file(str(out / "reference" / "sd.safetensors"))
    sample, cond, t = sd_ref["unet.sample"], sd_ref["unet.cond"], torch.tensor([999, 250])
    gen = torch.Generator().manual_seed(134)
    images = [torch.rand(2, 3, 16, 16, generator=gen) for _ in nets]
    scales = [c["scale"] for c in CONTROLNETS]
    ref = {"image0": images[0], "image1": images[1], "scales": torch.tensor(scales)}
    with torch.no_grad():
        parts = [net(sample, t, encoder_hidden_states=cond, controlnet_cond=image, conditioning_scale=s,
                     return_dict=False) for net, image, s in zip(nets, images, scales)]
        down, mid = multi(sample, t, encoder_hidden_states=cond, controlnet_cond=images, conditioning_scale=scales,
                          return_dict=False)
        assert len(down) == len(parts[0][0])
        for i, d in enumerate(down):
            assert torch.equal(d, parts[0][0][i] + parts[1][0][i]), i
            ref[f"down{i}"] = d
        assert torch.equal(mid, parts[0][1] + parts[1][1])
        ref["mid"] = mid
        ref["unet"] = unet(sample, t, encoder_hidden_states=cond, down_block_additional_residuals=down,
                           mid_block_additional_residual=mid).sample
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "multicontrolnet.safetensors"))


class Recorder:
    """Wraps each ControlNet's forward (after any ELLA wrapper) to record the scale diffusers
    gives it and its residuals, and the MultiControlNetModel's forward to check, at every
    step, that its residuals are the sum of the nets' own."""

    def __init__(self, multi):
        self.scales, self.calls = [], []
        for k, net in enumerate(multi.nets):
            forward = net.forward

            def recorded(*args, _forward=forward, _k=k, **kwargs):
                down, mid = _forward(*args, **kwargs)
                self.calls.append((_k, kwargs["conditioning_scale"], [d.clone() for d in down], mid.clone()))
                return down, mid

            net.forward = recorded
        multi_forward_ = multi.forward

        def checked(*args, **kwargs):
            self.calls.clear()
            down, mid = multi_forward_(*args, **kwargs)
            assert [k for k, *_ in self.calls] == list(range(len(multi.nets)))
            self.scales.append([s for _, s, _, _ in self.calls])
            (_, _, down_a, mid_a), (_, _, down_b, mid_b) = self.calls
            assert len(down) == len(down_a) == len(down_b)
            for d, a, b in zip(down, down_a, down_b):
                assert torch.equal(d, a + b)
            assert torch.equal(mid, mid_a + mid_b)
            return down, mid

        multi.forward = checked


def run_multi(out, name, conditioning, models, latents, runs):
    """One sampling with both ControlNets; adds its entry to `runs`."""
    unet, vae = models.unet, models.vae
    nets = [ControlNetModel.from_pretrained(str(out / c["folder"])).eval() for c in CONTROLNETS]
    hints = control_images()
    t5_tensors = {}
    if conditioning == "clip":
        proxy = sd_fixtures.ELLAProxyUNet(None, unet)
        text = dict(text_encoder=models.text_encoder, tokenizer=models.clip_tokenizer)
        call = {"prompt": PROMPT, "negative_prompt": NEGATIVE}
    else:
        pos, neg, lengths, t5_tensors = models.t5_states(PROMPT, NEGATIVE)
        proxy = sd_fixtures.ELLAProxyUNet(models.ella, unet)
        proxy.flexible_max_length_workaround = lengths
        for net in nets:
            controlnet_fixtures.wrap_with_ella(net, models.ella, lengths)
        text = dict(text_encoder=None, tokenizer=None)
        call = {"prompt_embeds": pos, "negative_prompt_embeds": neg}
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, unet=proxy, controlnet=nets, scheduler=sd_fixtures.make_scheduler("dpm++2m"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False, **text)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.controlnet, MultiControlNetModel)
    recorder = Recorder(pipe.controlnet)
    call.update(image=[PIL.Image.fromarray(h) for h in hints],
                controlnet_conditioning_scale=[c["scale"] for c in CONTROLNETS],
                control_guidance_start=[c["start"] for c in CONTROLNETS],
                control_guidance_end=[c["end"] for c in CONTROLNETS])
    height, width = sd_fixtures.sample_and_save(out, name, pipe, proxy, latents, 7.5, t5_tensors,
                                                steps=MULTI_STEPS, **call)
    # The scales diffusers gave each net: scale × keep, keep by our formula.
    expected = [[c["scale"] * keep(i, MULTI_STEPS, c["start"], c["end"]) for c in CONTROLNETS]
                for i in range(MULTI_STEPS)]
    assert recorder.scales == expected, (recorder.scales, expected)
    path = out / "reference" / f"pipeline_{name}.safetensors"
    tensors = load_file(str(path))
    for c, hint in zip(CONTROLNETS, hints):
        tensors[c["image"]] = torch.from_numpy(hint)
    tensors["control_scales"] = torch.tensor(recorder.scales, dtype=torch.float32)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    runs[name] = {"prompt": PROMPT, "negative": NEGATIVE, "guidance": 7.5, "steps": MULTI_STEPS,
                  "mode": "flexible", "scheduler": "dpm++2m", "height": height, "width": width,
                  "conditioning": conditioning, "controlnets": [dict(c) for c in CONTROLNETS]}
    return tensors


def independent_multi_loop(out, models, run, tensors):
    """The run's loop written out from the reference text (scheduler, U-Net and ControlNets
    called directly, no pipeline): returns the largest relative difference of latents_step{i}
    and the fraction of pixel values within 1/255."""
    nets = [ControlNetModel.from_pretrained(str(out / c["folder"])).eval() for c in run["controlnets"]]
    scheduler = sd_fixtures.make_scheduler("dpm++2m")
    scheduler.set_timesteps(run["steps"])
    n = len(scheduler.timesteps)
    hints = [torch.from_numpy(tensors[c["image"]].numpy()).permute(2, 0, 1)[None].float() / 255 for c in
             run["controlnets"]]
    latents = tensors["init_latents"] * scheduler.init_noise_sigma
    if run["conditioning"] == "clip":
        states = models.clip_states(run["prompt"], run["negative"])  # [neg; pos]
        condition = lambda t: states
    else:
        _, _, _, t5 = models.t5_states(run["prompt"], run["negative"])
        condition = lambda t: torch.cat([models.ella(t5["t5_hidden_uncond"], t), models.ella(t5["t5_hidden_cond"], t)])
    worst = 0.0
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            cond = condition(t)
            down, mid = None, None
            for c, net, hint in zip(run["controlnets"], nets, hints):
                on = not (i / n < c["start"] or (i + 1) / n > c["end"])
                if not on:
                    continue  # scale 0: diffusers runs the net and multiplies by 0.0
                d, m = net(x, t, encoder_hidden_states=cond, controlnet_cond=torch.cat([hint, hint]),
                           conditioning_scale=c["scale"], return_dict=False)
                down = list(d) if down is None else [a + b for a, b in zip(down, d)]
                mid = m if mid is None else mid + m
            extra = {} if down is None else {"down_block_additional_residuals": down,
                                             "mid_block_additional_residual": mid}
            eps = models.unet(x, t, encoder_hidden_states=cond, **extra).sample
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + run["guidance"] * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents).prev_sample
            ref = tensors[f"latents_step{i}"]
            worst = max(worst, float((latents - ref).abs().max() / ref.abs().max()))
        image = models.vae.decode(latents / models.vae.config.scaling_factor).sample
    image = ((image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int32)
    close = np.abs(image - tensors["image"].numpy().astype(np.int32)) <= 1
    return worst, float(close.mean())


def run_ella_clip_prompt(out, name, models, latents, clip_prompt, clip_negative, runs):
    """dpm++2m_ella-clip's sampling with T5_PROMPT/T5_NEGATIVE for T5 and the CLIP texts for
    CLIP; `clip_negative=None`: CLIP encodes the T5 negative."""
    clip_negative_used = T5_NEGATIVE if clip_negative is None else clip_negative
    clip_states = models.clip_states(clip_prompt, clip_negative_used)  # [neg; pos]
    run = sd_fixtures.run_pipeline(out, name, models.t5, models.tokenizer, models.ella, models.unet, models.vae,
                                   sd_fixtures.make_scheduler("dpm++2m"), "flexible", T5_PROMPT, T5_NEGATIVE, 7.5,
                                   latents, clip_states=clip_states)
    run["clip_prompt"] = clip_prompt
    if clip_negative is not None:
        run["clip_negative"] = clip_negative
    path = out / "reference" / f"pipeline_{name}.safetensors"
    tensors = load_file(str(path))
    tensors["clip_hidden_uncond"], tensors["clip_hidden_cond"] = clip_states[:1], clip_states[1:]
    # The U-Net saw ELLA's tokens followed by exactly these states, every step.
    for i in range(run["steps"]):
        for branch, states in [("uncond", clip_states[:1]), ("cond", clip_states[1:])]:
            assert torch.equal(tensors[f"condition_{branch}_step{i}"][:, -77:], states)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    runs[name] = run


def make_community(out, ella_config):
    make_controlnet_b(out)
    multi_forward(out)
    models = inpaint_fixtures.Models(out, ella_config)
    runs = {}
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(135))
    checks = {}
    for name, conditioning in [("dpm++2m_multicontrolnet-clip", "clip"), ("dpm++2m_multicontrolnet-ella", "ella")]:
        tensors = run_multi(out, name, conditioning, models, latents, runs)
        checks[name] = independent_multi_loop(out, models, runs[name], tensors)

    # ELLA + CLIP: the latents of dpm++2m_ella-clip (sd_fixtures.make_conditioning).
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(42))
    run_ella_clip_prompt(out, "dpm++2m_ella-clip-prompt", models, latents, CLIP_PROMPT, CLIP_NEGATIVE, runs)
    run_ella_clip_prompt(out, "dpm++2m_ella-clip-prompt-only", models, latents, CLIP_PROMPT, None, runs)
    (out / "reference" / "pipelines_community.json").write_text(json.dumps(runs, indent=1) + "\n")
    for name, (worst, fraction) in checks.items():
        print(f"{name}: independent loop: latents within {worst:.2e} relative, "
              f"{fraction * 100:.2f}% of pixel values within 1/255")
