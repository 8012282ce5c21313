"""SUR-adapter's `Adapter` (Qrange-group/SUR-adapter, `SUR_adapter.py`) in PyTorch, written from
the module description in ella-spec.md section 6, with the official parameter names so that
`state_dict()` has the layout of the official checkpoints. Used only to make test fixtures.

The official encoder is an `nn.TransformerEncoder` built with PyTorch's default
`batch_first=False`; the pipeline feeds it `[batch, 77, width]` CLIP states, which it therefore
reads as a sequence of `batch` items of 77 "batch" entries: at each token position, the prompts
of the batch attend to each other (with classifier-free guidance: the negative and the positive
prompt). `forward` reproduces that; `per_token=True` runs each prompt alone, as in training
(batch size 1: a sequence of length 1).
"""

import math

import torch
from torch import nn


class Attention(nn.Module):
    """Single-head attention whose values are the raw CLIP features: `W = softmax(QKᵀ/√d)·x + x`,
    `A = output_layer(W) + W`. `value_layer` is in the checkpoint but unused."""

    def __init__(self, width):
        super().__init__()
        self.width = width
        self.query_layer = nn.Linear(width, width)
        self.key_layer = nn.Linear(width, width)
        self.value_layer = nn.Linear(width, width)
        self.output_layer = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))

    def forward(self, query, x):
        q, k = self.query_layer(query), self.key_layer(x)
        scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.width), dim=-1)
        w = scores @ x + x
        return self.output_layer(w) + w


class Adapter(nn.Module):
    def __init__(self, depth=2, adapter_weight=0.1, sd_text_size=768, heads=8, ff=2048):
        super().__init__()
        self.adapter_weight = adapter_weight
        # The template layer: copied into the encoder, and kept (unused) in the state dict.
        self.encoder_layer = nn.TransformerEncoderLayer(d_model=sd_text_size, nhead=heads, dim_feedforward=ff)
        self.transformer_encoder = nn.TransformerEncoder(self.encoder_layer, num_layers=depth,
                                                         enable_nested_tensor=False)
        self.attention = Attention(sd_text_size)
        self.fc = nn.Linear(sd_text_size, sd_text_size)

    def forward(self, x, per_token=False):
        if per_token:
            # Each prompt alone, each token a sequence of length 1 (sequence axis first).
            t = self.transformer_encoder(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)
        else:
            t = self.transformer_encoder(x)  # [B, 77, d] read as (seq B, batch 77)
        a = self.attention(t, x)
        return self.adapter_weight * self.fc(a) + (1 - self.adapter_weight) * x, t, self.fc(a)
