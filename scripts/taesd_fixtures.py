"""A tiny TAESD (diffusers `AutoencoderTiny`) with random weights and its reference outputs,
for make_fixtures.py. Writes:

  taesd/  config.json, diffusion_pytorch_model.safetensors
  reference/taesd.safetensors: decodes of latents (a batch of two, and a 6×5 latent) and
      encodes of images in [-1, 1] (a batch of two, and a 20×18 image that the stride-2
      convolutions do not divide), all by `AutoencoderTiny.decode(...).sample` and
      `.encode(...).latents`, as a pipeline calls them (TAESD's scaling_factor is 1.0)
"""

import torch
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

# Four levels (8× down, as SD's VAE) of unequal depths, zero blocks at one level each, and
# other widths in the encoder and the decoder: a stage read in the wrong order or from the
# wrong half fails to load instead of passing by symmetry.
TINY_TAESD = dict(
    encoder_block_out_channels=(4, 4, 4, 4),
    decoder_block_out_channels=(6, 6, 6, 6),
    num_encoder_blocks=(1, 2, 0, 1),
    num_decoder_blocks=(2, 0, 1, 1),
    latent_channels=4,
)


def tiny_taesd():
    torch.manual_seed(201)
    taesd = AutoencoderTiny(**TINY_TAESD).eval()
    gen = torch.Generator().manual_seed(202)
    with torch.no_grad():
        # PyTorch's default init leaves the narrow ReLU stacks nearly constant; wider random
        # weights and biases keep every layer's output varied (and the decoder's input clamp
        # and the output's sign both exercised).
        for name, p in taesd.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=gen) * 1.0 / fan_in**0.5)
    return taesd


def make_taesd(out):
    taesd = tiny_taesd()
    taesd.save_pretrained(str(out / "taesd"), safe_serialization=True)

    gen = torch.Generator().manual_seed(203)
    ref = {
        # Latents as the U-Net sees them; 2.5× so that the decoder's tanh clamp bends some.
        "latents": 2.5 * torch.randn(2, 4, 3, 3, generator=gen),
        "latents_odd": 2.5 * torch.randn(1, 4, 6, 5, generator=gen),
        "image": torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1,
        "image_odd": torch.rand(1, 3, 20, 18, generator=gen) * 2 - 1,
    }
    with torch.no_grad():
        ref["decoded"] = taesd.decode(ref["latents"]).sample
        ref["decoded_odd"] = taesd.decode(ref["latents_odd"]).sample
        ref["encoded"] = taesd.encode(ref["image"]).latents
        ref["encoded_odd"] = taesd.encode(ref["image_odd"]).latents
    for key in ["decoded", "decoded_odd", "encoded", "encoded_odd"]:
        v = ref[key]
        print(f"taesd {key}: shape {tuple(v.shape)}, std {v.std():.3f}, max |x| {v.abs().max():.3f}")
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "taesd.safetensors"))
    make_taesd_for_tiny_sd(out)


def make_taesd_for_tiny_sd(out):
    """A TAESD of two levels (2× up, as the tiny SD's VAE), in `taesd-x2/`, and the image it
    decodes from the final latents of the `dpm++2m_flexible` sampling, as diffusers'
    pipeline with `vae=AutoencoderTiny` turns them into pixels (`decode(latents / 1.0)`,
    then the image processor's `round((x/2 + 0.5).clamp(0, 1) · 255)`), in
    reference/taesd_pipeline.safetensors."""
    from safetensors.torch import load_file

    torch.manual_seed(211)
    taesd = AutoencoderTiny(encoder_block_out_channels=(4, 4), decoder_block_out_channels=(6, 6),
                            num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4).eval()
    gen = torch.Generator().manual_seed(212)
    with torch.no_grad():
        for p in taesd.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 4
            p.copy_(torch.randn(p.shape, generator=gen) * 1.0 / fan_in**0.5)
    taesd.save_pretrained(str(out / "taesd-x2"), safe_serialization=True)
    latents = load_file(str(out / "reference" / "pipeline_dpm++2m_flexible.safetensors"))["final_latents"]
    with torch.no_grad():
        decoded = taesd.decode(latents / taesd.config.scaling_factor).sample
    image = ((decoded[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    save_file({"final_latents": latents.contiguous(), "image": image.contiguous()},
              str(out / "reference" / "taesd_pipeline.safetensors"))
