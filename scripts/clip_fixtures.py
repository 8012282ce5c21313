"""A tiny CLIP text encoder and tokenizer in SD1.5's file layout (diffusers `text_encoder/` and
`tokenizer/` folders, transformers' `CLIPTextModel` and `CLIPTokenizer`), with reference token
ids and hidden states, for make_fixtures.py. Writes:

  sd/text_encoder/  config.json, model.safetensors
  sd/tokenizer/     tokenizer.json, vocab.json, merges.txt, tokenizer_config.json
  reference/clip.safetensors, reference/clip_tokens.json
"""

import json

import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PROMPTS = [
    "a red book on a wooden table",
    "",
    "Two  CATS, the  other's  hat!",
    "ünïcode and numbers 1234",
    " ".join(["the red hat and the other book"] * 12),  # > 77 tokens: truncated
]


def byte_alphabet():
    """GPT-2/CLIP byte-level BPE alphabet: 256 printable characters, one per byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


def tiny_tokenizer(out):
    alphabet = byte_alphabet()
    vocab = {}
    for c in alphabet:
        vocab[c] = len(vocab)
    for c in alphabet:
        vocab[c + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "r e", "re d</w>", "a n", "an d</w>", "b o", "bo o", "boo k</w>",
              "h a", "ha t</w>", "o t", "ot h", "oth e", "othe r</w>", "a</w> r"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges])
    tokenizer.model_max_length = 77
    folder = out / "sd" / "tokenizer"
    tokenizer.save_pretrained(str(folder))
    # SD1.5's hosted tokenizer/ folder has these two files and no tokenizer.json.
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return tokenizer, len(vocab)


def make_clip(out):
    tokenizer, vocab_size = tiny_tokenizer(out)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    # transformers reads a folder with only vocab.json + merges.txt (SD1.5's) to the same ids.
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["vocab.json", "merges.txt"]:
            shutil.copy(out / "sd" / "tokenizer" / name, tmp)
        from_files = CLIPTokenizer.from_pretrained(tmp)
        assert from_files(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids == ids
    (out / "reference" / "clip_tokens.json").write_text(
        json.dumps([{"prompt": p, "ids": i} for p, i in zip(PROMPTS, ids)], indent=1, ensure_ascii=False) + "\n")

    torch.manual_seed(61)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    model = CLIPTextModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
    model.save_pretrained(str(out / "sd" / "text_encoder"), safe_serialization=True)
    # transformers 5 saves without the `text_model.` prefix; SD1.5's hosted file (and every
    # older save) has it: rewrite the file in that official layout.
    from safetensors.torch import load_file
    weights = out / "sd" / "text_encoder" / "model.safetensors"
    state = load_file(str(weights))
    save_file({f"text_model.{k}": v for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor(ids)).last_hidden_state
    save_file({"input_ids": torch.tensor(ids, dtype=torch.int32), "last_hidden_state": hidden.contiguous()},
              str(out / "reference" / "clip.safetensors"))
