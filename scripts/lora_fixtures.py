"""Tiny LoRAs for the tiny SD1.5 models (sd/unet, sd/text_encoder) in the two formats users
bring, and the reference outputs with them applied by diffusers, for make_fixtures.py. Writes:

  lora/kohya.safetensors  kohya / A1111 names (`lora_unet_*`, `lora_te_*`, `.lora_down`,
                          `.lora_up`, `.alpha`): linear layers, 1×1 and 3×3 convs
  lora/peft.safetensors   diffusers' PEFT format (`unet.*.lora_A/B`, `text_encoder.*`), as
                          `StableDiffusionPipeline.save_lora_weights` writes it
  reference/lora.safetensors: U-Net and CLIP outputs with
    kohya merged at scale 0.7 (kohya's formula; checked against diffusers' `fuse_lora` where
    diffusers reads the file right, see make_lora),
    peft fused at 1.3 (`load_lora_weights` + `fuse_lora`), and
    both: kohya merged at 0.7 and peft active at 1.3 (`set_adapters`)
"""

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

import sd_fixtures

# kohya module name -> (rank, alpha); shapes come from the tiny models.
KOHYA_UNET = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (2, 1.0),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0": (4, 2.0),
    "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k": (2, 4.0),
    "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj": (4, 4.0),
    "up_blocks.1.attentions.2.proj_in": (2, 1.0),
    "down_blocks.0.resnets.0.conv1": (2, 2.0),
}
# transformers 5's CLIPTextModel has no `text_model` level; kohya's names (from older
# transformers) keep it: `lora_te_text_model_encoder_layers_0_...`.
KOHYA_TEXT = {
    "encoder.layers.0.self_attn.q_proj": (2, 1.0),
    "encoder.layers.1.mlp.fc1": (4, 8.0),
}


def pipeline(out):
    sd = out / "sd"
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(str(sd / "vae")),
        text_encoder=CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval(),
        tokenizer=CLIPTokenizer.from_pretrained(str(sd / "tokenizer")),
        unet=UNet2DConditionModel.from_pretrained(str(sd / "unet")).eval(),
        scheduler=sd_fixtures.make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def kohya_file(pipe, path, gen):
    modules = {**{("lora_unet_", k): v for k, v in KOHYA_UNET.items()},
               **{("lora_te_text_model_", k): v for k, v in KOHYA_TEXT.items()}}
    state = {}
    for (prefix, name), (rank, alpha) in modules.items():
        model = pipe.unet if prefix == "lora_unet_" else pipe.text_encoder
        weight = model.get_submodule(name).weight
        key = prefix + name.replace(".", "_")
        if weight.dim() == 4:  # LoCon: the down conv has the kernel, the up conv is 1×1
            down = torch.randn(rank, weight.shape[1], *weight.shape[2:], generator=gen) * 0.3
            up = torch.randn(weight.shape[0], rank, 1, 1, generator=gen) * 0.3
        else:
            down = torch.randn(rank, weight.shape[1], generator=gen) * 0.3
            up = torch.randn(weight.shape[0], rank, generator=gen) * 0.3
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))


def peft_file(out, path, gen):
    pipe = pipeline(out)
    # α ≠ r: diffusers keeps α in the file's metadata (`lora_adapter_metadata`).
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_v", "proj_out", "time_emb_proj"]))
    # peft directly: transformers' own `add_adapter` wants a newer peft than PyPI has.
    text_config = LoraConfig(r=2, lora_alpha=2, target_modules=["k_proj", "fc2"])
    inject_adapter_in_model(text_config, pipe.text_encoder)
    with torch.no_grad():
        for model in [pipe.unet, pipe.text_encoder]:
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent), unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder), weight_name=path.name,
        safe_serialization=True, unet_lora_adapter_metadata=pipe.unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text_config.to_dict())


def outputs(pipe, inputs):
    sample, cond, ids = inputs
    with torch.no_grad():
        unet = pipe.unet(sample, torch.tensor([999, 250]), encoder_hidden_states=cond).sample
        clip = pipe.text_encoder(input_ids=ids).last_hidden_state
    return unet, clip


def kohya_modules(pipe, path):
    """(module, down, up, alpha/rank) of every LoRA in a kohya file."""
    state = load_file(str(path))
    for (prefix, names), model in [(("lora_unet_", KOHYA_UNET), pipe.unet),
                                   (("lora_te_text_model_", KOHYA_TEXT), pipe.text_encoder)]:
        for name in names:
            key = prefix + name.replace(".", "_")
            down, up = state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"]
            yield name, model.get_submodule(name), down, up, state[f"{key}.alpha"].item() / down.shape[0]


def kohya_merge(pipe, path, scale):
    """kohya sd-scripts' `merge_to` (and A1111's): W += scale · alpha/rank · up·down, the
    convolutions' kernels flattened."""
    with torch.no_grad():
        for _, module, down, up, ratio in kohya_modules(pipe, path):
            delta = (up.flatten(1) @ down.flatten(1)).reshape(module.weight.shape)
            module.weight += scale * ratio * delta


def make_lora(out):
    folder = out / "lora"
    folder.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(91)
    kohya, peft = folder / "kohya.safetensors", folder / "peft.safetensors"
    kohya_file(pipeline(out), kohya, gen)
    peft_file(out, peft, gen)

    sd_ref, clip_ref = load_file(str(out / "reference" / "sd.safetensors")), load_file(
        str(out / "reference" / "clip.safetensors"))
    inputs = (sd_ref["unet.sample"], sd_ref["unet.cond"], clip_ref["input_ids"].long())
    base_unet, base_clip = outputs(pipeline(out), inputs)
    ref = {}
    # kohya files: merged with kohya's formula. diffusers 0.42's kohya conversion (with
    # transformers 5 and peft 0.21) drops the alphas of attention q/k/v and of text-encoder
    # layers and skips text-encoder attention LoRAs; where it keeps the alpha, its fused weights
    # must equal the formula's.
    pipe = pipeline(out)
    kohya_merge(pipe, kohya, 0.7)
    ref["kohya.unet"], ref["kohya.clip"] = outputs(pipe, inputs)
    fused = pipeline(out)
    fused.load_lora_weights(str(kohya), adapter_name="kohya")
    fused.fuse_lora(lora_scale=0.7)
    for name, module, _, _, ratio in kohya_modules(pipe, kohya):
        theirs = (fused.unet if name in KOHYA_UNET else fused.text_encoder).get_submodule(name).weight
        if name in ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0", "up_blocks.1.attentions.2.proj_in",
                    "down_blocks.0.resnets.0.conv1", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"]:
            assert torch.allclose(module.weight, theirs, atol=1e-6), name
    # PEFT files: diffusers applies them (fused at 1.3), and at runtime next to a merged kohya.
    pipe = pipeline(out)
    pipe.load_lora_weights(str(peft), adapter_name="peft")
    pipe.fuse_lora(lora_scale=1.3)
    ref["peft.unet"], ref["peft.clip"] = outputs(pipe, inputs)
    pipe = pipeline(out)
    kohya_merge(pipe, kohya, 0.7)
    pipe.load_lora_weights(str(peft), adapter_name="peft")
    pipe.set_adapters(["peft"], adapter_weights=[1.3])
    ref["both.unet"], ref["both.clip"] = outputs(pipe, inputs)
    for key, base in [("unet", base_unet), ("clip", base_clip)]:
        for run in ["kohya", "peft", "both"]:
            change = (ref[f"{run}.{key}"] - base).abs().max().item()
            assert change > 1e-2, f"the {run} LoRA barely changes the {key} output ({change})"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "lora.safetensors"))
