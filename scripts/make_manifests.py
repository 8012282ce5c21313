#!/usr/bin/env python3
"""Writes the tensor manifests (name -> dtype, shape) of the official full-size files, from
the reference modules built on PyTorch's meta device (no weights, no download):

  flan-t5-xl-encoder.json   QQGYLab's `models--google--flan-t5-xl--text_encoder/model.safetensors`
                            (transformers' T5EncoderModel at flan-t5-xl sizes; `wo` stored in
                            F32, the rest in F16, no separate `encoder.embed_tokens.weight`)
  ella-sd1.5-tsc-t5xl.json  `ella-sd1.5-tsc-t5xl.safetensors` (all F16)
  sd15-unet.json, sd15-vae.json  stable-diffusion-v1-5's diffusers `unet/` and `vae/` (F32)

The dtypes and the absence of `encoder.embed_tokens.weight` follow from the published file
sizes (see ella-spec.md 2.5 and 3.3); the Rust test checks that arithmetic too.
Run from the repository root: .venv/bin/python scripts/make_manifests.py
"""

import json
from pathlib import Path

import torch
from transformers import T5Config, T5EncoderModel

import ella_reference
from diffusers import AutoencoderKL, UNet2DConditionModel

# runwayml/stable-diffusion-v1-5 unet/config.json and vae/config.json (the non-default keys).
SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2, norm_num_groups=32, sample_size=64,
)
SD15_VAE = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)

OUT = Path(__file__).resolve().parent.parent / "ella-core" / "tests" / "fixtures" / "manifests"


def manifest(model, dtype_of, skip=()):
    return {
        name: {"dtype": dtype_of(name), "shape": list(p.shape)}
        for name, p in model.state_dict().items()
        if name not in skip
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
                is_encoder_decoder=False, use_cache=False,
            )
        )
        ella = ella_reference.ELLA()
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
    t5_manifest = manifest(
        t5, lambda n: "F32" if n.endswith("wo.weight") else "F16", skip={"encoder.embed_tokens.weight"}
    )
    ella_manifest = manifest(ella, lambda n: "F16")
    f32 = lambda n: "F32"
    for name, data in [("flan-t5-xl-encoder.json", t5_manifest), ("ella-sd1.5-tsc-t5xl.json", ella_manifest),
                       ("sd15-unet.json", manifest(unet, f32)), ("sd15-vae.json", manifest(vae, f32))]:
        (OUT / name).write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
        print(name, len(data), "tensors")


if __name__ == "__main__":
    main()
