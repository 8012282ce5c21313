#!/usr/bin/env python3
"""Converts a PyTorch pickle checkpoint (.pth / .ckpt / .pt / .bin) to .safetensors.
ella reads safetensors only; this is the one step for weights shipped as pickles.

Usage: python3 scripts/pth_to_safetensors.py MODEL.pth [OUT.safetensors] [--force]

  (needs `pip install torch safetensors`; OUT defaults to MODEL.safetensors next to the input)

The file is read with `torch.load(..., weights_only=True)`: plain tensors and containers only, no
code from the pickle runs. A top-level `state_dict` entry (Lightning / LDM `.ckpt` files) is
unwrapped, as often as it nests. Names and dtypes are kept as they are (an F16 file stays F16).
Every value must be a tensor: anything else (a step counter, an optimizer state, a nested dict)
is refused with its name, rather than silently dropped.
"""

import argparse
import pickle
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def load_tensors(path):
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        sys.exit(f"{path}: not loadable with weights_only=True (the pickle holds more than tensors): {e}")
    while isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict):
        sys.exit(f"{path}: holds a {type(data).__name__}, not a dict of named tensors")
    bad = [f"{k} ({type(v).__name__})" for k, v in data.items() if not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(bad[:10]) + (f", ... ({len(bad)} in all)" if len(bad) > 10 else "")
        sys.exit(f"{path}: these entries are not tensors, so this is not a plain weights file: {shown}")
    return data


def to_safetensors(tensors):
    """Contiguous tensors, each with storage of its own (safetensors refuses shared memory)."""
    out, seen = {}, set()
    for name, t in tensors.items():
        storage = t.untyped_storage()
        shared = storage.data_ptr() in seen or storage.nbytes() != t.nbytes or not t.is_contiguous()
        seen.add(storage.data_ptr())
        out[str(name)] = t.detach().clone(memory_format=torch.contiguous_format) if shared else t.detach()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path, nargs="?")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    args = parser.parse_args()
    output = args.output or args.input.with_suffix(".safetensors")
    if output.exists() and not args.force:
        sys.exit(f"{output} exists (pass --force to overwrite)")
    tensors = to_safetensors(load_tensors(args.input))
    save_file(tensors, str(output), metadata={"format": "pt"})
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    print(f"{output}: {len(tensors)} tensors ({', '.join(dtypes)})")


if __name__ == "__main__":
    main()
