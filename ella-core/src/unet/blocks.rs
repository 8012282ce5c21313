//! The building blocks of diffusers' SD1.5 U-Net (also used by the VAE): `ResnetBlock2D`,
//! `Transformer2DModel` with its `BasicTransformerBlock`s, and the down, mid and up blocks.

use crate::backend::Backend;
use crate::nn::Linear;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::{gelu, silu};

use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, LayerNorm, multi_head_attention, resize_nearest};
use crate::weights::Loader;

/// `ResnetBlock2D`: two GroupNorm-SiLU-conv layers, the timestep embedding added in
/// between (when there is one: the VAE has none), and a residual (1×1 conv when the width
/// changes), divided by `output_scale_factor`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub time_emb_proj: Option<Linear<B>>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    pub conv_shortcut: Option<Conv2d<B>>,
    #[module(skip)]
    pub output_scale_factor: f64,
}

/// Sizes shared by the resnets of a model.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    /// Width of the timestep embedding, `None` for the VAE.
    pub temb_channels: Option<usize>,
    pub output_scale_factor: f64,
}

impl<B: Backend> ResnetBlock2D<B> {
    pub fn load(
        load: &Loader<B>,
        prefix: &str,
        channels: [usize; 2],
        s: ResnetSettings,
    ) -> Result<Self> {
        let [c_in, c_out] = channels;
        Ok(Self {
            norm1: load.group_norm(&format!("{prefix}.norm1"), s.groups, c_in, s.eps)?,
            conv1: load.conv2d(&format!("{prefix}.conv1"), [c_in, c_out], 3, 1, 1)?,
            time_emb_proj: match s.temb_channels {
                Some(t) => Some(load.linear(&format!("{prefix}.time_emb_proj"), t, c_out, true)?),
                None => None,
            },
            norm2: load.group_norm(&format!("{prefix}.norm2"), s.groups, c_out, s.eps)?,
            conv2: load.conv2d(&format!("{prefix}.conv2"), [c_out, c_out], 3, 1, 1)?,
            conv_shortcut: match c_in != c_out {
                true => {
                    Some(load.conv2d(&format!("{prefix}.conv_shortcut"), [c_in, c_out], 1, 1, 0)?)
                }
                false => None,
            },
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `temb` is the SiLU-activated timestep embedding `[batch, temb_channels]`.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => h + proj.forward(temb.clone()).unsqueeze_dims::<4>(&[2, 3]),
            _ => h,
        };
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}

/// diffusers' `Attention` as the U-Net uses it: `to_q`, `to_k`, `to_v` (no bias) and
/// `to_out.0`; self-attention when there is no context.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Linear<B>,
    #[module(skip)]
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `dims` = `[query width, context width]`; `bias` for the q/k/v projections.
    pub fn load(
        load: &Loader<B>,
        prefix: &str,
        dims: [usize; 2],
        heads: usize,
        bias: bool,
    ) -> Result<Self> {
        let [query, context] = dims;
        Ok(Self {
            to_q: load.linear(&format!("{prefix}.to_q"), query, query, bias)?,
            to_k: load.linear(&format!("{prefix}.to_k"), context, query, bias)?,
            to_v: load.linear(&format!("{prefix}.to_v"), context, query, bias)?,
            to_out: load.linear(&format!("{prefix}.to_out.0"), query, query, true)?,
            heads,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| x.clone());
        let out = multi_head_attention(
            self.to_q.forward(x),
            self.to_k.forward(context.clone()),
            self.to_v.forward(context),
            self.heads,
            None,
            None,
            None,
        );
        self.to_out.forward(out)
    }
}

/// `BasicTransformerBlock`: self-attention, cross-attention to the condition tokens, and a
/// GEGLU feed-forward, each pre-LayerNorm with a residual.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn1: Attention<B>,
    pub norm2: LayerNorm<B>,
    pub attn2: Attention<B>,
    pub norm3: LayerNorm<B>,
    /// `ff.net.0.proj`: to twice the inner width (value and GELU gate).
    pub ff_proj: Linear<B>,
    /// `ff.net.2`.
    pub ff_out: Linear<B>,
}

impl<B: Backend> BasicTransformerBlock<B> {
    fn load(
        load: &Loader<B>,
        prefix: &str,
        dim: usize,
        cross_dim: usize,
        heads: usize,
    ) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            norm1: load.layer_norm(&format!("{prefix}.norm1"), dim, 1e-5)?,
            attn1: Attention::load(load, &format!("{prefix}.attn1"), [dim, dim], heads, false)?,
            norm2: load.layer_norm(&format!("{prefix}.norm2"), dim, 1e-5)?,
            attn2: Attention::load(
                load,
                &format!("{prefix}.attn2"),
                [dim, cross_dim],
                heads,
                false,
            )?,
            norm3: load.layer_norm(&format!("{prefix}.norm3"), dim, 1e-5)?,
            ff_proj: load.linear(&format!("{prefix}.ff.net.0.proj"), dim, 2 * inner, true)?,
            ff_out: load.linear(&format!("{prefix}.ff.net.2"), inner, dim, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>, context: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn1.forward(self.norm1.forward(x), None);
        let x = x.clone() + self.attn2.forward(self.norm2.forward(x), Some(context));
        let projected = self.ff_proj.forward(self.norm3.forward(x.clone()));
        let inner = projected.dims()[2] / 2;
        let value = projected.clone().narrow(2, 0, inner);
        let gate = projected.narrow(2, inner, inner);
        x + self.ff_out.forward(value * gelu(gate))
    }
}

/// `proj_in` / `proj_out` of a `Transformer2DModel`: a 1×1 conv (SD1.5) or a linear
/// (`use_linear_projection`, SD2-style fine-tunes).
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    Conv(Conv2d<B>),
    Linear(Linear<B>),
}

impl<B: Backend> Projection<B> {
    fn load(load: &Loader<B>, prefix: &str, channels: usize, linear: bool) -> Result<Self> {
        Ok(match linear {
            true => Projection::Linear(load.linear(prefix, channels, channels, true)?),
            false => Projection::Conv(load.conv2d(prefix, [channels, channels], 1, 1, 0)?),
        })
    }
}

/// `Transformer2DModel`: GroupNorm, project in, transformer blocks on the `h·w` tokens,
/// project out, residual.
#[derive(Module, Debug)]
pub struct Transformer2DModel<B: Backend> {
    pub norm: GroupNorm<B>,
    pub proj_in: Projection<B>,
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    pub proj_out: Projection<B>,
}

/// Sizes of one block's transformers.
#[derive(Debug, Clone, Copy)]
pub struct TransformerSettings {
    pub heads: usize,
    pub cross_attention_dim: usize,
    pub layers: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl<B: Backend> Transformer2DModel<B> {
    pub fn load(
        load: &Loader<B>,
        prefix: &str,
        channels: usize,
        s: TransformerSettings,
    ) -> Result<Self> {
        Ok(Self {
            norm: load.group_norm(&format!("{prefix}.norm"), s.groups, channels, 1e-6)?,
            proj_in: Projection::load(
                load,
                &format!("{prefix}.proj_in"),
                channels,
                s.linear_projection,
            )?,
            transformer_blocks: (0..s.layers)
                .map(|k| {
                    BasicTransformerBlock::load(
                        load,
                        &format!("{prefix}.transformer_blocks.{k}"),
                        channels,
                        s.cross_attention_dim,
                        s.heads,
                    )
                })
                .collect::<Result<_>>()?,
            proj_out: Projection::load(
                load,
                &format!("{prefix}.proj_out"),
                channels,
                s.linear_projection,
            )?,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>, context: &Tensor<B, 3>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = x.dims();
        let to_tokens = |x: Tensor<B, 4>| {
            x.permute([0, 2, 3, 1])
                .reshape([batch, height * width, channels])
        };
        let to_image = |x: Tensor<B, 3>| {
            x.reshape([batch, height, width, channels])
                .permute([0, 3, 1, 2])
        };
        let normed = self.norm.forward(x.clone());
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(normed)),
            Projection::Linear(linear) => linear.forward(to_tokens(normed)),
        };
        for block in &self.transformer_blocks {
            tokens = block.forward(tokens, context.clone());
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(to_image(tokens)),
            Projection::Linear(linear) => to_image(linear.forward(tokens)),
        };
        out + x
    }
}

/// A down block: resnets (each followed by a transformer in `CrossAttnDownBlock2D`), then
/// a stride-2 conv unless it is the last block.
#[derive(Module, Debug)]
pub struct DownBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
    pub downsampler: Option<Conv2d<B>>,
}

impl<B: Backend> DownBlock<B> {
    /// Returns the block's output and the states it hands to the up path's skip connections.
    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(x, Some(temb));
            if let Some(attention) = self.attentions.get(j) {
                x = attention.forward(x, context);
            }
            skips.push(x.clone());
        }
        if let Some(downsampler) = &self.downsampler {
            x = downsampler.forward(x);
            skips.push(x.clone());
        }
        x
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet) pairs.
#[derive(Module, Debug)]
pub struct MidBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
}

impl<B: Backend> MidBlock<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
    ) -> Tensor<B, 4> {
        let mut x = self.resnets[0].forward(x, Some(temb));
        for (attention, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            x = resnet.forward(attention.forward(x, context), Some(temb));
        }
        x
    }
}

/// An up block: resnets on the input concatenated with the matching skip connection (each
/// followed by a transformer in `CrossAttnUpBlock2D`), then a nearest 2× upsample and conv
/// unless it is the last block.
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attentions: Vec<Transformer2DModel<B>>,
    pub upsampler: Option<Conv2d<B>>,
}

impl<B: Backend> UpBlock<B> {
    /// `upsample_size`: the size to upsample to when the latent size is not a multiple of
    /// the U-Net's downsampling (diffusers resizes to the next skip connection's size).
    pub fn forward(
        &self,
        mut x: Tensor<B, 4>,
        temb: &Tensor<B, 2>,
        context: &Tensor<B, 3>,
        skips: &mut Vec<Tensor<B, 4>>,
        upsample_size: Option<[usize; 2]>,
    ) -> Tensor<B, 4> {
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips
                .pop()
                .expect("the down path leaves one skip per up resnet");
            x = resnet.forward(Tensor::cat(vec![x, skip], 1), Some(temb));
            if let Some(attention) = self.attentions.get(j) {
                x = attention.forward(x, context);
            }
        }
        if let Some(upsampler) = &self.upsampler {
            let [_, _, height, width] = x.dims();
            x = upsampler.forward(resize_nearest(
                x,
                upsample_size.unwrap_or([2 * height, 2 * width]),
            ));
        }
        x
    }
}
