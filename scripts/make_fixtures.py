#!/usr/bin/env python3
"""Builds the small random-weight reference models and their outputs that the Rust tests
compare against. Run from the repository root:

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements.txt
    .venv/bin/python scripts/make_fixtures.py

Everything lands in ella-core/tests/fixtures/ in the layouts users point the library at:
  t5/            config.json, tokenizer.json, spiece.model, model.safetensors (HF T5EncoderModel)
  t5-sharded/    the same weights as an HF sharded checkpoint (model.safetensors.index.json)
  t5-relu/       a T5 v1.0-style (ReLU feed-forward) encoder
  ella/          ella.safetensors (official key names) + config.json; ella-f16.safetensors;
                 ella-proj-out.safetensors (+ config) with the optional output projection
  taesd/         a tiny TAESD (diffusers AutoencoderTiny), scripts/taesd_fixtures.py
  embeddings/    textual-inversion files (A1111 and diffusers kinds), scripts/embedding_fixtures.py
  reference/     inputs and reference outputs (safetensors) and token ids (json)
"""

import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel, T5Tokenizer

import ella_reference

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "ella-core" / "tests" / "fixtures"

# Text to train the tiny SentencePiece model on: dense, ELLA-style captions.
CORPUS = [
    "a red book lying on a wooden table next to a cup of coffee",
    "a photograph of an astronaut riding a horse on the moon",
    "three small cats sitting on a blue sofa in a sunny living room",
    "a watercolor painting of a lighthouse at dusk with seagulls",
    "a close-up of a dewdrop on a green leaf, macro photography",
    "an old man with a white beard reading a newspaper in a cafe",
    "a futuristic city skyline at night with neon lights and flying cars",
    "a bowl of ramen with an egg, green onions and slices of pork",
    "two children flying a kite on a windy beach under a cloudy sky",
    "a medieval castle on a hill surrounded by a misty forest",
    "a golden retriever puppy playing with a tennis ball in the grass",
    "a still life of apples, pears and grapes in a wicker basket",
]

PROMPTS = {
    "short": "a red book on a wooden table",
    "empty": "",
    "spaces": "  two   cats ,  on a   sofa ",
    "unicode": "café au lait ☃ 東京 naïve",
    # Longer than the fixed length: fixed mode truncates it, flexible mode keeps it whole.
    "long": " ".join(CORPUS),
}
FIXED_LENGTH = 128


def manual_seed(seed):
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_tokenizer(t5_dir: Path):
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(CORPUS * 4))
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(Path(tmp) / "spiece"),
            vocab_size=100,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            normalization_rule_name="nmt_nfkc",
        )
        shutil.copy(Path(tmp) / "spiece.model", t5_dir / "spiece.model")
    # transformers' own converter (the route the official tokenizer.json took).
    tokenizer = T5Tokenizer.from_pretrained(str(t5_dir), extra_ids=8, legacy=True)
    tokenizer.save_pretrained(str(t5_dir))
    for extra in ["tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]:
        (t5_dir / extra).unlink(missing_ok=True)
    return tokenizer


def reference_token_ids(sp_model: Path):
    """Expected ids from SentencePiece itself, with the rules of the slow, legacy T5Tokenizer
    (transformers 5 no longer ships that class): append </s>; fixed mode truncates to
    max_length - 1 tokens before the </s> and pads with <pad> = 0."""
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    out = {}
    for name, text in PROMPTS.items():
        ids = sp.encode(text) + [1]
        fixed = sp.encode(text)[: FIXED_LENGTH - 1] + [1]
        mask = [1] * len(fixed) + [0] * (FIXED_LENGTH - len(fixed))
        fixed = fixed + [0] * (FIXED_LENGTH - len(fixed))
        out[name] = {"text": text, "flexible": ids, "fixed": fixed, "fixed_mask": mask}
    return out


def randomize(model: torch.nn.Module, seed: int, std=0.3):
    """Weights of a size that makes every part of the model matter (HF's init would give
    near-uniform attention in a model this small)."""
    gen = manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "relative_attention_bias" in name:
                p.copy_(1.5 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def t5_config(vocab_size, ff):
    return T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=3 if ff == "gated-gelu" else 2,
        num_decoder_layers=0,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=24,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-6,
        feed_forward_proj=ff,
        is_encoder_decoder=False,
        use_cache=False,
    )


def encode_batch(model, ids, mask):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)
        ).last_hidden_state.float()


def pad_longest(seqs):
    n = max(len(s) for s in seqs)
    return [s + [0] * (n - len(s)) for s in seqs], [[1] * len(s) + [0] * (n - len(s)) for s in seqs]


def rounded_copy(model, dtype_of):
    """The model in f32 with each weight rounded through its file dtype: the exact function
    a half-precision file describes when loaded into f32."""
    copy = T5EncoderModel(model.config).eval()
    copy.load_state_dict({k: v.to(dtype_of(k)).float() for k, v in model.state_dict().items()})
    return copy


def mixed_f16(name):
    """The hosted flan-t5-xl encoder's layout: `wo` in F32, everything else in F16."""
    return torch.float32 if name.endswith("wo.weight") else torch.float16


def save_state(model, path: Path, dtype_of=lambda name: torch.float32):
    tensors = {k: v.to(dtype_of(k)).contiguous() for k, v in model.state_dict().items()}
    # T5EncoderModel ties encoder.embed_tokens to shared; like the hosted files, keep one copy.
    tensors.pop("encoder.embed_tokens.weight", None)
    save_file(tensors, str(path))


def make_t5(tokens):
    t5_dir = OUT / "t5"
    tokenizer = T5Tokenizer.from_pretrained(str(t5_dir))
    vocab = len(tokenizer)
    config = t5_config(vocab, "gated-gelu")
    model = T5EncoderModel(config).eval()
    randomize(model, 1)
    config.to_json_file(str(t5_dir / "config.json"))
    save_state(model, t5_dir / "model.safetensors")

    # Sharded copy (same weights, so the same reference outputs).
    sharded = OUT / "t5-sharded"
    sharded.mkdir(exist_ok=True)
    config.to_json_file(str(sharded / "config.json"))
    shutil.copy(t5_dir / "tokenizer.json", sharded / "tokenizer.json")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for i, part in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: state[k] for k in part}, str(sharded / fname))
        weight_map.update({k: fname for k in part})
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2)
    )

    # Half-precision files: mixed (wo in F32, the rest F16, like the hosted flan-t5-xl
    # encoder) and all-BF16.
    save_state(model, t5_dir / "model-mixed-f16.safetensors", mixed_f16)
    save_state(model, t5_dir / "model-bf16.safetensors", lambda k: torch.bfloat16)

    ref = {}
    # Fixed mode: batch of 2, each padded to 128.
    fixed_ids = [tokens["short"]["fixed"], tokens["long"]["fixed"]]
    fixed_mask = [tokens["short"]["fixed_mask"], tokens["long"]["fixed_mask"]]
    ref["fixed.input_ids"] = torch.tensor(fixed_ids, dtype=torch.int32)
    ref["fixed.attention_mask"] = torch.tensor(fixed_mask, dtype=torch.int32)
    ref["fixed.hidden"] = encode_batch(model, fixed_ids, fixed_mask)
    # Flexible mode, batch of 2 padded to the longer one.
    ids, mask = pad_longest([tokens["short"]["flexible"], tokens["spaces"]["flexible"]])
    ref["flexible_batch.input_ids"] = torch.tensor(ids, dtype=torch.int32)
    ref["flexible_batch.attention_mask"] = torch.tensor(mask, dtype=torch.int32)
    ref["flexible_batch.hidden"] = encode_batch(model, ids, mask)
    # Flexible mode, one unpadded prompt each.
    for name in ["short", "empty", "long"]:
        ids = [tokens[name]["flexible"]]
        ref[f"{name}.hidden"] = encode_batch(model, ids, [[1] * len(ids[0])])
    for tag, dtype_of in [("mixed_f16", mixed_f16), ("bf16", lambda k: torch.bfloat16)]:
        ids = [tokens["short"]["flexible"]]
        ref[f"{tag}.short.hidden"] = encode_batch(rounded_copy(model, dtype_of), ids, [[1] * len(ids[0])])
    # The same prompt through the whole model in f16 (the official ELLA setting).
    half = T5EncoderModel(config).eval()
    half.load_state_dict(model.state_dict())
    half = half.half()
    ids = [tokens["short"]["flexible"]]
    ref["f16_model.short.hidden"] = encode_batch(half, ids, [[1] * len(ids[0])])

    # Relative-position buckets of the tiny config and of flan-t5-xl's (32, 128).
    bucket = model.encoder.block[0].layer[0].SelfAttention._relative_position_bucket
    for tag, nb, md, n in [("tiny", 16, 24, 64), ("xl", 32, 128, 300)]:
        pos = torch.arange(n)
        rel = pos[None, :] - pos[:, None]
        ref[f"buckets.{tag}"] = bucket(rel, bidirectional=True, num_buckets=nb, max_distance=md).to(torch.int32)

    # ReLU feed-forward (T5 v1.0).
    relu_dir = OUT / "t5-relu"
    relu_dir.mkdir(exist_ok=True)
    relu_config = t5_config(vocab, "relu")
    relu = T5EncoderModel(relu_config).eval()
    randomize(relu, 2)
    relu_config.to_json_file(str(relu_dir / "config.json"))
    shutil.copy(t5_dir / "tokenizer.json", relu_dir / "tokenizer.json")
    save_state(relu, relu_dir / "model.safetensors")
    ids, mask = pad_longest([tokens["short"]["flexible"], tokens["unicode"]["flexible"]])
    ref["relu.input_ids"] = torch.tensor(ids, dtype=torch.int32)
    ref["relu.attention_mask"] = torch.tensor(mask, dtype=torch.int32)
    ref["relu.hidden"] = encode_batch(relu, ids, mask)
    return model, ref


ELLA_TINY = dict(time_channel=16, time_embed_dim=24, width=32, layers=2, heads=4, num_latents=8, input_dim=32)


def make_ella(t5_ref):
    ella_dir = OUT / "ella"
    ella_dir.mkdir(exist_ok=True)
    manual_seed(3)
    ella = ella_reference.ELLA(**ELLA_TINY).eval()
    # Random AdaLN weights (they are zero only at training init). std 0.15 keeps outputs of
    # order 1-6, where f32 rounding noise (~1e-5) sits well below the 1e-4 tolerance.
    gen = manual_seed(4)
    with torch.no_grad():
        for p in ella.parameters():
            p.copy_(0.15 * torch.randn(p.shape, generator=gen))
    save_file({k: v.contiguous() for k, v in ella.state_dict().items()}, str(ella_dir / "ella.safetensors"))
    save_file({k: v.half().contiguous() for k, v in ella.state_dict().items()}, str(ella_dir / "ella-f16.safetensors"))
    (ella_dir / "config.json").write_text(json.dumps(ELLA_TINY, indent=2) + "\n")

    ref = {}
    states = t5_ref["short.hidden"]  # [1, L, 32], flexible mode
    fixed = t5_ref["fixed.hidden"]  # [2, 128, 32], fixed mode, pad outputs included
    with torch.no_grad():
        for t in [0, 1, 500, 999]:
            ref[f"short.t{t}"] = ella(states, t)
        ref["fixed.t999_500"] = ella(fixed, [999, 500])
        ref["fixed.t250"] = ella(fixed, 250)  # one timestep broadcast over the batch
        ref["short.t741_5"] = ella(states, 741.5)  # fractional, as sigma-based samplers pass
        half = ella_reference.ELLA(**ELLA_TINY).eval()
        half.load_state_dict({k: v.half().float() for k, v in ella.state_dict().items()})
        ref["f16_file.short.t500"] = half(states, 500)
        for t in [0.0, 1.0, 500.0, 999.0, 741.5]:
            ref[f"features320.t{t}"] = ella_reference.timestep_features(torch.tensor([t]), 320)

    # The optional output projection (Linear + LayerNorm) of the reference resampler.
    manual_seed(5)
    proj = ella_reference.ELLA(**ELLA_TINY, output_dim=20).eval()
    gen = manual_seed(6)
    with torch.no_grad():
        for p in proj.parameters():
            p.copy_(0.15 * torch.randn(p.shape, generator=gen))
        ref["proj_out.short.t500"] = proj(states, 500)
    save_file({k: v.contiguous() for k, v in proj.state_dict().items()}, str(ella_dir / "ella-proj-out.safetensors"))
    (ella_dir / "config-proj-out.json").write_text(json.dumps({**ELLA_TINY, "output_dim": 20}, indent=2) + "\n")
    return ref


def make_text():
    train_tokenizer(OUT / "t5")
    tokens = reference_token_ids(OUT / "t5" / "spiece.model")
    (OUT / "reference" / "tokens.json").write_text(json.dumps(tokens, indent=1, ensure_ascii=False) + "\n")
    _, t5_ref = make_t5(tokens)
    save_file({k: v.contiguous() for k, v in t5_ref.items()}, str(OUT / "reference" / "t5.safetensors"))
    ella_ref = make_ella(t5_ref)
    save_file({k: v.float().contiguous() for k, v in ella_ref.items()}, str(OUT / "reference" / "ella.safetensors"))


def part(module, function, *args):
    """A fixture part made by `module.function(OUT, *args)`, imported when it runs."""
    return lambda: getattr(importlib.import_module(module), function)(OUT, *args)


# In the order `all` makes them: each part reads the files of the parts before it.
PARTS = {
    "text": (make_text, "the T5 encoder, its tokenizer and the connector"),
    "sd": (part("sd_fixtures", "make_sd", ELLA_TINY), "the U-Net, VAE, schedulers and ELLA samplings"),
    "scheduler-limits": (part("sd_fixtures", "scheduler_limit_fixtures"), "diffusers at 999 and 1000 steps"),
    "clip": (part("clip_fixtures", "make_clip"), "the CLIP text encoder and tokenizer"),
    "conditioning": (part("sd_fixtures", "make_conditioning", ELLA_TINY), "samplings on CLIP and ELLA + CLIP"),
    "img2img": (part("sd_fixtures", "make_img2img", ELLA_TINY), "image-to-image samplings"),
    "few-step": (part("few_step_fixtures", "make_few_step", ELLA_TINY), "LCM and TCD schedulers and samplings"),
    "lora": (part("lora_fixtures", "make_lora"), "LoRA files and outputs"),
    "lora-kinds": (part("lora_kinds_fixtures", "make_lora_kinds"), "LDM-named kohya, LoHa, LoKr, LoCon-Tucker, PEFT patterns"),
    "controlnet": (part("controlnet_fixtures", "make_controlnet", ELLA_TINY), "the ControlNet and its samplings"),
    "sur": (part("sur_fixtures", "make_sur"), "the SUR-adapter and its sampling"),
    "single-file": (part("single_file_fixtures", "make_single_file"), "the LDM single-file checkpoint"),
    "seamless": (part("seamless_fixtures", "make_seamless", ELLA_TINY), "samplings and VAE decodes that wrap around"),
    "inpaint": (part("inpaint_fixtures", "make_inpaint", ELLA_TINY), "inpainting (4- and 9-channel) and outpainting"),
    "previews": (part("preview_fixtures", "make_previews"), "predicted clean samples and the linear preview"),
    "taesd": (part("taesd_fixtures", "make_taesd"), "the tiny TAESD (AutoencoderTiny) and its outputs"),
    "controlnet-ldm": (part("controlnet_ldm_fixtures", "make_controlnet_ldm"), "the ControlNet as LDM-layout single files"),
    "community": (part("community_fixtures", "make_community", ELLA_TINY),
                  "several ControlNets at once; ELLA + CLIP with a CLIP prompt of its own"),
    "embeddings": (part("embedding_fixtures", "make_embeddings"), "textual-inversion embeddings and prompt encodings"),
    "prompt-weighting": (part("prompt_weighting_fixtures", "make_prompt_weighting"),
                         "A1111 prompt weighting, 75-token chunks and CLIP skip on the tiny CLIP"),
}
# Only on request: the tiled-VAE reference from the committed tiny VAE (also part of `sd`).
EXTRA = {"vae-tiling": (part("sd_fixtures", "make_vae_tiling"), "the tiled-VAE reference alone")}


def main():
    """`make_fixtures.py [PART]`: one part of the fixtures, or all of them (default)."""
    name = sys.argv[1] if len(sys.argv) > 1 else "all"
    chosen = PARTS if name == "all" else {name: {**PARTS, **EXTRA}.get(name)}
    if None in chosen.values():
        listing = "\n".join(f"  {k:14} {d}" for k, (_, d) in {**PARTS, **EXTRA}.items())
        raise SystemExit(f"unknown part {name}; choose all or one of:\n{listing}")
    torch.set_num_threads(1)
    for sub in ["t5", "reference"]:
        (OUT / sub).mkdir(parents=True, exist_ok=True)
    for make, _ in chosen.values():
        make()
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"fixtures written to {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
