"""Prompt weighting in AUTOMATIC1111's syntax, long prompts in 75-token chunks and CLIP skip, on
the tiny SD1.5 CLIP (sd/text_encoder, sd/tokenizer), for make_fixtures.py. Our own code, written
from AUTOMATIC1111's documented behaviour (modules/prompt_parser.py `parse_prompt_attention`,
modules/sd_hijack_clip.py, modules/sd_emphasis.py "Original") and from ComfyUI-ELLA's
`utils.remove_weights` (the text ELLA's T5 gets); docs/prompt-weighting-reference.md says exactly
what each step does. Writes:

  reference/prompt_weighting.json         per case: the prompt, A1111's Clip skip, the parsed
                                          [[text, weight], ...], the chunks (77 token ids and
                                          77 weights each), the text for T5, the tensor keys;
                                          and the diffusers clip_skip runs ("clip_skip")
  reference/prompt_weighting.safetensors  per case: `{name}.hidden` f32 [1, 77*chunks, 32], the
                                          weighted states; `{name}.unweighted`, the same chunks
                                          encoded without the weights (only where a weight
                                          is not 1: elsewhere the two are equal)
  reference/clip_skip.safetensors         diffusers' StableDiffusionPipeline.encode_prompt with
                                          clip_skip None / 1 / 2: `{name}.input_ids` i32 [1, 77],
                                          `{name}.skip_none`, `{name}.skip1`, `{name}.skip2`
                                          f32 [1, 77, 32]
"""

import json
import re

import torch
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTokenizer

# A1111's defaults: chunks of 75 prompt tokens, "Prompt word wrap length limit"
# (opts.comma_padding_backtrack) 20, emphasis mode "Original".
CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_SPLIT = re.compile(r"\s*\bBREAK\b\s*", re.S)


# ---------------------------------------------------------------- parsing (A1111)

def split_break(run):
    """A run of plain text, cut at each whole word `BREAK` (with the whitespace around it):
    the pieces, with a BREAK marker ["BREAK", -1.0] between each two."""
    out = []
    for i, piece in enumerate(BREAK_SPLIT.split(run)):
        if i > 0:
            out.append(["BREAK", -1.0])
        out.append([piece, 1.0])
    return out


def weight_close(text, i):
    """At a ':' (index i): `:` [+-]? [digits and dots]+ `)` -> (the number's text, the index after
    the ')'), else None. Digits are Unicode decimal digits, as Python's `\\d`."""
    j = i + 1
    if j < len(text) and text[j] in "+-":
        j += 1
    start = j
    while j < len(text) and (text[j] == "." or text[j].isdecimal()):
        j += 1
    if j == start or j >= len(text) or text[j] != ")":
        return None
    return text[i + 1:j], j + 1


def parse_attention(text):
    """A1111's `parse_prompt_attention`: [[text, weight], ...], weights as Python floats (f64)."""
    res = []
    rounds, squares = [], []

    def scale(start, multiplier):
        for entry in res[start:]:
            entry[1] *= multiplier

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 < len(text) and text[i + 1] in "()[]\\":
                res.append([text[i + 1], 1.0])  # an escaped character, literally
                i += 2
            else:
                res.append(["", 1.0])  # a lone backslash is dropped (but leaves an empty entry)
                i += 1
        elif c == "(":
            rounds.append(len(res))
            i += 1
        elif c == "[":
            squares.append(len(res))
            i += 1
        elif c == ":" and weight_close(text, i) is not None:
            number, end = weight_close(text, i)
            if rounds:
                scale(rounds.pop(), float(number))
            else:
                res.extend(split_break(text[i:end]))  # no '(' open: the text ":1.3)" itself
            i = end
        elif c == ")" and rounds:
            scale(rounds.pop(), ROUND_MULTIPLIER)
            i += 1
        elif c == "]" and squares:
            scale(squares.pop(), SQUARE_MULTIPLIER)
            i += 1
        elif c in ")]:":
            res.extend(split_break(c))  # unmatched closer, or a ':' that starts no weight
            i += 1
        else:
            j = i
            while j < len(text) and text[j] not in "\\()[]:":
                j += 1
            res.extend(split_break(text[i:j]))
            i = j
    for start in rounds:  # brackets left open apply to the end, '(' first, then '['
        scale(start, ROUND_MULTIPLIER)
    for start in squares:
        scale(start, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):  # merge neighbours of exactly equal weight
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


# ---------------------------------------------------------------- T5 text (ComfyUI-ELLA)

def paren_groups(text):
    """ComfyUI's parse_parentheses: the text cut into top-level pieces, each either plain text or
    a '(' ... ')' group (nesting counted; a ')' at depth 0 drives the depth negative and stays text)."""
    out, current, depth = [], "", 0
    for c in text:
        if c == "(":
            if depth == 0:
                if current:
                    out.append(current)
                current = "("
            else:
                current += c
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                out.append(current + ")")
                current = ""
            else:
                current += c
        else:
            current += c
    if current:
        out.append(current)
    return out


def strip_groups(text):
    out = []
    for piece in paren_groups(text):
        if len(piece) >= 2 and piece[0] == "(" and piece[-1] == ")":
            inner = piece[1:-1]
            colon = inner.rfind(":")
            if colon > 0:
                inner = inner[:colon]  # whatever follows the LAST ':' goes, number or not
            out += strip_groups(inner)
        else:
            out.append(piece)
    return out


def strip_for_t5(text):
    """ComfyUI-ELLA's `remove_weights`: the text T5 gets (only `\\(` `\\)` are escapes)."""
    text = text.replace("\\)", "\0\1").replace("\\(", "\0\2")
    return "".join(strip_groups(text)).replace("\0\1", ")").replace("\0\2", "(")


# ---------------------------------------------------------------- chunks (A1111)

def make_chunks(parsed, tokenizer, backtrack=COMMA_BACKTRACK):
    """A1111's `tokenize_line` (no textual-inversion embeddings): lists of 77 ids and 77 weights."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    comma = tokenizer.get_vocab().get(",</w>")
    texts = [text for text, _ in parsed]
    tokenized = tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]
    chunks = []
    ids, weights = [], []
    last_comma = -1

    def close():
        nonlocal ids, weights, last_comma
        pad = CHUNK_LENGTH - len(ids)
        chunks.append(([bos] + ids + [eos] * pad + [eos], [1.0] + weights + [1.0] * pad + [1.0]))
        ids, weights, last_comma = [], [], -1

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            close()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(ids)
            elif (backtrack != 0 and len(ids) == CHUNK_LENGTH and last_comma != -1
                  and len(ids) - last_comma <= backtrack):
                # The chunk is full and a comma is near its end: what follows the comma moves on.
                moved_ids, moved_weights = ids[last_comma + 1:], weights[last_comma + 1:]
                ids, weights = ids[:last_comma + 1], weights[:last_comma + 1]
                close()
                ids, weights = moved_ids, moved_weights
            if len(ids) == CHUNK_LENGTH:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


# ---------------------------------------------------------------- encoding

def encode_chunk(model, ids, clip_skip):
    """One chunk through CLIP, with A1111's "Clip skip" N (1 = the last layer)."""
    with torch.no_grad():
        if clip_skip > 1:
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True)
            return model.final_layer_norm(out.hidden_states[-clip_skip])
        return model(input_ids=torch.tensor([ids])).last_hidden_state


def emphasis(z, weights):
    """A1111's "Original" emphasis: scale each token's state by its weight (f32), then restore
    the chunk's mean."""
    w = torch.tensor([weights], dtype=torch.float32)  # f64 weights rounded to f32
    original_mean = z.mean()
    z = z * w.reshape(w.shape + (1,)).expand(z.shape)
    new_mean = z.mean()
    return z * (original_mean / new_mean)


def weighted_states(model, chunks, clip_skip):
    raw = [encode_chunk(model, ids, clip_skip) for ids, _ in chunks]
    weighted = [emphasis(z, w) for z, (_, w) in zip(raw, chunks)]
    return torch.cat(weighted, dim=1), torch.cat(raw, dim=1)


# ---------------------------------------------------------------- cases

def words(n, start=0):
    """n one-token words of the tiny vocabulary."""
    vocab = ["the", "red", "hat", "and", "book", "a"]
    return " ".join(vocab[(start + i) % len(vocab)] for i in range(n))


CASES = {
    "plain": ("a red book on the table", 1, None),
    "emphasis": ("a (red) book", 1, None),
    "weight": ("a (red book:1.3) on the table", 1, None),
    "deemphasis": ("a [red] book and [[the other hat]]", 1, None),
    "nesting": ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", 1, None),
    "nesting_mixed": ("[(red:1.5) book] ([hat]) ((a [b (c:0.8)])) (unnecessary)(parens) a(red)book", 1, None),
    "weight_forms": ("(a:.5) (b:2.) (c:+1.25) (d:-0.5) (e: 1.2) (f:1.2 ) (g:x) (h:1:2) (i:1e2)", 1, None),
    "escapes": ("\\(literal\\] and \\\\ back\\slash \\[x\\) (y\\)) a\\b (z)\\", 1, None),
    "unbalanced_open": ("a (red [book (hat:1.2) and", 1, None),
    "unbalanced_close": ("a red) book] the :1.3) (other:1.2)) hat (x) (y)", 1, None),
    "colons": ("time: 12:30, ratio 16:9 (a: b) :", 1, None),
    "break": ("a red book BREAK the other hat, breakfast BREAKfast break", 1, None),
    "break_edges": ("BREAK the red hat BREAK\n\tBREAK a book BREAK", 1, None),
    "break_in_parens": ("a (red BREAK book) hat", 1, "A1111 quirk: the closing ')' also multiplies the "
                        "BREAK marker (-1 -> -1.1), so it is no longer a break: the word 'BREAK' is "
                        "encoded as text with weight -1.1"),
    "empty": ("", 1, None),
    "only_brackets": ("(([]", 1, None),
    "long_backtrack": (", ".join(f"{words(7, k)}" for k in range(9)) + ", a (red book:1.2) and "
                       + ", ".join(f"[{words(6, k)}]" for k in range(12)), 1, None),
    "long_no_comma": (words(80), 1, None),
    "long_comma_20": (words(55) + ", " + words(25), 1, "comma at index 55 of the full chunk: 75 - 55 = 20 <= 20, backtrack"),
    "long_comma_21": (words(54) + ", " + words(26), 1, "comma at index 54: 75 - 54 = 21 > 20, no backtrack"),
    "long_comma_at_75": (words(75) + ", " + words(3), 1, "the 76th token is a comma: it opens chunk 2 (no backtrack)"),
    "exact_75": (words(75), 1, "75 tokens: one chunk"),
    "exact_75_break": (words(75) + " BREAK the red hat", 1, "a full chunk then BREAK: no empty chunk between"),
    "clip_skip2_weights": ("a (red:1.3) [book] on the ((other)) hat", 2, None),
    "clip_skip2_long": (words(70) + ", (" + words(20) + ":0.7)", 2, None),
}

# The prompt tokens in each chunk (between BOS and the first EOS), as the long cases are built.
EXPECTED_CHUNK_TOKENS = {
    "long_backtrack": [72, 74, 13],
    "long_no_comma": [75, 5],
    "long_comma_20": [56, 25],
    "long_comma_21": [75, 6],
    "long_comma_at_75": [75, 4],
    "exact_75": [75],
    "exact_75_break": [75, 3],
    "clip_skip2_long": [71, 20],
    "break_edges": [0, 3, 0, 2],
    "empty": [0],
}

# Prompts for diffusers' encode_prompt with clip_skip (no weighting: diffusers reads the syntax
# as plain text).
CLIP_SKIP_PROMPTS = {
    "short": "a red book on the table",
    "other": "the other hat, and the red book",
}


def load_clip(out):
    sd = out / "sd"
    model = CLIPTextModel.from_pretrained(str(sd / "text_encoder")).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(sd / "tokenizer"))
    return model, tokenizer


def clip_skip_runs(out, model, tokenizer):
    """diffusers' StableDiffusionPipeline.encode_prompt with clip_skip None, 1 and 2 (the tiny CLIP
    has 2 layers: clip_skip 2 takes hidden_states[-3], the embeddings' output)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=None, text_encoder=model, tokenizer=tokenizer, unet=None, scheduler=None,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # diffusers 0.42.1 reads `text_encoder.text_model.final_layer_norm` for clip_skip, but
    # transformers 5's CLIPTextModel has no `text_model` (final_layer_norm is on the model itself):
    # without this alias encode_prompt(clip_skip=k) raises AttributeError.
    aliased = not hasattr(model, "text_model")
    if aliased:
        object.__setattr__(model, "text_model", model)
    tensors, runs = {}, {}
    for name, prompt in CLIP_SKIP_PROMPTS.items():
        ids = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        tensors[f"{name}.input_ids"] = torch.tensor([ids], dtype=torch.int32)
        keys = {}
        for skip in [None, 1, 2]:
            with torch.no_grad():
                embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False, clip_skip=skip)
            key = f"{name}.skip_{'none' if skip is None else skip}"
            tensors[key] = embeds.contiguous()
            keys["none" if skip is None else str(skip)] = key
            # The same as A1111's chunk encoding with Clip skip N = clip_skip + 1.
            a1111 = encode_chunk(model, ids, 1 if skip is None else skip + 1)
            assert torch.equal(a1111, embeds), (name, skip)
        runs[name] = {"prompt": prompt, "input_ids_key": f"{name}.input_ids", "keys": keys,
                      "a1111_clip_skip": {"none": 1, "1": 2, "2": 3}}
    if aliased:
        object.__delattr__(model, "text_model")
    save_file(tensors, str(out / "reference" / "clip_skip.safetensors"))
    return runs


def compact_json(data):
    """JSON with every list of numbers, and every [text, weight] pair, on one line."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s+([-0-9.,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
    return re.sub(r'\[\s+("(?:[^"\\]|\\.)*"),\s+(-?[0-9.e+-]+)\s+\]', r"[\1, \2]", text)


def make_prompt_weighting(out):
    model, tokenizer = load_clip(out)
    tensors, cases = {}, {}
    for name, (prompt, clip_skip, note) in CASES.items():
        parsed = parse_attention(prompt)
        chunks = make_chunks(parsed, tokenizer)
        if name in EXPECTED_CHUNK_TOKENS:
            counts = [ids[1:].index(tokenizer.eos_token_id) for ids, _ in chunks]
            assert counts == EXPECTED_CHUNK_TOKENS[name], (name, counts)
        hidden, raw = weighted_states(model, chunks, clip_skip)
        tensors[f"{name}.hidden"] = hidden.contiguous()
        weighted = any(w != 1.0 for _, ws in chunks for w in ws)
        if weighted:
            tensors[f"{name}.unweighted"] = raw.contiguous()
        else:
            assert torch.equal(hidden, raw), name  # all weights 1: the mean ratio is exactly 1
        cases[name] = {
            "prompt": prompt,
            "clip_skip": clip_skip,
            "parsed": parsed,
            "chunks": [{"ids": ids, "weights": w} for ids, w in chunks],
            "t5_text": strip_for_t5(prompt),
            "key": f"{name}.hidden",
            # Without weights other than 1 the two are the same tensor (bit for bit).
            "unweighted_key": f"{name}.unweighted" if weighted else f"{name}.hidden",
            **({"note": note} if note else {}),
        }
    runs = clip_skip_runs(out, model, tokenizer)
    data = {
        "settings": {
            "chunk_length": CHUNK_LENGTH, "comma_padding_backtrack": COMMA_BACKTRACK, "emphasis": "Original",
            "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.eos_token_id,
            "comma": tokenizer.get_vocab()[",</w>"],
            "clip_skip": "A1111's Clip skip N: N = 1 is the last layer; diffusers' clip_skip = N - 1",
        },
        "cases": cases,
        "clip_skip": runs,
    }
    (out / "reference" / "prompt_weighting.json").write_text(compact_json(data) + "\n")
    save_file(tensors, str(out / "reference" / "prompt_weighting.safetensors"))
