"""The LoRA kinds SD1.5 users bring besides lora/kohya.safetensors and lora/peft.safetensors
(scripts/lora_fixtures.py), for the tiny models of sd_fixtures, with the weights and outputs
each one gives once merged, for make_fixtures.py (part `lora-kinds`). Writes:

  lora/kohya-ldm.safetensors           kohya keys (`lora_unet_*`, `lora_te_*`, `.lora_down.weight`,
                                       `.lora_up.weight`, `.alpha`) on the U-Net's LDM (CompVis)
                                       module names: `lora_unet_input_blocks_1_1_…`,
                                       `…_middle_block_0_in_layers_2`, `…_output_blocks_2_1_conv`,
                                       `…_time_embed_0`, `…_out_2`, …
  lora/loha.safetensors                LyCORIS LoHa (`.hada_w1_a/b`, `.hada_w2_a/b`, `.alpha`, Tucker
                                       `.hada_t1/t2` on two 3×3 convs), kohya module names
  lora/lokr.safetensors                LyCORIS LoKr (`.lokr_w1` or `.lokr_w1_a/b`, `.lokr_w2` or
                                       `.lokr_w2_a/b`, Tucker `.lokr_t2`, `.alpha`), kohya names
  lora/locon-tucker.safetensors        LyCORIS LoCon with a Tucker core (`.lora_mid.weight`) on a
                                       3×3 conv, beside plain LoRA modules
  lora/peft-alpha-pattern.safetensors  diffusers' PEFT format whose LoraConfigs (in the file's
                                       `lora_adapter_metadata`) have an `alpha_pattern` and a
                                       `rank_pattern`, as `save_lora_weights` writes it
  lora/unsupported-ia3.safetensors     LyCORIS (IA)³ (`.weight`, `.on_input`): to be refused
  reference/lora_kinds.safetensors     per run (`kohya-ldm`, `loha`, `lokr`, `locon-tucker`,
                                       `peft-alpha-pattern`): `{run}.scale`, the merged weight of
                                       every module the file touches (`{run}.unet.{module}.weight`,
                                       `{run}.text_encoder.text_model.{module}.weight`) and the
                                       U-Net's and CLIP's outputs with them (`{run}.unet`,
                                       `{run}.clip`) on the inputs of reference/lora.safetensors

docs/lora-kinds-reference.md states every rule used here. The references of the kohya and
LyCORIS files are the formulas written below (`kohya_delta`, `loha_delta`, `lokr_delta`,
`locon_delta`), checked against peft's LoHa / LoKr layers holding the same weights and against
diffusers' `load_lora_weights` + `fuse_lora` where diffusers reads the file right (see
`check_kohya_ldm_with_diffusers`); the PEFT file's reference is diffusers' `fuse_lora`,
checked against the formula.
"""

import copy
import json
import re

import torch
from diffusers import StableDiffusionPipeline
from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import lora_fixtures
from single_file_fixtures import unet_to_ldm

# The scale each file is merged at in reference/lora_kinds.safetensors.
SCALES = {"kohya-ldm": 0.8, "loha": 0.9, "lokr": 1.1, "locon-tucker": 0.75, "peft-alpha-pattern": 0.6}

# kohya LDM-named file: (model, diffusers module, rank, alpha). Every LDM spelling: conv_in
# (`input_blocks_0_0`), time_embed_0/2, transformer proj_in/proj_out and attention/ff linears in
# input/middle/output blocks, resnet in_layers_2 / out_layers_3 / emb_layers_1 /
# skip_connection, the downsampler `input_blocks_3_0_op`, the upsampler `output_blocks_2_1_conv`
# (index 1: up level 0 has no attention) and conv_out (`out_2`).
KOHYA_LDM = [
    ("unet", "conv_in", 2, 1.0),
    ("unet", "time_embedding.linear_1", 2, 2.0),
    ("unet", "time_embedding.linear_2", 4, 2.0),
    ("unet", "down_blocks.0.attentions.0.proj_in", 2, 4.0),
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q", 2, 1.0),
    ("unet", "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_out.0", 4, 2.0),
    ("unet", "down_blocks.0.resnets.1.conv2", 2, 1.0),
    ("unet", "down_blocks.0.downsamplers.0.conv", 2, 2.0),
    ("unet", "down_blocks.1.resnets.0.conv1", 4, 4.0),
    ("unet", "down_blocks.1.resnets.0.conv_shortcut", 2, 1.0),
    ("unet", "down_blocks.1.resnets.1.time_emb_proj", 2, 0.5),
    ("unet", "mid_block.resnets.0.conv1", 2, 2.0),
    ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", 4, 2.0),
    ("unet", "mid_block.attentions.0.proj_out", 2, 1.0),
    ("unet", "mid_block.resnets.1.time_emb_proj", 2, 4.0),
    ("unet", "up_blocks.0.resnets.2.conv_shortcut", 2, 2.0),
    ("unet", "up_blocks.0.upsamplers.0.conv", 2, 1.0),
    ("unet", "up_blocks.1.resnets.0.time_emb_proj", 2, 1.0),
    ("unet", "up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_k", 2, 2.0),
    ("unet", "up_blocks.1.attentions.2.proj_in", 2, 1.0),
    ("unet", "up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2", 4, 8.0),
    ("unet", "conv_out", 2, 1.0),
    ("text", "encoder.layers.0.self_attn.q_proj", 2, 1.0),
    ("text", "encoder.layers.0.self_attn.out_proj", 2, 4.0),
    ("text", "encoder.layers.1.mlp.fc2", 4, 2.0),
]

# LoHa: (model, module, rank, alpha or None (no `.alpha` in the file: scale 1), Tucker).
LOHA = [
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k", 2, 1.0, False),  # [16, 32]
    ("unet", "mid_block.attentions.0.transformer_blocks.0.ff.net.2", 4, 2.0, False),  # [32, 128]
    ("unet", "up_blocks.1.attentions.0.proj_out", 2, 4.0, False),  # 1×1 conv
    ("unet", "down_blocks.1.resnets.0.conv1", 2, 2.0, False),  # 3×3 [32, 16], flattened
    ("unet", "up_blocks.1.resnets.0.conv1", 2, 3.0, True),  # 3×3 [16, 48], Tucker
    ("unet", "down_blocks.0.resnets.0.conv2", 3, 1.5, True),  # 3×3 [16, 16], Tucker
    ("text", "encoder.layers.1.self_attn.v_proj", 2, 1.0, False),
    ("text", "encoder.layers.0.mlp.fc1", 3, None, False),  # [37, 32], no alpha
]

# LoKr: (model, module, rank, alpha in the file, factor, decompose_both, Tucker). Which of
# w1 / w1_a·w1_b, w2 / w2_a·w2_b / Tucker the module stores follows LyCORIS' (and peft's) rules
# from rank and factor; the comment says what comes out.
LOKR = [
    # [128, 16]: w1 [8, 4], w2_a [16, 2] · w2_b [2, 4]
    ("unet", "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj", 2, 1.0, -1, False, False),
    # [32, 32]: w1 [4, 4], w2 [8, 8] both full: scale 1 whatever the alpha (LyCORIS writes its
    # `lora_dim`, 10000 in the "full matrix" recipe)
    ("unet", "mid_block.attentions.0.transformer_blocks.0.attn1.to_v", 4, 10000.0, 4, False, False),
    # 1×1 [32, 64]: w1_a [4, 2] · w1_b [2, 8], w2_a [8, 2] · w2_b [2, 8]
    ("unet", "up_blocks.0.resnets.0.conv_shortcut", 2, 3.0, -1, True, False),
    # 3×3 [16, 32]: w1 [4, 4], Tucker t2 [2, 2, 3, 3], w2_a [2, 4], w2_b [2, 8]
    ("unet", "up_blocks.1.resnets.1.conv1", 2, 4.0, -1, False, True),
    # 3×3 [16, 16]: w1 [2, 2], w2_a [8, 3] · w2_b [3, 72] (kernel flattened into w2_b)
    ("unet", "down_blocks.0.resnets.0.conv1", 3, 1.5, 2, False, False),
    # 3×3 [16, 16]: w1 [4, 4], w2 [4, 4, 3, 3] both full: scale 1
    ("unet", "down_blocks.0.downsamplers.0.conv", 2, 2.0, 4, False, False),
    # [32, 32]: w1 [4, 4], w2_a [8, 2] · w2_b [2, 8]
    ("text", "encoder.layers.0.self_attn.k_proj", 2, 1.0, 4, False, False),
    # [37, 32]: w1 [1, 4] (37 is prime), w2_a [37, 4] · w2_b [4, 8]
    ("text", "encoder.layers.1.mlp.fc1", 4, 8.0, -1, False, False),
]

# LoCon (LyCORIS LoRA) with a Tucker core on 3×3 convs: (model, module, rank, alpha, mid).
LOCON = [
    ("unet", "down_blocks.0.resnets.1.conv1", 2, 1.0, True),  # 3×3 [16, 16]: down 1×1, mid 3×3, up 1×1
    ("unet", "up_blocks.1.resnets.2.conv1", 3, 6.0, True),  # 3×3 [16, 32]
    ("unet", "up_blocks.1.resnets.2.conv_shortcut", 2, 2.0, False),  # 1×1, plain
    ("unet", "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_v", 2, 4.0, False),  # linear
    ("text", "encoder.layers.1.self_attn.k_proj", 2, 2.0, False),
]

# The PEFT file: LoraConfigs whose patterns are listed in sorted order, the order diffusers
# writes them in (json.dumps(sort_keys=True)) and so the order peft tries them in after loading;
# `attn2.to_k` must come before `to_k`, which matches it too.
PEFT_UNET = dict(
    r=4, lora_alpha=4, target_modules=["to_q", "to_k", "proj_in", "ff.net.2", "conv_shortcut", "downsamplers.0.conv"],
    rank_pattern={"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": 2,
                  r"up_blocks\.\d\.resnets\.[12]\.conv_shortcut": 3,
                  "up_blocks.1.attentions.2.proj_in": 6},
    alpha_pattern={"attn2.to_k": 2, "downsamplers.0.conv": 8, "ff.net.2": 0.5, r"resnets\.0\.conv_shortcut": 1,
                   "to_k": 16, "up_blocks.1.attentions.2.proj_in": 3},
)
PEFT_TEXT = dict(
    r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "fc1"],
    rank_pattern={"layers.1.self_attn.v_proj": 4},
    alpha_pattern={"encoder.layers.0.mlp.fc1": 1.5, "v_proj": 8},
)


def kohya_key(model, module):
    """The kohya name of a diffusers module: `lora_unet_` + the LDM name for the U-Net in this
    file, `lora_te_text_model_` + the transformers path for CLIP (kohya's names keep the
    `text_model` level that transformers 5's CLIPTextModel no longer has)."""
    return ("lora_unet_" if model == "unet" else "lora_te_text_model_") + module.replace(".", "_")


def ldm_module(module, config):
    return unet_to_ldm(module + ".weight", config).removesuffix(".weight")


def ref_key(run, model, module):
    """A merged weight's key: its name in the tiny models' weight files, under the run."""
    return f"{run}.unet.{module}.weight" if model == "unet" else f"{run}.text_encoder.text_model.{module}.weight"


def model_of(pipe, model):
    return pipe.unet if model == "unet" else pipe.text_encoder


def base_weight(module):
    return getattr(module, "base_layer", module).weight


# --- the formulas (float64; each returns ΔW with its alpha/rank factor, without the user's scale)


def ratio(alpha, rank):
    """kohya and LyCORIS: alpha / rank; no alpha (or alpha 0, as LyCORIS reads it) means 1."""
    return 1.0 if alpha is None or alpha == 0 else alpha / rank


def kohya_delta(t, shape):
    """kohya / LoCon: up [out, r(, 1, 1)] · down [r, in(, kh, kw)], kernels flattened."""
    down, up = t["lora_down.weight"].double(), t["lora_up.weight"].double()
    alpha = t["alpha"].item() if "alpha" in t else None
    return (up.flatten(1) @ down.flatten(1)).reshape(shape) * ratio(alpha, down.shape[0])


def tucker(core, a, b):
    """LyCORIS' `rebuild_tucker`: Σ_ij core[i, j, kh, kw] · a[i, out] · b[j, in] → [out, in, kh, kw]."""
    return torch.einsum("ijkl,ip,jr->prkl", core, a, b)


def loha_delta(t, shape):
    """((w1_a · w1_b) ⊙ (w2_a · w2_b)) · alpha/r, r = w1_b.shape[0]; with Tucker cores each
    factor is `tucker(t, w_a, w_b)` ([r, out] and [r, in] factors)."""
    d = {k: v.double() for k, v in t.items()}
    if "hada_t1" in d:
        w1 = tucker(d["hada_t1"], d["hada_w1_a"], d["hada_w1_b"])
        w2 = tucker(d["hada_t2"], d["hada_w2_a"], d["hada_w2_b"])
    else:
        w1 = d["hada_w1_a"].flatten(1) @ d["hada_w1_b"].flatten(1)
        w2 = d["hada_w2_a"].flatten(1) @ d["hada_w2_b"].flatten(1)
    alpha = t["alpha"].item() if "alpha" in t else None
    return (w1 * w2).reshape(shape) * ratio(alpha, d["hada_w1_b"].shape[0])


def lokr_delta(t, shape):
    """kron(w1, w2) · scale: w1 = lokr_w1 or w1_a·w1_b; w2 = lokr_w2, tucker(t2, w2_a, w2_b) or
    w2_a·w2_b; scale = alpha / r with r = w2_b.shape[0] if w2 is factored, else w1_b.shape[0]
    if w1 is, else 1 (both full: alpha ignored)."""
    d = {k: v.double() for k, v in t.items()}
    w1 = d["lokr_w1"] if "lokr_w1" in d else d["lokr_w1_a"] @ d["lokr_w1_b"]
    if "lokr_w2" in d:
        w2 = d["lokr_w2"]
    elif "lokr_t2" in d:
        w2 = tucker(d["lokr_t2"], d["lokr_w2_a"], d["lokr_w2_b"])
    else:
        w2 = d["lokr_w2_a"] @ d["lokr_w2_b"].flatten(1)
    rank = d["lokr_w2_b"].shape[0] if "lokr_w2_b" in d else d["lokr_w1_b"].shape[0] if "lokr_w1_b" in d else None
    alpha = t["alpha"].item() if "alpha" in t else None
    scale = 1.0 if rank is None else ratio(alpha, rank)
    # kron of the 2-D forms: w2's kernel dims flattened into its columns.
    return torch.kron(w1, w2.flatten(1)).reshape(shape) * scale


def locon_delta(t, shape):
    """LoCon: with `lora_mid` [r, r, kh, kw], tucker(mid, up[out, r]ᵀ, down[r, in]); else kohya's."""
    if "lora_mid.weight" not in t:
        return kohya_delta(t, shape)
    d = {k: v.double() for k, v in t.items()}
    up, down = d["lora_up.weight"].flatten(1), d["lora_down.weight"].flatten(1)
    alpha = t["alpha"].item() if "alpha" in t else None
    return tucker(d["lora_mid.weight"], up.T, down).reshape(shape) * ratio(alpha, down.shape[0])


def modules_of(path):
    """{kohya module name: {suffix: tensor}} of a kohya / LyCORIS file."""
    out = {}
    for key, value in load_file(str(path)).items():
        module, suffix = key.split(".", 1)
        out.setdefault(module, {})[suffix] = value
    return out


def merge(pipe, deltas, scale):
    """W ← W + scale · ΔW, rounded once to f32."""
    with torch.no_grad():
        for (model, module), delta in deltas.items():
            weight = base_weight(model_of(pipe, model).get_submodule(module))
            weight.copy_((weight.double() + scale * delta).float())


def deltas_from_file(pipe, path, table, delta_fn, name_fn):
    """{(model, module): ΔW} of a kohya-style file by `delta_fn`, every entry of it used."""
    modules = modules_of(path)
    deltas = {}
    for model, module, *_ in table:
        shape = base_weight(model_of(pipe, model).get_submodule(module)).shape
        deltas[(model, module)] = delta_fn(modules.pop(name_fn(model, module)), shape)
    assert not modules, f"{path.name}: entries no module reads: {sorted(modules)}"
    return deltas


# --- the files


def randn(gen, shape, std):
    return torch.randn(shape, generator=gen) * std


def kohya_ldm_file(pipe, path, gen):
    config = pipe.unet.config
    state = {}
    for model, module, rank, alpha in KOHYA_LDM:
        weight = base_weight(model_of(pipe, model).get_submodule(module))
        name = kohya_key(model, ldm_module(module, config) if model == "unet" else module)
        if weight.dim() == 4:
            down, up = randn(gen, (rank, *weight.shape[1:]), 0.3), randn(gen, (weight.shape[0], rank, 1, 1), 0.3)
        else:
            down, up = randn(gen, (rank, weight.shape[1]), 0.3), randn(gen, (weight.shape[0], rank), 0.3)
        state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"] = down, up
        state[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))


def locon_file(pipe, path, gen):
    state = {}
    for model, module, rank, alpha, mid in LOCON:
        weight = base_weight(model_of(pipe, model).get_submodule(module))
        name = kohya_key(model, module)
        if mid:  # LyCORIS' LoConModule with use_tucker: 1×1 down, k×k mid, 1×1 up
            state[f"{name}.lora_down.weight"] = randn(gen, (rank, weight.shape[1], 1, 1), 0.5)
            state[f"{name}.lora_mid.weight"] = randn(gen, (rank, rank, *weight.shape[2:]), 0.5)
        elif weight.dim() == 4:
            state[f"{name}.lora_down.weight"] = randn(gen, (rank, *weight.shape[1:]), 0.3)
        else:
            state[f"{name}.lora_down.weight"] = randn(gen, (rank, weight.shape[1]), 0.3)
        up_shape = (weight.shape[0], rank, 1, 1) if weight.dim() == 4 else (weight.shape[0], rank)
        state[f"{name}.lora_up.weight"] = randn(gen, up_shape, 0.5 if mid else 0.3)
        state[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(state, str(path))


def lycoris_with_peft(pipe, kind, table, gen, std=0.5):
    """The LoHa / LoKr modules of `table` made by peft (one fresh copy of the model per module,
    so each gets its own config), filled with random weights. Returns the file's state (LyCORIS
    keys: peft's parameter names are LyCORIS') and, per module, peft's merged weight (at scale 1)."""
    state, peft_merged = {}, {}
    for row in table:
        model, module, rank, alpha = row[:4]
        if kind == "loha":
            use_tucker = row[4]
            # No alpha in the file means scale 1: alpha = rank for peft.
            config = LoHaConfig(r=rank, alpha=rank if alpha is None else alpha, target_modules=[module],
                                use_effective_conv2d=use_tucker)
        else:
            factor, both, use_tucker = row[4:]
            config = LoKrConfig(r=rank, alpha=alpha, target_modules=[module], decompose_factor=factor,
                                decompose_both=both, use_effective_conv2d=use_tucker)
        adapted = copy.deepcopy(model_of(pipe, model))
        inject_adapter_in_model(config, adapted, adapter_name="x")
        layer = adapted.get_submodule(module)
        name = kohya_key(model, module)
        with torch.no_grad():
            for param_name in layer.adapter_layer_names:
                params = getattr(layer, param_name)
                if "x" in params:
                    params["x"].copy_(randn(gen, params["x"].shape, std))
                    state[f"{name}.{param_name}"] = params["x"].detach().clone()
            full = kind == "lokr" and "x" in layer.lokr_w1 and "x" in layer.lokr_w2
            if full:
                # peft scales by alpha / r even here; LyCORIS (and everyone reading its files)
                # by 1: make peft's scale 1 for the comparison.
                layer.scaling["x"] = 1.0
            layer.merge(adapter_names=["x"])
            peft_merged[(model, module)] = layer.get_base_layer().weight.detach().clone()
        if alpha is not None:
            state[f"{name}.alpha"] = torch.tensor(float(alpha))
    return state, peft_merged


def peft_pattern_file(out, path, gen):
    pipe = lora_fixtures.pipeline(out)
    unet_config, text_config = LoraConfig(**PEFT_UNET), LoraConfig(**PEFT_TEXT)
    pipe.unet.add_adapter(unet_config)
    inject_adapter_in_model(text_config, pipe.text_encoder)
    with torch.no_grad():
        for model in [pipe.unet, pipe.text_encoder]:
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(randn(gen, p.shape, 0.3))
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent), unet_lora_layers=get_peft_model_state_dict(pipe.unet),
        text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder), weight_name=path.name,
        safe_serialization=True, unet_lora_adapter_metadata=metadata(unet_config),
        text_encoder_lora_adapter_metadata=metadata(text_config))


def metadata(config):
    """A LoraConfig as diffusers stores it, `target_modules` (a set) sorted so that the file does
    not depend on the hash seed."""
    out = config.to_dict()
    out["target_modules"] = sorted(out["target_modules"])
    return out


def ia3_file(pipe, path, gen):
    """LyCORIS (IA)³: a learned vector per module (`.weight`, [out], or [in] when `.on_input` is
    1) that scales the weight's rows (columns); nothing low-rank to merge as W + ΔW."""
    state = {}
    for module, on_input in [("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k", 0),
                             ("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v", 0),
                             ("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2", 1)]:
        weight = pipe.unet.get_submodule(module).weight
        name = kohya_key("unet", module)
        state[f"{name}.weight"] = randn(gen, (weight.shape[1] if on_input else weight.shape[0],), 0.3)
        state[f"{name}.on_input"] = torch.tensor(on_input)  # int64, as LyCORIS' buffer
    save_file(state, str(path))


# --- cross-checks


def check_kohya_ldm_with_diffusers(out, path, deltas):
    """diffusers reads LDM-named kohya files for SD1.5 only when `unet_config` is passed (its SD
    pipeline does not pass it; SDXL's does). Fused at scale 1, each module's change must be a
    multiple of our ΔW (the same module: the name mapping agrees), by our alpha/rank where
    diffusers keeps the alphas. Returns {module: (diffusers' factor / ours, residual)}, None
    where diffusers left the module alone."""
    pipe, base = lora_fixtures.pipeline(out), lora_fixtures.pipeline(out)
    pipe.load_lora_weights(str(path), adapter_name="ldm", unet_config=pipe.unet.config)
    pipe.fuse_lora(lora_scale=1.0)
    result = {}
    for (model, module), delta in deltas.items():
        theirs = base_weight(model_of(pipe, model).get_submodule(module)).double()
        change = theirs - base_weight(model_of(base, model).get_submodule(module)).double()
        if not change.any():
            result[(model, module)] = None
            continue
        factor = ((change * delta).sum() / (delta * delta).sum()).item()
        result[(model, module)] = (factor, (change - factor * delta).abs().max().item())
    return result


def make_lora_kinds(out):
    folder = out / "lora"
    folder.mkdir(exist_ok=True)
    gen = torch.Generator().manual_seed(97)
    sd_ref = load_file(str(out / "reference" / "sd.safetensors"))
    clip_ref = load_file(str(out / "reference" / "clip.safetensors"))
    inputs = (sd_ref["unet.sample"], sd_ref["unet.cond"], clip_ref["input_ids"].long())
    base_unet, base_clip = lora_fixtures.outputs(lora_fixtures.pipeline(out), inputs)
    pipe0 = lora_fixtures.pipeline(out)
    ref, report = {}, {}

    def record(run, pipe, touched):
        """The run's scale, merged weights and outputs from `pipe` (merged already)."""
        ref[f"{run}.scale"] = torch.tensor(SCALES[run])
        for model, module in touched:
            ref[ref_key(run, model, module)] = base_weight(model_of(pipe, model).get_submodule(module)).detach().clone()
        ref[f"{run}.unet"], ref[f"{run}.clip"] = lora_fixtures.outputs(pipe, inputs)
        for key, base in [("unet", base_unet), ("clip", base_clip)]:
            change = (ref[f"{run}.{key}"] - base).abs().max().item()
            assert change > 1e-2, f"the {run} LoRA barely changes the {key} output ({change})"

    # 1. kohya on LDM names: the same update as the diffusers-named module.
    path = folder / "kohya-ldm.safetensors"
    kohya_ldm_file(pipe0, path, gen)
    config = pipe0.unet.config
    deltas = deltas_from_file(pipe0, path, KOHYA_LDM, kohya_delta,
                              lambda m, n: kohya_key(m, ldm_module(n, config) if m == "unet" else n))
    pipe = lora_fixtures.pipeline(out)
    merge(pipe, deltas, SCALES["kohya-ldm"])
    record("kohya-ldm", pipe, deltas)
    checks = check_kohya_ldm_with_diffusers(out, path, deltas)
    for (model, module), check in checks.items():
        if module == "up_blocks.0.upsamplers.0.conv":
            # diffusers maps `output_blocks_2_1_conv` to `up_blocks.0.attentions.2.conv` (it
            # takes LDM sub-block 1 for an attention) and drops it as an unexpected key.
            assert check is None, check
            continue
        factor, residual = check
        assert residual < 1e-6, (module, residual)
        # Its alphas of transformer-block attention projections and text-encoder modules come
        # from keys that collapse several modules into one (whichever comes last wins).
        if not any(part in module for part in ["attn1.", "attn2.", "self_attn.", "mlp."]):
            assert abs(factor - 1) < 1e-6, (module, factor)
    report["kohya-ldm: diffusers' factor / ours, residual"] = checks

    # 2. LyCORIS LoHa and LoKr, checked against peft's layers holding the same weights.
    for run, table, delta_fn in [("loha", LOHA, loha_delta), ("lokr", LOKR, lokr_delta)]:
        path = folder / f"{run}.safetensors"
        state, peft_merged = lycoris_with_peft(pipe0, run, table, gen)
        save_file(state, str(path))
        deltas = deltas_from_file(pipe0, path, table, delta_fn, kohya_key)
        diffs = {}
        for key, delta in deltas.items():
            weight = base_weight(model_of(pipe0, key[0]).get_submodule(key[1]))
            diffs[key] = ((weight.double() + delta) - peft_merged[key].double()).abs().max().item()
            assert diffs[key] < 1e-5, (run, key, diffs[key])
        report[f"{run} vs peft"] = diffs
        pipe = lora_fixtures.pipeline(out)
        merge(pipe, deltas, SCALES[run])
        record(run, pipe, deltas)

    # LoCon with Tucker cores: the formula alone (peft's LoRA has no mid; diffusers refuses it).
    path = folder / "locon-tucker.safetensors"
    locon_file(pipe0, path, gen)
    deltas = deltas_from_file(pipe0, path, LOCON, locon_delta, kohya_key)
    pipe = lora_fixtures.pipeline(out)
    merge(pipe, deltas, SCALES["locon-tucker"])
    record("locon-tucker", pipe, deltas)

    # 3. PEFT with alpha_pattern / rank_pattern: diffusers' load_lora_weights + fuse_lora.
    path = folder / "peft-alpha-pattern.safetensors"
    peft_pattern_file(out, path, gen)
    with safe_open(str(path), "pt") as f:
        adapter_metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    # The patterns do what they are there for: the first matching key wins (`attn2.to_k` over
    # `to_k`), keys are regexes matched at the end of the path at a `.` boundary.
    block = "down_blocks.0.attentions.0.transformer_blocks.0"
    assert peft_alpha(adapter_metadata, "unet", f"{block}.attn2.to_k") == 2
    assert peft_alpha(adapter_metadata, "unet", f"{block}.attn1.to_k") == 16
    assert peft_alpha(adapter_metadata, "unet", "up_blocks.1.resnets.0.conv_shortcut") == 1
    assert peft_rank(adapter_metadata, "unet", "up_blocks.0.resnets.2.conv_shortcut") == 3
    assert peft_alpha(adapter_metadata, "unet", f"{block}.attn1.to_q") == adapter_metadata["unet.lora_alpha"]
    pipe = lora_fixtures.pipeline(out)
    pipe.load_lora_weights(str(path), adapter_name="patterns")
    pipe.fuse_lora(lora_scale=SCALES["peft-alpha-pattern"])
    state = load_file(str(path))
    touched = sorted({(("unet" if k.startswith("unet.") else "text"), k.split(".", 1)[1].split(".lora_")[0])
                      for k in state})
    diffs = {}
    for model, module in touched:
        prefix = "unet" if model == "unet" else "text_encoder"
        a = state[f"{prefix}.{module}.lora_A.weight"].double()
        b = state[f"{prefix}.{module}.lora_B.weight"].double()
        rank = a.shape[0]
        alpha = peft_alpha(adapter_metadata, prefix, module)
        assert rank == peft_rank(adapter_metadata, prefix, module), (module, rank)
        weight = base_weight(model_of(pipe0, model).get_submodule(module))
        expected = weight.double() + SCALES["peft-alpha-pattern"] * alpha / rank * (b.flatten(1) @ a.flatten(1)).reshape(weight.shape)
        theirs = base_weight(model_of(pipe, model).get_submodule(module))
        diffs[(model, module)] = (theirs.double() - expected).abs().max().item()
        assert diffs[(model, module)] < 1e-5, (module, diffs[(model, module)])
    report["peft-alpha-pattern vs formula"] = diffs
    record("peft-alpha-pattern", pipe, touched)

    # 4. A kind ella refuses by name.
    ia3_file(pipe0, folder / "unsupported-ia3.safetensors", gen)

    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "lora_kinds.safetensors"))
    for title, diffs in report.items():
        print(title)
        for (model, module), diff in diffs.items():
            shown = "untouched" if diff is None else f"{diff[0]:.4f} {diff[1]:.1e}" if isinstance(diff, tuple) else f"{diff:.1e}"
            print(f"  {model:4} {module:66} {shown}")


def pattern_value(metadata, prefix, module, field, default_field):
    """peft's rule: the first key of `{prefix}.{field}` (in the file's order) that matches the
    end of the module's path at a `.` boundary, as the regex `(.*\\.)?(KEY)$`; else the default."""
    for key, value in metadata[f"{prefix}.{field}"].items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return metadata[f"{prefix}.{default_field}"]


def peft_alpha(metadata, prefix, module):
    return pattern_value(metadata, prefix, module, "alpha_pattern", "lora_alpha")


def peft_rank(metadata, prefix, module):
    return pattern_value(metadata, prefix, module, "rank_pattern", "r")
