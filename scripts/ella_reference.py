"""ELLA's Timestep-Aware Semantic Connector (TSC) in PyTorch, written from the paper
(arXiv 2403.05135) and the official module description (ella-spec.md, section 3), with the
official parameter names so that `state_dict()` has the layout of
`ella-sd1.5-tsc-t5xl.safetensors`. Used only to make test fixtures and benchmarks.
"""

import math
from collections import OrderedDict

import torch
from torch import nn


def timestep_features(timesteps, channels, flip_sin_to_cos=True, downscale_freq_shift=0.0):
    """diffusers' get_timestep_embedding: [B] -> [B, channels], computed in f32."""
    half = channels // 2
    exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32, device=timesteps.device)
    exponent = exponent / (half - downscale_freq_shift)
    freqs = torch.exp(exponent)
    args = timesteps[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if channels % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels, time_embed_dim, out_dim=None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, out_dim or time_embed_dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, modulated by the timestep: first half shift, second half scale."""

    def __init__(self, embedding_dim, time_embedding_dim):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(time_embedding_dim, 2 * embedding_dim)
        self.norm = nn.LayerNorm(embedding_dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x, temb):
        emb = self.linear(self.silu(temb))
        shift, scale = emb.view(len(x), 1, -1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class SquaredReLU(nn.Module):
    def forward(self, x):
        return torch.square(torch.relu(x))


class PerceiverAttentionBlock(nn.Module):
    def __init__(self, d_model, n_heads, time_embedding_dim):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(d_model, d_model * 4)),
                    ("sq_relu", SquaredReLU()),
                    ("c_proj", nn.Linear(d_model * 4, d_model)),
                ]
            )
        )
        self.ln_1 = AdaLayerNorm(d_model, time_embedding_dim)
        self.ln_2 = AdaLayerNorm(d_model, time_embedding_dim)
        self.ln_ff = AdaLayerNorm(d_model, time_embedding_dim)

    def forward(self, x, latents, temb):
        normed = self.ln_1(latents, temb)
        kv = torch.cat([normed, self.ln_2(x, temb)], dim=1)
        latents = latents + self.attn(normed, kv, kv, need_weights=False)[0]
        return latents + self.mlp(self.ln_ff(latents, temb))


class PerceiverResampler(nn.Module):
    def __init__(self, width, layers, heads, num_latents, input_dim, time_embedding_dim, output_dim=None):
        super().__init__()
        self.latents = nn.Parameter(width**-0.5 * torch.randn(num_latents, width))
        self.time_aware_linear = nn.Linear(time_embedding_dim, width)
        self.proj_in = nn.Linear(input_dim, width)
        self.perceiver_blocks = nn.Sequential(
            *[PerceiverAttentionBlock(width, heads, time_embedding_dim) for _ in range(layers)]
        )
        self.output_dim = output_dim
        if output_dim is not None:
            self.proj_out = nn.Sequential(nn.Linear(width, output_dim), nn.LayerNorm(output_dim))

    def forward(self, x, temb):
        latents = self.latents.unsqueeze(0).repeat(len(x), 1, 1)
        latents = latents + self.time_aware_linear(nn.functional.silu(temb))
        x = self.proj_in(x)
        for block in self.perceiver_blocks:
            latents = block(x, latents, temb)
        if self.output_dim is not None:
            latents = self.proj_out(latents)
        return latents


class ELLA(nn.Module):
    """Defaults are the official SD1.5 connector (66.8 M parameters)."""

    def __init__(
        self,
        time_channel=320,
        time_embed_dim=768,
        width=768,
        layers=6,
        heads=8,
        num_latents=64,
        input_dim=2048,
        output_dim=None,
    ):
        super().__init__()
        self.time_channel = time_channel
        self.time_embedding = TimestepEmbedding(time_channel, time_embed_dim)
        self.connector = PerceiverResampler(
            width, layers, heads, num_latents, input_dim, time_embed_dim, output_dim
        )

    def forward(self, text_states, timesteps):
        """text_states [B, L, input_dim]; timesteps: a number or [B] values."""
        timesteps = torch.as_tensor(timesteps, dtype=torch.float32).reshape(-1)
        features = timestep_features(timesteps, self.time_channel).to(text_states.dtype)
        features = features.unsqueeze(1).expand(len(text_states), -1, -1)
        temb = self.time_embedding(features)
        return self.connector(text_states, temb)
