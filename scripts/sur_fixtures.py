"""A tiny SUR-adapter (width = the tiny CLIP's) and its reference outputs, for make_fixtures.py.
Writes:

  sur/adapter.safetensors  official state-dict names, written as the official training script
                           saves them (a pickled `.pt`) and converted by
                           scripts/sur_adapter_to_safetensors.py
  reference/sur.safetensors: the adapter on [negative; positive] CLIP states, in both modes
  reference/pipeline_dpm++2m_clip-sur.safetensors (+ pipelines.json): a sampling as the official
      SURStableDiffusionPipeline runs it (CLIP states of [negative; positive] through the
      adapter once, then diffusers' StableDiffusionPipeline)
"""

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

import sd_fixtures
import sur_adapter_to_safetensors
import sur_reference

WEIGHT = 0.3


def make_sur(out):
    torch.manual_seed(111)
    adapter = sur_reference.Adapter(depth=2, adapter_weight=WEIGHT, sd_text_size=32, heads=8, ff=64).eval()
    gen = torch.Generator().manual_seed(112)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=gen))
    (out / "sur").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pt = Path(tmp) / "adapter_checkpoint1000.pt"
        torch.save(adapter.state_dict(), pt)
        sur_adapter_to_safetensors.convert(str(pt), str(out / "sur" / "adapter.safetensors"))

    sd = out / "sd"
    text_encoder = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    unet = UNet2DConditionModel.from_pretrained(str(sd / "unet")).eval()
    vae = AutoencoderKL.from_pretrained(str(sd / "vae")).eval()
    proxy = sd_fixtures.ELLAProxyUNet(None, unet)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=proxy,
                                   scheduler=sd_fixtures.make_scheduler("dpm++2m"), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    prompt, negative = "the red hat and the other book", "a red book"
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompt, "cpu", 1, True, negative)
        features = torch.cat([neg, pos])
        ref = {"features": features}
        for mode, per_token in [("faithful", False), ("per_token", True)]:
            ref[f"{mode}.out"], ref[f"{mode}.encoder"], _ = adapter(features, per_token=per_token)
        adapted = adapter(features)[0]
    assert (ref["faithful.out"] - ref["per_token.out"]).abs().max() > 1e-4, "the modes should differ"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "sur.safetensors"))

    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(113))
    name = "dpm++2m_clip-sur"
    height, width = sd_fixtures.sample_and_save(out, name, pipe, proxy, latents, 7.5, {},
                                                prompt_embeds=adapted[1:], negative_prompt_embeds=adapted[:1])
    runs = json.loads((out / "reference" / "pipelines.json").read_text())
    runs[name] = {"prompt": prompt, "negative": negative, "guidance": 7.5, "steps": 4, "mode": "flexible",
                  "scheduler": "dpm++2m", "height": height, "width": width, "conditioning": "clip-sur",
                  "sur_weight": WEIGHT, "sur_mode": "faithful"}
    (out / "reference" / "pipelines.json").write_text(json.dumps(runs, indent=1) + "\n")
