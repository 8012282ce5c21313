"""Seamless-texture references for make_fixtures.py: every Conv2d of the U-Net, the VAE and
the ControlNet wrapping around, as diffusers users make tileable images. Both axes: the
users' recipe, `padding_mode="circular"` on every `torch.nn.Conv2d`. One axis (diffusers
has no switch for it): the community's asymmetric-tiling recipe, each convolution padding
its input circularly along that axis and with zeros along the other, then convolving
without padding. Writes:

  reference/pipeline_*_seamless-*.safetensors   samplings (added to reference/pipelines.json)
  reference/seamless_vae.safetensors            the tiled and the whole VAE decode, wrapping
"""

import json
from contextlib import contextmanager

import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

import controlnet_fixtures
import sd_fixtures


def one_axis_forward(conv, axis):
    """`conv`'s forward with circular padding along `axis` ("x" or "y") only."""

    def forward(x):
        ph, pw = conv.padding
        wrap, zero = ((pw, pw, 0, 0), (0, 0, ph, ph)) if axis == "x" else ((0, 0, ph, ph), (pw, pw, 0, 0))
        x = F.pad(F.pad(x, wrap, mode="circular"), zero)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)

    return forward


@contextmanager
def seamless(models, axes):
    """Every Conv2d of `models` wraps around along `axes` ("xy", "x" or "y") meanwhile."""
    convs = [m for model in models for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    for conv in convs:
        if axes == "xy":
            conv.padding_mode = "circular"
        else:
            conv.forward = one_axis_forward(conv, axes)
    try:
        yield
    finally:
        for conv in convs:
            conv.padding_mode = "zeros"
            conv.__dict__.pop("forward", None)


def make_seamless(out, ella_config):
    sd = out / "sd"
    unet, vae, t5, tokenizer, ella = sd_fixtures.load_tiny_models(out, ella_config)
    runs = json.loads((out / "reference" / "pipelines.json").read_text())
    prompt = "a mossy stone wall texture"
    # A non-square latent (24×32 pixels), so that the axes cannot be mistaken for each other.
    latents = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(71))
    for name, axes in [("dpm++2m_seamless-xy", "xy"), ("euler_seamless-x", "x"), ("ddim_seamless-y", "y")]:
        with seamless([unet, vae], axes):
            runs[name] = sd_fixtures.run_pipeline(out, name, t5, tokenizer, ella, unet, vae,
                                                  sd_fixtures.make_scheduler(name.split("_")[0]), "flexible",
                                                  prompt, "", 7.5, latents)
        runs[name]["seamless"] = axes

    # CLIP with a ControlNet, both wrapping.
    controlnet = ControlNetModel.from_pretrained(str(out / "controlnet")).eval()
    proxy = sd_fixtures.ELLAProxyUNet(None, unet)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(sd / "tokenizer")), unet=proxy, controlnet=controlnet,
        scheduler=sd_fixtures.make_scheduler("dpm++2m"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    hint = controlnet_fixtures.control_image()
    name = "dpm++2m_controlnet-clip-seamless-xy"
    with seamless([unet, vae, controlnet], "xy"):
        height, width = sd_fixtures.sample_and_save(
            out, name, pipe, proxy, torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(72)), 7.5,
            {}, prompt=prompt, negative_prompt="", image=PIL.Image.fromarray(hint),
            controlnet_conditioning_scale=0.9)
    runs[name] = {"prompt": prompt, "negative": "", "guidance": 7.5, "steps": 4, "mode": "flexible",
                  "scheduler": "dpm++2m", "height": height, "width": width, "conditioning": "clip",
                  "control_scale": 0.9, "control_start": 0.0, "control_end": 1.0, "seamless": "xy"}
    path = out / "reference" / f"pipeline_{name}.safetensors"
    tensors = load_file(str(path))
    tensors["control_image"] = torch.from_numpy(hint)
    save_file(tensors, str(path))
    (out / "reference" / "pipelines.json").write_text(json.dumps(runs, indent=1) + "\n")

    # The VAE alone, whole and tiled (diffusers' `enable_tiling`: each tile wraps within itself).
    latents = torch.randn(1, 4, 40, 30, generator=torch.Generator().manual_seed(73))
    ref = {"latents": latents}
    with torch.no_grad(), seamless([vae], "xy"):
        ref["whole"] = vae.decode(latents).sample
        vae.enable_tiling()
        ref["tiled"] = vae.decode(latents).sample
        vae.disable_tiling()
    with torch.no_grad(), seamless([vae], "x"):
        ref["whole_x"] = vae.decode(latents).sample
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "seamless_vae.safetensors"))
