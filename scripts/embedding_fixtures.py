"""Textual-inversion embeddings for the tiny SD1.5 CLIP (sd/text_encoder, sd/tokenizer) in the
file kinds users bring, and the prompt encodings diffusers makes with them, for
make_fixtures.py (docs/embeddings-reference.md says what the reference does). Writes:

  embeddings/easyneg.safetensors         A1111 / kohya kind: one tensor `emb_params` [3, 32]
                                         (EasyNegative's layout), name = file stem "easyneg"
  embeddings/BadHands.safetensors        the same kind, [2, 32], a mixed-case stem "BadHands"
  embeddings/style-a1111-pt.safetensors  A1111 `.pt` converted to safetensors: one tensor
                                         `string_to_param.*` [1, 32], name = file stem
  embeddings/learned_embeds.safetensors  diffusers kind: {"<tiny-cat>": [32]} (1-D), name =
                                         the stored key
  embeddings/tiny-dog.safetensors        diffusers kind: {"<tiny-dog>": [1, 32]} in F16
  reference/embeddings.safetensors       per case `<case>.prompt_embeds` and
                                         `<case>.negative_prompt_embeds` [1, 77, 32] (diffusers'
                                         `encode_prompt` with CFG); for the cases where A1111's
                                         matching gives another result, also
                                         `<case>.a1111.prompt_embeds` / `.negative_prompt_embeds`
  reference/embeddings.json              the files, token names and ids, and every case (prompt,
                                         negative, the ids diffusers produced, A1111's ids and
                                         vector positions, tensor keys, and the ids and tensors of
                                         the behaviour the doc recommends), plus
                                         `tokenizer_checks`: how each side matches names in
                                         sample texts

The A1111 side is a re-implementation of stable-diffusion-webui's matching
(`EmbeddingDatabase.find_embedding_at_position`, `tokenize_line`, `EmbeddingsWithFixes`) on the
plain tokenizer and text encoder; on every case where both match the same words it gives
bit-identical encodings to diffusers' (checked here).
"""

import json
import re

import diffusers
import tokenizers
import torch
import transformers
from safetensors.torch import load_file, save_file

import lora_fixtures

HIDDEN = 32  # the tiny CLIP's hidden size

# (file, kind, the tensor's key in the file, shape, dtype, seed); loaded in this order.
FILES = [
    ("easyneg.safetensors", "a1111-emb-params", "emb_params", (3, HIDDEN), torch.float32, 201),
    ("style-a1111-pt.safetensors", "a1111-string-to-param", "string_to_param.*", (1, HIDDEN), torch.float32, 202),
    ("learned_embeds.safetensors", "diffusers", "<tiny-cat>", (HIDDEN,), torch.float32, 203),
    ("tiny-dog.safetensors", "diffusers", "<tiny-dog>", (1, HIDDEN), torch.float16, 204),
    ("BadHands.safetensors", "a1111-emb-params", "emb_params", (2, HIDDEN), torch.float32, 205),
]

# (case, prompt, negative). Every prompt stays within 75 tokens after expansion.
CASES = [
    # an A1111 file in the prompt (single vector, a name of 14 CLIP tokens)
    ("prompt_a1111_pt", "style-a1111-pt, a red book on the table", ""),
    # a diffusers file in the prompt
    ("prompt_diffusers", "a photo of <tiny-cat> on the red book", ""),
    # the EasyNegative habit: a multi-vector embedding as the whole negative prompt
    ("negative_multi", "a red book on the table", "easyneg"),
    # several embeddings in one prompt, a multi-vector one in the negative next to text
    ("two_in_prompt", "<tiny-cat> and <tiny-dog> on the table with style-a1111-pt", "easyneg, bad hat"),
    # names next to punctuation and words, without spaces; repeated; upper case (single vector)
    ("punctuation", "the red hat,easyneg.the book and <TINY-CAT> the other", "easyneg!!"),
    ("repeated", "easyneg easyneg and <tiny-dog> <tiny-dog>", "red easyneg hat"),
    # no embedding used: must equal the plain encoder's output
    ("unused", "a red book on the table", "bad hat"),
    # where diffusers and A1111 differ (both results stored):
    # a name inside a longer word (diffusers matches substrings)
    ("diverge_inside_word", "the easynegx book", "the red hateasyneg"),
    # a multi-vector name written in another case (diffusers expands only exact-case text)
    ("diverge_case", "the EasyNeg book", "EASYNEG"),
    # a mixed-case file stem: diffusers never expands it, whatever the prompt's case
    ("diverge_mixed_case_stem", "a red book", "BadHands, badhands"),
    # a name that ends in punctuation, followed by punctuation (CLIP's pre-tokenizer glues
    # ">," into one piece, so A1111's token match fails)
    ("diverge_name_punct", "<tiny-cat>, the red book", "bad hat"),
]

TOKENIZER_CHECKS = [
    "easyneg", "EASYNEG", "EasyNeg", "easyneg,red", "red,easyneg.", "xeasyneg", "easynegx", "easy neg",
    "easyneg_1", "easyneg easyneg", "style-a1111-pt", "Style-A1111-PT", "style - a1111 - pt",
    "<tiny-cat>", "<TINY-CAT>", "<tiny-cat>,", "<tiny-cat><tiny-dog>", "< tiny-cat >", "BadHands",
    "badhands", "bad hands",
]


def kind_of(state):
    """(kind, tensor, stored key) of an embedding file's tensors, by the rules of
    docs/embeddings-reference.md; the tensor as [n_vectors, hidden]."""
    if "emb_params" in state and len(state) == 1:
        kind, key = "a1111-emb-params", "emb_params"
    elif "string_to_param.*" in state:
        kind, key = "a1111-string-to-param", "string_to_param.*"
    elif len(state) == 1:
        kind, key = "diffusers", next(iter(state))
    else:
        raise ValueError(f"not a textual-inversion embedding: {sorted(state)}")
    vectors = state[key].float()
    return kind, (vectors[None] if vectors.dim() == 1 else vectors), key


def write_files(folder):
    folder.mkdir(exist_ok=True)
    described = []
    for name, kind, key, shape, dtype, seed in FILES:
        vectors = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
        save_file({key: vectors.contiguous()}, str(folder / name))
        state = load_file(str(folder / name))
        found, as_2d, _ = kind_of(state)
        assert found == kind, (name, found)
        stem = name.rsplit(".", 1)[0]
        described.append({
            "file": name, "kind": kind, "key": key, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
            # the name a user writes: the stem for A1111 files (as A1111 does), the key for diffusers'
            "token": key if kind == "diffusers" else stem, "vectors": as_2d,
        })
    return described


def load_pipeline(out, embeddings):
    """The tiny SD pipeline with every embedding loaded by diffusers, one call per file."""
    pipe = lora_fixtures.pipeline(out)
    base = len(pipe.tokenizer)
    for emb in embeddings:
        path = str(out / "embeddings" / emb["file"])
        if emb["kind"] == "diffusers":
            pipe.load_textual_inversion(path)
        else:
            pipe.load_textual_inversion(path, token=emb["token"])
    table = pipe.text_encoder.get_input_embeddings().weight
    next_id = base
    for emb in embeddings:
        n = emb["vectors"].shape[0]
        names = [emb["token"]] + [f"{emb['token']}_{i}" for i in range(1, n)]
        emb["diffusers_tokens"] = names
        emb["ids"] = [pipe.tokenizer.added_tokens_encoder[t] for t in names]
        # ids are handed out in order from the base vocabulary's size; rows hold the vectors
        assert emb["ids"] == list(range(next_id, next_id + n)), emb["ids"]
        next_id += n
        assert torch.equal(table[emb["ids"]].detach(), emb["vectors"]), emb["file"]
    assert table.shape[0] == next_id == len(pipe.tokenizer)
    return pipe


def diffusers_encode(pipe, prompt, negative):
    converted = [pipe.maybe_convert_prompt(p, pipe.tokenizer) for p in (prompt, negative)]
    ids = [pipe.tokenizer(c, padding="max_length", max_length=77, truncation=True).input_ids for c in converted]
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
    return converted, ids, cond, uncond


def route_tokenizer(out, embeddings):
    """The `tokenizers` library itself (the Rust crate under ella's ClipTokenizer) on
    sd/tokenizer/tokenizer.json, the expanded names added in load order as non-special tokens
    (`AddedToken(name, special=False)`: normalized, no strip, not single-word), padded with
    <|endoftext|> and truncated to 77."""
    tok = tokenizers.Tokenizer.from_file(str(out / "sd" / "tokenizer" / "tokenizer.json"))
    for emb in embeddings:
        for name, i in zip(emb["diffusers_tokens"], emb["ids"]):
            tok.add_tokens([tokenizers.AddedToken(name, special=False)])
            assert tok.token_to_id(name) == i, name
    tok.enable_padding(length=77, pad_id=tok.token_to_id("<|endoftext|>"), pad_token="<|endoftext|>")
    tok.enable_truncation(77)
    return tok


def expand(tok, prompt, embeddings):
    """diffusers' `maybe_convert_prompt` by the rule docs/embeddings-reference.md states: the
    names the added-token matcher finds in the prompt are reported lower-cased; each such name
    that is a registered multi-vector name (so: one whose text is lower case) has every exact,
    case-sensitive occurrence in the prompt replaced by `name name_1 … name_{n-1}`."""
    found = set(tok.encode(prompt, add_special_tokens=False).tokens)
    for emb in embeddings:
        name, n = emb["token"], emb["vectors"].shape[0]
        if n > 1 and name in found:
            prompt = prompt.replace(name, " ".join([name] + [f"{name}_{i}" for i in range(1, n)]))
    return prompt


def route_ids(tok, texts, embeddings):
    return [e.ids for e in tok.encode_batch([expand(tok, t, embeddings) for t in texts])]


def recommended_ids(tok, text, embeddings):
    """The behaviour docs/embeddings-reference.md recommends: diffusers' tokenization with the
    added tokens, then every id of a multi-vector name (matched in any case) expanded on the ids
    to all of its vectors' ids; <|startoftext|>, at most 75 ids, <|endoftext|>, padded to 77."""
    enc = tok.encode(text, add_special_tokens=False)
    found = [i for i, m in zip(enc.ids, enc.attention_mask) if m]
    names = {e["ids"][0]: e["ids"] for e in embeddings}
    ids = [j for i in found for j in names.get(i, [i])][:75]
    eos = tok.token_to_id("<|endoftext|>")
    return [tok.token_to_id("<|startoftext|>")] + ids + [eos] * (76 - len(ids))


def vector_positions(fixes):
    """Where A1111 puts each embedding's vectors: `position` in the 77 tokens (after
    <|startoftext|>), the name, and how many vectors (positions position … position+n-1)."""
    return [{"position": offset, "token": emb["token"], "n_vectors": emb["vectors"].shape[0]} for offset, emb in fixes]


class A1111:
    """stable-diffusion-webui's textual inversion on the plain tokenizer and text encoder: names
    are matched as token-id sequences of the tokenized prompt (longest first among names that
    start with the same id), their ids replaced by placeholders (0) and the token embeddings at
    those positions by the vectors, before the position embeddings are added."""

    def __init__(self, pipe, embeddings):
        self.tokenizer, self.encoder = pipe.tokenizer, pipe.text_encoder
        self.lookup = {}
        for emb in embeddings:
            ids = self.tokenizer([emb["token"]], add_special_tokens=False).input_ids[0]
            entries = self.lookup.setdefault(ids[0], []) + [(ids, emb)]
            self.lookup[ids[0]] = sorted(entries, key=lambda x: len(x[0]), reverse=True)

    def tokenize(self, text):
        tokens = self.tokenizer([text], truncation=False, add_special_tokens=False).input_ids[0]
        chunk, fixes, pos = [], [], 0
        while pos < len(tokens):
            match = next((m for m in self.lookup.get(tokens[pos], []) if tokens[pos:pos + len(m[0])] == m[0]), None)
            if match is None:
                chunk.append(tokens[pos])
                pos += 1
            else:
                ids, emb = match
                fixes.append((len(chunk) + 1, emb))  # +1: after <|startoftext|>
                chunk += [0] * emb["vectors"].shape[0]
                pos += len(ids)
        assert len(chunk) <= 75, "one 75-token chunk only"
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer.bos_token_id] + chunk + [eos] * (76 - len(chunk)), fixes

    def encode(self, text):
        ids, fixes = self.tokenize(text)

        def replace(_module, _inputs, output):
            output = output.clone()
            for offset, emb in fixes:
                output[0, offset:offset + emb["vectors"].shape[0]] = emb["vectors"]
            return output

        hook = self.encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            with torch.no_grad():
                hidden = self.encoder(torch.tensor([ids])).last_hidden_state
        finally:
            hook.remove()
        return ids, vector_positions(fixes), hidden


def make_embeddings(out):
    embeddings = write_files(out / "embeddings")
    pipe = load_pipeline(out, embeddings)
    plain = lora_fixtures.pipeline(out)
    a1111 = A1111(plain, embeddings)

    # Loading without token=...: diffusers names an A1111 safetensors file by its tensor's key.
    probe = lora_fixtures.pipeline(out)
    probe.load_textual_inversion(str(out / "embeddings" / "easyneg.safetensors"))
    assert "emb_params" in probe.tokenizer.added_tokens_encoder and "easyneg" not in probe.tokenizer.added_tokens_encoder

    ref, cases = {}, []
    for case, prompt, negative in CASES:
        converted, ids, cond, uncond = diffusers_encode(pipe, prompt, negative)
        ref[f"{case}.prompt_embeds"], ref[f"{case}.negative_prompt_embeds"] = cond, uncond
        a_prompt, a_negative = a1111.encode(prompt), a1111.encode(negative)
        diff = max((cond - a_prompt[2]).abs().max().item(), (uncond - a_negative[2]).abs().max().item())
        agrees = diff == 0.0
        assert agrees != case.startswith("diverge_"), (case, diff)
        used = sorted({v["token"] for v in a_prompt[1] + a_negative[1]} | {
            e["token"] for e in embeddings for i in ids[0] + ids[1] if i in e["ids"]})
        entry = {
            "name": case, "prompt": prompt, "negative": negative,
            "tokens": used, "files": [e["file"] for e in embeddings if e["token"] in used],
            "diffusers": {"prompt_converted": converted[0], "negative_converted": converted[1],
                          "prompt_ids": ids[0], "negative_ids": ids[1]},
            "a1111": {"prompt_ids": a_prompt[0], "prompt_vectors": a_prompt[1],
                      "negative_ids": a_negative[0], "negative_vectors": a_negative[1]},
            "a1111_agrees": agrees, "max_abs_diff_a1111": diff,
            "tensors": {"prompt_embeds": f"{case}.prompt_embeds", "negative_prompt_embeds": f"{case}.negative_prompt_embeds"},
        }
        if not agrees:
            ref[f"{case}.a1111.prompt_embeds"], ref[f"{case}.a1111.negative_prompt_embeds"] = a_prompt[2], a_negative[2]
            entry["tensors"].update({"a1111.prompt_embeds": f"{case}.a1111.prompt_embeds",
                                     "a1111.negative_prompt_embeds": f"{case}.a1111.negative_prompt_embeds"})
        with torch.no_grad():
            base = plain.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
        if case == "unused":  # exactly the plain encoder's output and ids
            assert torch.equal(base[0], cond) and torch.equal(base[1], uncond)
            assert ids == [plain.tokenizer(p, padding="max_length", max_length=77).input_ids for p in (prompt, negative)]
        else:  # the embeddings change the encoding
            assert not (torch.equal(base[0], cond) and torch.equal(base[1], uncond)), case
        cases.append(entry)

    checks = []
    for text in TOKENIZER_CHECKS:
        converted = pipe.maybe_convert_prompt(text, pipe.tokenizer)
        d_ids = pipe.tokenizer(converted).input_ids
        a_ids, a_vectors = a1111.tokenize(text)
        checks.append({
            "text": text, "diffusers_converted": converted, "diffusers_tokens": pipe.tokenizer.tokenize(converted),
            "diffusers_ids": d_ids, "a1111_ids": a_ids[:a_ids.index(a1111.tokenizer.eos_token_id) + 1],
            "a1111_vectors": vector_positions(a_vectors),
        })

    # The route docs/embeddings-reference.md gives for Rust reproduces every string and id
    # diffusers made.
    tok = route_tokenizer(out, embeddings)
    texts = [t for _, p, n in CASES for t in (p, n)]
    assert route_ids(tok, texts, embeddings) == [i for c in cases for i in (c["diffusers"]["prompt_ids"],
                                                                          c["diffusers"]["negative_ids"])]
    for check in checks + [{"text": t, "diffusers_converted": pipe.maybe_convert_prompt(t, pipe.tokenizer)} for t in texts]:
        assert expand(tok, check["text"], embeddings) == check["diffusers_converted"], check["text"]
    for check in checks:
        assert route_ids(tok, [check["text"]], embeddings)[0][:len(check["diffusers_ids"])] == check["diffusers_ids"]
        rec = recommended_ids(tok, check["text"], embeddings)
        check["recommended_ids"] = rec[:rec.index(tok.token_to_id("<|endoftext|>")) + 1]

    # The recommended behaviour gives diffusers' tensors, except where diffusers drops the extra
    # vectors of a multi-vector name written in capitals, where it gives A1111's.
    for entry in cases:
        name, rec = entry["name"], {}
        for side in ["prompt", "negative"]:
            rec[side] = recommended_ids(tok, entry[side], embeddings)
            with torch.no_grad():
                rec[f"{side}_tensor"] = pipe.text_encoder(torch.tensor([rec[side]])).last_hidden_state

        def same(prefix):
            keys = [f"{prefix}prompt_embeds", f"{prefix}negative_prompt_embeds"]
            return all(k in ref for k in keys) and torch.equal(rec["prompt_tensor"], ref[keys[0]]) and torch.equal(
                rec["negative_tensor"], ref[keys[1]])

        source = "diffusers" if same(f"{name}.") else "a1111" if same(f"{name}.a1111.") else None
        assert source == ("a1111" if name in ["diverge_case", "diverge_mixed_case_stem"] else "diffusers"), (name, source)
        entry["recommended"] = {"tensors": source, "prompt_ids": rec["prompt"], "negative_ids": rec["negative"]}

    save_file({k: v.contiguous() for k, v in ref.items()}, str(out / "reference" / "embeddings.safetensors"))
    doc = {
        "diffusers": diffusers.__version__, "transformers": transformers.__version__,
        "text_encoder": "sd/text_encoder", "tokenizer": "sd/tokenizer", "hidden_size": HIDDEN,
        "base_vocab_size": len(plain.tokenizer), "vocab_size_after": len(pipe.tokenizer),
        "load_order": [e["file"] for e in embeddings],
        "embeddings": [{k: v for k, v in e.items() if k != "vectors"} for e in embeddings],
        "encode_prompt": {"device": "cpu", "num_images_per_prompt": 1, "do_classifier_free_guidance": True,
                          "clip_skip": None, "max_length": 77},
        "cases": cases, "tokenizer_checks": checks,
    }
    text = json.dumps(doc, indent=1, ensure_ascii=False)
    # lists of ids on one line each
    text = re.sub(r"\[[\d,\s]+\]", lambda m: "[" + ", ".join(m.group(0)[1:-1].replace(",", " ").split()) + "]", text)
    assert json.loads(text) == doc
    (out / "reference" / "embeddings.json").write_text(text + "\n")
