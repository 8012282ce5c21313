#!/usr/bin/env python3
"""Converts an official SUR-adapter checkpoint (a pickled `state_dict`, `adapter_checkpoint*.pt`)
to safetensors, which is all ella reads (it never unpickles):

    python3 scripts/sur_adapter_to_safetensors.py adapter_checkpoint1000.pt sur-adapter.safetensors

Needs torch and safetensors (scripts/requirements.txt). The tensors keep their names; the
adapter weight is not in the checkpoint (the official demo reads it from the folder name,
`...adapterw0.1/...`): pass it to ella per request (default 0.1).
"""

import sys

import torch
from safetensors.torch import save_file


def convert(source, target):
    # weights_only: tensors and plain containers only, no arbitrary code from the pickle.
    state = torch.load(source, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    tensors = {k.removeprefix("module."): v.contiguous() for k, v in state.items() if torch.is_tensor(v)}
    if "fc.weight" not in tensors:
        raise SystemExit(f"{source}: no `fc.weight`; not a SUR-adapter checkpoint")
    save_file(tensors, target, metadata={"format": "pt"})
    return tensors


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    tensors = convert(sys.argv[1], sys.argv[2])
    print(f"wrote {sys.argv[2]}: {len(tensors)} tensors, width {tensors['fc.weight'].shape[0]}")
