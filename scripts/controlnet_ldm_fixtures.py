"""The tiny ControlNet of controlnet/ as single files in the original (LDM / lllyasviel cldm)
key layout, for make_fixtures.py. Writes:

  controlnet-ldm.safetensors       F32, every key under `control_model.` (lllyasviel's
                                   ControlNet 1.1 `.pth` files converted to safetensors)
  controlnet-ldm-fp16.safetensors  F16, the same names without the prefix (comfyanonymous'
                                   `control_v11*_sd15_*_fp16.safetensors` layout)

The LDM names are written here from diffusers' model names (the U-Net part by
single_file_fixtures.unet_to_ldm); diffusers' own single-file loader
(`ControlNetModel.from_single_file`) then reads each file back, and every tensor must come back
equal to the folder's (the F16 file: equal to the folder's weights rounded to F16). That check is
what makes these files faithful. It also feeds the loader, in memory, the other layouts it
accepts (prefix or not, F32 or F16, a whole LDM bundle with the ControlNet inside, diffusers
names) and requires the same weights from each; and it checks the LDM -> diffusers rules of
docs/controlnet-ldm-reference.md (written out here as `ldm_to_diffusers`) against diffusers'
converter on the tiny config and on SD1.5's.
"""

import torch
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors.torch import load_file, save_file

from single_file_fixtures import RESNET, unet_to_ldm

PREFIX = "control_model."
# cldm's input_hint_block is a fixed nn.Sequential of 8 convolutions with a SiLU after each of the
# first 7 (indices 0, 2, ..., 14): the last one, diffusers' conv_out, is always index 14.
HINT_CONV_OUT = 14


def controlnet_to_ldm(name, config):
    """A diffusers ControlNetModel name -> its name in the LDM ControlNet (without the prefix)."""
    parts = name.split(".")
    rest = ".".join(parts[2:])
    if parts[0] == "controlnet_down_blocks":  # one 1×1 zero conv per input block
        return f"zero_convs.{parts[1]}.0.{rest}"
    if parts[0] == "controlnet_mid_block":
        return f"middle_block_out.0.{'.'.join(parts[1:])}"
    if parts[0] == "controlnet_cond_embedding":
        if parts[1] == "conv_in":
            return f"input_hint_block.0.{rest}"
        if parts[1] == "conv_out":
            return f"input_hint_block.{HINT_CONV_OUT}.{rest}"
        if parts[1] == "blocks":
            index = 2 * (int(parts[2]) + 1)
            assert index < HINT_CONV_OUT, name
            return f"input_hint_block.{index}.{'.'.join(parts[3:])}"
    # time_embedding, conv_in, down_blocks, mid_block: named as in the LDM U-Net.
    return unet_to_ldm(name, config)


def ldm_to_diffusers(name, layers_per_block):
    """The other direction, written from the rules of docs/controlnet-ldm-reference.md (what
    ella implements): an LDM ControlNet name without its prefix -> the diffusers name."""
    resnet = {old: new for new, old in RESNET.items()}
    parts = name.split(".")
    head, rest = parts[0], ".".join(parts[2:])
    if head == "time_embed":
        return f"time_embedding.linear_{1 if parts[1] == '0' else 2}.{rest}"
    if head == "zero_convs":
        return f"controlnet_down_blocks.{parts[1]}.{'.'.join(parts[3:])}"
    if head == "middle_block_out":
        return f"controlnet_mid_block.{'.'.join(parts[2:])}"
    if head == "input_hint_block":
        index = int(parts[1])
        block = {0: "conv_in", HINT_CONV_OUT: "conv_out"}.get(index, f"blocks.{index // 2 - 1}")
        return f"controlnet_cond_embedding.{block}.{rest}"
    if head == "input_blocks" and parts[1] == "0":
        return f"conv_in.{'.'.join(parts[3:])}"
    if head == "input_blocks":
        i, sub, rest = int(parts[1]), parts[2], ".".join(parts[3:])
        level, j = divmod(i - 1, layers_per_block + 1)
        if j == layers_per_block:
            return f"down_blocks.{level}.downsamplers.0.conv.{rest.removeprefix('op.')}"
        if sub == "0":
            return f"down_blocks.{level}.resnets.{j}.{rename_head(rest, resnet)}"
        return f"down_blocks.{level}.attentions.{j}.{rest}"
    if head == "middle_block":
        index, rest = int(parts[1]), ".".join(parts[2:])
        if index == 1:
            return f"mid_block.attentions.0.{rest}"
        return f"mid_block.resnets.{index // 2}.{rename_head(rest, resnet)}"
    raise KeyError(name)


def rename_head(rest, table):
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    raise KeyError(rest)


def check_rules(names, layers_per_block, config, what):
    """diffusers' converter and ldm_to_diffusers send the LDM names written for `names` back to
    `names`, one to one (placeholder tensors: a distinct number per name)."""
    ldm = {controlnet_to_ldm(k, config): torch.tensor(float(i)) for i, k in enumerate(names)}
    assert len(ldm) == len(names), what
    converted = convert_controlnet_checkpoint({PREFIX + k: v for k, v in ldm.items()}, dict(config))
    expected = {k: torch.tensor(float(i)) for i, k in enumerate(names)}
    assert converted.keys() == expected.keys(), (what, converted.keys() ^ expected.keys())
    assert all(torch.equal(converted[k], v) for k, v in expected.items()), what
    mine = {ldm_to_diffusers(k, layers_per_block): v for k, v in ldm.items()}
    assert mine.keys() == expected.keys() and all(torch.equal(mine[k], v) for k, v in expected.items()), what


def ldm_state(controlnet, prefix, dtype):
    return {prefix + controlnet_to_ldm(k, controlnet.config): v.to(dtype).contiguous()
            for k, v in controlnet.state_dict().items()}


def assert_loads_as(checkpoint, folder, expected, what, **kwargs):
    """diffusers' single-file loader reads `checkpoint` (a path or a dict) back to `expected`."""
    loaded = ControlNetModel.from_single_file(checkpoint, config=str(folder), local_files_only=True, **kwargs)
    actual = loaded.state_dict()
    assert expected.keys() == actual.keys(), (what, expected.keys() ^ actual.keys())
    for k, v in expected.items():
        assert actual[k].dtype == v.dtype, (what, k, actual[k].dtype, v.dtype)
        assert torch.equal(actual[k], v), (what, k)


def make_controlnet_ldm(out):
    folder = out / "controlnet"
    controlnet = ControlNetModel.from_pretrained(str(folder)).eval()
    weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert weights.keys() == controlnet.state_dict().keys()

    f32 = ldm_state(controlnet, PREFIX, torch.float32)
    f16 = ldm_state(controlnet, "", torch.float16)
    assert len(f32) == len(weights)  # the renaming is one-to-one
    f32_path = out / "controlnet-ldm.safetensors"
    f16_path = out / "controlnet-ldm-fp16.safetensors"
    save_file(f32, str(f32_path))
    save_file(f16, str(f16_path))

    rounded = {k: v.half().float() for k, v in weights.items()}
    halves = {k: v.half() for k, v in weights.items()}
    # The two files. Without torch_dtype the loader keeps the model's F32 parameters and copies
    # the F16 values into them (exact).
    assert_loads_as(str(f32_path), folder, weights, "f32 file")
    assert_loads_as(str(f16_path), folder, rounded, "f16 file")
    assert_loads_as(str(f16_path), folder, halves, "f16 file as f16", torch_dtype=torch.float16)
    # The other layouts the loader accepts, in memory.
    bare_f32 = ldm_state(controlnet, "", torch.float32)
    prefixed_f16 = ldm_state(controlnet, PREFIX, torch.float16)
    # ControlNet 1.0 `.pth` files bundle the whole SD model with the ControlNet: only the
    # `control_model.` keys are read.
    bundle = {**f32, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 3, 3),
              "first_stage_model.decoder.conv_in.weight": torch.zeros(2), "alphas_cumprod": torch.ones(10)}
    for what, checkpoint, expected in [("bare f32", bare_f32, weights), ("prefixed f16", prefixed_f16, rounded),
                                       ("ldm bundle", bundle, weights), ("diffusers names", dict(weights), weights)]:
        assert_loads_as(dict(checkpoint), folder, expected, what)
    # The rules of the reference doc, on the tiny ControlNet and on SD1.5's (ControlNetModel's
    # defaults are SD1.5's layout: 12 zero convs, the 8-conv hint block), names only.
    check_rules(list(weights), controlnet.config.layers_per_block, controlnet.config, "tiny")
    with torch.device("meta"):
        sd15 = ControlNetModel(cross_attention_dim=768)
    check_rules(list(sd15.state_dict()), sd15.config.layers_per_block, sd15.config, "sd15")
    print(f"controlnet-ldm: {len(f32)} tensors; F32 and F16 files read back exactly by from_single_file")
