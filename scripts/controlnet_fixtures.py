"""A tiny SD1.5-style ControlNet (diffusers `ControlNetModel`, made from the tiny U-Net with
random zero convolutions) and its reference outputs, for make_fixtures.py. Writes:

  controlnet/  config.json, diffusion_pytorch_model.safetensors
  reference/controlnet.safetensors: one ControlNet forward (its residuals) and the U-Net
      forward with them added
  reference/pipeline_dpm++2m_controlnet*.safetensors (+ pipelines.json entries): samplings with
      the ControlNet, by diffusers' StableDiffusionControlNetPipeline: plain SD (CLIP), and ELLA
      (the ControlNet cross-attends to the same per-step ELLA tokens as the U-Net, as ComfyUI
      passes it the step's conditioning)
"""

import json

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ControlNetModel, StableDiffusionControlNetPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

import ella_reference
import sd_fixtures


def tiny_controlnet(unet, seeds=(101, 102)):
    torch.manual_seed(seeds[0])
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16)).eval()
    gen = torch.Generator().manual_seed(seeds[1])
    with torch.no_grad():
        # diffusers initialises the output convolutions to zero; random ones make them matter.
        for name, p in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return controlnet


def control_image():
    """A 32×32 edge-map-like image: white lines on black."""
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[8, 4:28] = 255
    image[4:28, 20] = 255
    image[np.arange(32), np.arange(32)] = 255
    return image


def wrap_with_ella(model, ella, lengths):
    """Makes `model` read ELLA's tokens of the step's timestep instead of the T5 states the
    pipeline passes (cut back to each row's own length, as the official proxy does)."""
    forward = model.forward

    def ella_forward(sample, timestep, encoder_hidden_states, **kwargs):
        rows = [ella(encoder_hidden_states[i:i + 1, :n], timestep) for i, n in enumerate(lengths)]
        return forward(sample, timestep, encoder_hidden_states=torch.cat(rows), **kwargs)

    model.forward = ella_forward


def make_controlnet(out, ella_config):
    sd = out / "sd"
    unet = UNet2DConditionModel.from_pretrained(str(sd / "unet")).eval()
    controlnet = tiny_controlnet(unet)
    controlnet.save_pretrained(str(out / "controlnet"), safe_serialization=True)

    gen = torch.Generator().manual_seed(103)
    sd_ref = load_file(str(out / "reference" / "sd.safetensors"))
    sample, cond = sd_ref["unet.sample"], sd_ref["unet.cond"]
    image = torch.rand(2, 3, 16, 16, generator=gen)
    ref = {"image": image}
    with torch.no_grad():
        down, mid = controlnet(sample, torch.tensor([999, 250]), encoder_hidden_states=cond, controlnet_cond=image,
                               conditioning_scale=0.8, return_dict=False)
        for i, d in enumerate(down):
            ref[f"down{i}"] = d
        ref["mid"] = mid
        ref["unet"] = unet(sample, torch.tensor([999, 250]), encoder_hidden_states=cond,
                           down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "controlnet.safetensors"))

    vae = AutoencoderKL.from_pretrained(str(sd / "vae")).eval()
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(104))
    hint = control_image()
    runs = json.loads((out / "reference" / "pipelines.json").read_text())
    prompt, negative = "the red hat and the other book", ""
    control = {"image": PIL.Image.fromarray(hint), "controlnet_conditioning_scale": 0.8,
               "control_guidance_start": 0.0, "control_guidance_end": 0.75}
    run_info = {"control_scale": 0.8, "control_start": 0.0, "control_end": 0.75}

    # Plain SD with CLIP.
    proxy = sd_fixtures.ELLAProxyUNet(None, unet)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(sd / "tokenizer")), unet=proxy, controlnet=controlnet,
        scheduler=sd_fixtures.make_scheduler("dpm++2m"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    name = "dpm++2m_controlnet-clip"
    height, width = sd_fixtures.sample_and_save(out, name, pipe, proxy, latents, 7.5, {}, prompt=prompt,
                                                negative_prompt=negative, **control)
    runs[name] = {"prompt": prompt, "negative": negative, "guidance": 7.5, "steps": 4, "mode": "flexible",
                  "scheduler": "dpm++2m", "height": height, "width": width, "conditioning": "clip", **run_info}

    # ELLA, flexible token lengths, for the U-Net and the ControlNet alike.
    t5 = T5EncoderModel.from_pretrained(str(out / "t5")).eval()
    tokenizer = T5Tokenizer.from_pretrained(str(out / "t5"))
    ella = ella_reference.ELLA(**ella_config).eval()
    ella.load_state_dict(load_file(str(out / "ella" / "ella.safetensors")))
    with torch.no_grad():
        neg_states = t5(**tokenizer([negative], return_tensors="pt")).last_hidden_state
        pos_states = t5(**tokenizer([prompt], return_tensors="pt")).last_hidden_state
    lengths = [neg_states.shape[1], pos_states.shape[1]]
    n = max(lengths)
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[1]))
    proxy = sd_fixtures.ELLAProxyUNet(ella, unet)
    proxy.flexible_max_length_workaround = lengths
    controlnet = ControlNetModel.from_pretrained(str(out / "controlnet")).eval()
    wrap_with_ella(controlnet, ella, lengths)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=proxy, controlnet=controlnet,
        scheduler=sd_fixtures.make_scheduler("dpm++2m"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    name = "dpm++2m_controlnet-ella"
    sd_fixtures.sample_and_save(out, name, pipe, proxy, latents, 7.5,
                                {"t5_hidden_uncond": neg_states, "t5_hidden_cond": pos_states},
                                prompt_embeds=pad(pos_states), negative_prompt_embeds=pad(neg_states), **control)
    runs[name] = {**runs["dpm++2m_controlnet-clip"], "conditioning": "ella"}
    for name in ["dpm++2m_controlnet-clip", "dpm++2m_controlnet-ella"]:
        path = out / "reference" / f"pipeline_{name}.safetensors"
        tensors = load_file(str(path))
        tensors["control_image"] = torch.from_numpy(hint)
        save_file(tensors, str(path))
    (out / "reference" / "pipelines.json").write_text(json.dumps(runs, indent=1) + "\n")
