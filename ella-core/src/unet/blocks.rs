//! The building blocks of diffusers' SD1.5 U-Net (also the ControlNet's):
//! `Transformer2DModel` with its `BasicTransformerBlock`s, and the down, mid and up blocks
//! (diffusers' `unet_2d_blocks.py`). The resnets and attention they share with the VAE are
//! in [`crate::resnet`] and [`crate::attention`].

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::gelu;

use crate::attention::Attention;
use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, LayerNorm, Linear, resize_nearest};
use crate::resnet::{ResnetBlock2D, ResnetSettings};
use crate::weights::Loader;

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
    fn load(vb: &Loader<B>, dim: usize, cross_dim: usize, heads: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), dim, 1e-5)?,
            attn1: Attention::load(&vb.pp("attn1"), [dim, dim], heads, false)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), dim, 1e-5)?,
            attn2: Attention::load(&vb.pp("attn2"), [dim, cross_dim], heads, false)?,
            norm3: LayerNorm::load(&vb.pp("norm3"), dim, 1e-5)?,
            ff_proj: Linear::load(&vb.pp("ff.net.0.proj"), dim, 2 * inner, true)?,
            ff_out: Linear::load(&vb.pp("ff.net.2"), inner, dim, true)?,
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
    fn load(vb: &Loader<B>, channels: usize, linear: bool) -> Result<Self> {
        Ok(match linear {
            true => Projection::Linear(Linear::load(vb, channels, channels, true)?),
            false => Projection::Conv(Conv2d::load(vb, [channels, channels], 1, 1, 0)?),
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
    pub fn load(vb: &Loader<B>, channels: usize, s: TransformerSettings) -> Result<Self> {
        Ok(Self {
            norm: GroupNorm::load(&vb.pp("norm"), s.groups, channels, 1e-6)?,
            proj_in: Projection::load(&vb.pp("proj_in"), channels, s.linear_projection)?,
            transformer_blocks: (0..s.layers)
                .map(|k| {
                    let block = vb.pp("transformer_blocks").pp(k);
                    BasicTransformerBlock::load(&block, channels, s.cross_attention_dim, s.heads)
                })
                .collect::<Result<_>>()?,
            proj_out: Projection::load(&vb.pp("proj_out"), channels, s.linear_projection)?,
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

/// What a down or up block is made of.
#[derive(Debug, Clone, Copy)]
pub struct BlockSettings {
    /// Resnets in the block.
    pub layers: usize,
    pub resnet: ResnetSettings,
    /// A transformer after each resnet (`CrossAttn…Block2D`), or none.
    pub transformer: Option<TransformerSettings>,
    /// Whether the block ends with a down- or upsampler (all but the last).
    pub resample: bool,
}

crate::nn::seamless_fields!(DownBlock {
    resnets,
    downsampler
});

impl<B: Backend> DownBlock<B> {
    /// `channels` = `[in, out]`; the downsampler is a stride-2 conv with `padding`.
    pub fn load(
        vb: &Loader<B>,
        channels: [usize; 2],
        s: BlockSettings,
        padding: usize,
    ) -> Result<Self> {
        let [c_in, c_out] = channels;
        let mut resnets = Vec::with_capacity(s.layers);
        let mut attentions = Vec::new();
        for j in 0..s.layers {
            let width_in = if j == 0 { c_in } else { c_out };
            let resnet = vb.pp("resnets").pp(j);
            resnets.push(ResnetBlock2D::load(&resnet, [width_in, c_out], s.resnet)?);
            if let Some(transformer) = s.transformer {
                let attention = vb.pp("attentions").pp(j);
                attentions.push(Transformer2DModel::load(&attention, c_out, transformer)?);
            }
        }
        let downsampler = match s.resample {
            true => {
                let conv = vb.pp("downsamplers.0.conv");
                Some(Conv2d::load(&conv, [c_out, c_out], 3, 2, padding)?)
            }
            false => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

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

crate::nn::seamless_fields!(MidBlock { resnets });

impl<B: Backend> MidBlock<B> {
    pub fn load(
        vb: &Loader<B>,
        channels: usize,
        resnet: ResnetSettings,
        transformer: TransformerSettings,
    ) -> Result<Self> {
        let resnet_at =
            |j: usize| ResnetBlock2D::load(&vb.pp("resnets").pp(j), [channels; 2], resnet);
        let attention = vb.pp("attentions.0");
        Ok(Self {
            resnets: vec![resnet_at(0)?, resnet_at(1)?],
            attentions: vec![Transformer2DModel::load(&attention, channels, transformer)?],
        })
    }

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

crate::nn::seamless_fields!(UpBlock { resnets, upsampler });

impl<B: Backend> UpBlock<B> {
    /// `channels` = `[previous block's output, this block's output, the mirrored down
    /// block's input]`: each resnet reads its input concatenated with one skip connection,
    /// the last one the down block's input.
    pub fn load(vb: &Loader<B>, channels: [usize; 3], s: BlockSettings) -> Result<Self> {
        let [prev_output, c_out, c_in] = channels;
        let mut resnets = Vec::with_capacity(s.layers);
        let mut attentions = Vec::new();
        for j in 0..s.layers {
            let skip = if j + 1 == s.layers { c_in } else { c_out };
            let width_in = if j == 0 { prev_output } else { c_out };
            let resnet = vb.pp("resnets").pp(j);
            resnets.push(ResnetBlock2D::load(
                &resnet,
                [width_in + skip, c_out],
                s.resnet,
            )?);
            if let Some(transformer) = s.transformer {
                let attention = vb.pp("attentions").pp(j);
                attentions.push(Transformer2DModel::load(&attention, c_out, transformer)?);
            }
        }
        let upsampler = match s.resample {
            true => {
                let conv = vb.pp("upsamplers.0.conv");
                Some(Conv2d::load(&conv, [c_out, c_out], 3, 1, 1)?)
            }
            false => None,
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

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
