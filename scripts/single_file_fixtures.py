"""A tiny SD1.5 single-file checkpoint in the original LDM (CompVis / A1111 / CivitAI) key
layout, and a standalone VAE file in the same layout, for make_fixtures.py. Writes:

  sd-single-file.safetensors  model.diffusion_model.* (the tiny U-Net of sd/unet),
                              first_stage_model.* (a *different* tiny VAE than sd/vae),
                              cond_stage_model.transformer.text_model.* (sd/text_encoder),
                              plus keys a trained checkpoint carries and loaders ignore
                              (model_ema.*, alphas_cumprod, ...)
  vae-ldm.safetensors         the VAE of sd/vae as a standalone LDM-layout file
                              (encoder.*, decoder.*, quant_conv.*, post_quant_conv.*)
  reference/single_file.safetensors: the other VAE's decode of fixed latents

The LDM names are written here from diffusers' models; diffusers' own single-file loader
(`from_single_file`) then reads the file back, and every tensor must come back equal to the
model it came from: that check is what makes this file a faithful LDM checkpoint.
"""

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

import sd_fixtures

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def rename_part(rest, table):
    """`norm1.weight` -> `in_layers.0.weight` with a {diffusers: ldm} table of name heads."""
    for new, old in table.items():
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)


def unet_to_ldm(name, config):
    """A diffusers UNet2DConditionModel name -> its name in the LDM `model.diffusion_model`."""
    layers = config["layers_per_block"]
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for new, old in fixed.items():
        if name.startswith(new + "."):
            return old + name[len(new):]
    parts = name.split(".")
    if parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "downsamplers":
            return f"input_blocks.{1 + i * (layers + 1) + layers}.0.op.{rest.removeprefix('conv.')}"
        index = 1 + i * (layers + 1) + j
        if kind == "resnets":
            return f"input_blocks.{index}.0.{rename_part(rest, RESNET)}"
        return f"input_blocks.{index}.1.{rest}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{rename_part(rest, RESNET)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        has_attention = config["up_block_types"][i].startswith("CrossAttn")
        if kind == "upsamplers":
            index = i * (layers + 1) + layers
            return f"output_blocks.{index}.{2 if has_attention else 1}.{rest}"
        index = i * (layers + 1) + j
        if kind == "resnets":
            return f"output_blocks.{index}.0.{rename_part(rest, RESNET)}"
        return f"output_blocks.{index}.1.{rest}"
    raise KeyError(name)


def vae_to_ldm(name, config):
    """A diffusers AutoencoderKL name -> its LDM name (without `first_stage_model.`)."""
    levels = len(config["block_out_channels"])
    parts = name.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv") or parts[1] in ("conv_in", "conv_out"):
        return name
    coder, block = parts[0], parts[1]
    if block == "conv_norm_out":
        return f"{coder}.norm_out.{'.'.join(parts[2:])}"
    if block == "mid_block":
        kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        return f"{coder}.mid.attn_1.{rename_part(rest, VAE_ATTENTION)}"
    i, kind, j, rest = int(parts[2]), parts[3], int(parts[4]), ".".join(parts[5:])
    level = i if coder == "encoder" else levels - 1 - i  # the LDM decoder counts up from the bottom
    group = "down" if coder == "encoder" else "up"
    if kind in ("downsamplers", "upsamplers"):
        return f"{coder}.{group}.{level}.{'downsample' if coder == 'encoder' else 'upsample'}.{rest}"
    return f"{coder}.{group}.{level}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"


def vae_state_to_ldm(vae):
    state = {}
    for name, tensor in vae.state_dict().items():
        new = vae_to_ldm(name, vae.config)
        if ".attn_1." in new and new.endswith("weight") and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]  # the LDM attention's projections are 1×1 convs
        state[new] = tensor.contiguous()
    return state


def make_single_file(out):
    sd = out / "sd"
    unet = UNet2DConditionModel.from_pretrained(str(sd / "unet")).eval()
    vae = AutoencoderKL.from_pretrained(str(sd / "vae")).eval()
    clip = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
    torch.manual_seed(71)
    other_vae = sd_fixtures.tiny_vae(seed=72)

    state = {f"model.diffusion_model.{unet_to_ldm(k, unet.config)}": v.contiguous()
             for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_state_to_ldm(other_vae).items()})
    clip_file = load_file(str(sd / "text_encoder" / "model.safetensors"))
    state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_file.items()})
    # What trained LDM checkpoints carry besides the three models.
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    state["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000)
    state["model_ema.diffusion_modelinput_blocks00weight"] = torch.zeros(2, 2)
    single = out / "sd-single-file.safetensors"
    save_file(state, str(single))
    save_file(vae_state_to_ldm(vae), str(out / "vae-ldm.safetensors"))

    # diffusers' single-file loader must read back exactly the models written.
    for cls, model, path in [(UNet2DConditionModel, unet, single), (AutoencoderKL, other_vae, single),
                             (AutoencoderKL, vae, out / "vae-ldm.safetensors")]:
        subfolder = "unet" if cls is UNet2DConditionModel else "vae"
        loaded = cls.from_single_file(str(path), config=str(sd), subfolder=subfolder, local_files_only=True)
        expected, actual = model.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys(), (path, subfolder)
        for k in expected:
            assert torch.equal(expected[k], actual[k].reshape(expected[k].shape)), (path, k)

    gen = torch.Generator().manual_seed(73)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    with torch.no_grad():
        decoded = other_vae.decode(latents).sample
    save_file({"latents": latents, "other_vae.decoded": decoded.contiguous()},
              str(out / "reference" / "single_file.safetensors"))
