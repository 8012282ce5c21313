//! `UNet2DConditionModel` (SD1.5): noisy latents, timestep and condition tokens in,
//! predicted noise out. The condition tokens may be any number: ELLA's 64, CLIP's 77, or
//! both concatenated.

use std::path::Path;

use crate::backend::Backend;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor};

use super::blocks::{BlockSettings, DownBlock, MidBlock, TransformerSettings, UpBlock};
use super::config::{DownBlockType, UNetConfig, UpBlockType};
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, TimestepEmbedding, timestep_features};
use crate::resnet::ResnetSettings;
use crate::weights::{Checkpoint, Loader, WeightIndex, check_config, load_checked};

#[derive(Module, Debug)]
pub struct UNet2DConditionModel<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub time_embedding: TimestepEmbedding<B>,
    pub down_blocks: Vec<DownBlock<B>>,
    pub mid_block: MidBlock<B>,
    pub up_blocks: Vec<UpBlock<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
    #[module(skip)]
    pub config: UNetConfig,
    /// Where each linear and convolution weight came from (for LoRA).
    #[module(skip)]
    pub weights: WeightIndex,
}

crate::nn::seamless_fields!(UNet2DConditionModel {
    conv_in,
    down_blocks,
    mid_block,
    up_blocks,
    conv_out
});

impl<B: Backend> UNet2DConditionModel<B> {
    /// Loads a diffusers `unet/` folder (`config.json`, `diffusion_pytorch_model.safetensors`
    /// or its sharded index) with weights converted to `dtype`.
    pub fn load(folder: impl AsRef<Path>, device: &B::Device, dtype: DType) -> Result<Self> {
        let folder = folder.as_ref();
        let config = UNetConfig::from_file(&folder.join("config.json"))?;
        let checkpoint = Checkpoint::open(folder)?;
        Self::from_checkpoint(config, &checkpoint, device, dtype)
    }

    /// Builds the U-Net from an opened checkpoint, checking every tensor against `config`.
    pub fn from_checkpoint(
        config: UNetConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        check_config(config.validate(), checkpoint.path())?;
        let (mut unet, weights) = load_checked(
            checkpoint,
            device,
            dtype,
            |_| false,
            |vb| Self::from_loader(vb, &config),
        )?;
        unet.weights = weights;
        Ok(unet)
    }

    /// Builds the U-Net of a validated `config` from `vb` (diffusers' names).
    pub fn from_loader(vb: &Loader<B>, config: &UNetConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let n = channels.len();
        let DownPath {
            conv_in,
            time_embedding,
            down_blocks,
            mid_block,
        } = load_down_path(vb, config)?;
        let (resnet, transformer) = block_settings(config);
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev_output = channels[n - 1];
        for i in 0..n {
            // Up block i mirrors down block n-1-i.
            let level = n - 1 - i;
            let cross = config.up_block_types[i] == UpBlockType::CrossAttention;
            let settings = BlockSettings {
                layers: config.layers_per_block.get(level) + 1,
                resnet,
                transformer: cross.then(|| transformer(level)),
                resample: i + 1 < n,
            };
            let c_in = channels[level.saturating_sub(1)];
            let widths = [prev_output, channels[level], c_in];
            up_blocks.push(UpBlock::load(&vb.pp("up_blocks").pp(i), widths, settings)?);
            prev_output = channels[level];
        }
        let (groups, eps, kernel) = (
            config.norm_num_groups,
            config.norm_eps,
            config.conv_out_kernel,
        );
        Ok(Self {
            conv_in,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, channels[0], eps)?,
            conv_out: Conv2d::load(
                &vb.pp("conv_out"),
                [channels[0], config.out_channels],
                kernel,
                1,
                kernel / 2,
            )?,
            config: config.clone(),
            weights: WeightIndex::default(),
        })
    }

    /// Noise prediction `[batch, out_channels, h, w]` for `sample` `[batch, in_channels, h, w]`
    /// at `timesteps` (one, or one per sample; fractional allowed) with condition tokens
    /// `context` `[batch, tokens, cross_attention_dim]`.
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f32],
        context: Tensor<B, 3>,
    ) -> Result<Tensor<B, 4>> {
        self.forward_with(sample, timesteps, context, None, Cancel::NEVER)
    }

    /// [`UNet2DConditionModel::forward`] with a ControlNet's residuals added to the skip
    /// connections and to the mid block's output (diffusers' `down_block_additional_residuals`
    /// and `mid_block_additional_residual`), stopping between blocks once `cancel` is set.
    pub fn forward_with(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f32],
        context: Tensor<B, 3>,
        residuals: Option<ControlResiduals<B>>,
        cancel: Cancel,
    ) -> Result<Tensor<B, 4>> {
        check_inputs(&self.config, &sample, timesteps, &context)?;
        let [_, _, height, width] = sample.dims();
        let temb = embed_time(&self.time_embedding, &self.config, timesteps, &sample);
        let sample = if self.config.center_input_sample {
            sample * 2.0 - 1.0
        } else {
            sample
        };
        let x = self.conv_in.forward(sample);
        let (mut x, mut skips) = run_down_path(
            &self.down_blocks,
            &self.mid_block,
            x,
            &temb,
            &context,
            cancel,
        )?;
        if let Some(residuals) = residuals {
            let shapes = |t: &[Tensor<B, 4>]| t.iter().map(Tensor::dims).collect::<Vec<_>>();
            if shapes(&skips) != shapes(&residuals.down) || x.dims() != residuals.mid.dims() {
                return Err(Error::InvalidInput(format!(
                    "ControlNet residuals {:?} + mid {:?} do not fit the U-Net's skip connections \
                     {:?} + mid {:?}",
                    shapes(&residuals.down),
                    residuals.mid.dims(),
                    shapes(&skips),
                    x.dims()
                )));
            }
            skips = skips
                .into_iter()
                .zip(residuals.down)
                .map(|(skip, residual)| skip + residual)
                .collect();
            x = x + residuals.mid;
        }
        // A latent size the downsampling does not divide: upsample to each skip's size.
        let factor = self.config.downsample_factor();
        let resize = height % factor != 0 || width % factor != 0;
        let last = self.up_blocks.len() - 1;
        for (i, block) in self.up_blocks.iter().enumerate() {
            cancel.check()?;
            let consumed = block.resnets.len();
            let upsample_size = (resize && i < last).then(|| {
                let [_, _, h, w] = skips[skips.len() - consumed - 1].dims();
                [h, w]
            });
            x = block.forward(x, &temb, &context, &mut skips, upsample_size);
        }
        let x = silu(self.conv_norm_out.forward(x));
        Ok(self.conv_out.forward(x))
    }
}

/// What a ControlNet adds to the U-Net: one residual per skip connection (in the down path's
/// order) and one for the mid block's output.
#[derive(Debug, Clone)]
pub struct ControlResiduals<B: Backend> {
    pub down: Vec<Tensor<B, 4>>,
    pub mid: Tensor<B, 4>,
}

/// The sum of two ControlNets' residuals (diffusers' `MultiControlNetModel`).
impl<B: Backend> std::ops::Add for ControlResiduals<B> {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            down: self
                .down
                .into_iter()
                .zip(other.down)
                .map(|(a, b)| a + b)
                .collect(),
            mid: self.mid + other.mid,
        }
    }
}

/// Errors unless `sample`, `timesteps` and `context` fit a model of `config` and each other.
pub(crate) fn check_inputs<B: Backend>(
    config: &UNetConfig,
    sample: &Tensor<B, 4>,
    timesteps: &[f32],
    context: &Tensor<B, 3>,
) -> Result<()> {
    let [batch, channels, _, _] = sample.dims();
    let [context_batch, tokens, context_dim] = context.dims();
    let expected_dim = config.cross_attention_dim.get(0);
    if channels != config.in_channels
        || context_batch != batch
        || context_dim != expected_dim
        || tokens == 0
    {
        return Err(Error::InvalidInput(format!(
            "U-Net inputs: sample {:?} needs {} channels and context {:?} needs the same batch and width {expected_dim}",
            sample.dims(),
            config.in_channels,
            context.dims()
        )));
    }
    if timesteps.len() != 1 && timesteps.len() != batch {
        return Err(Error::InvalidInput(format!(
            "{} timesteps for a batch of {batch}",
            timesteps.len()
        )));
    }
    Ok(())
}

/// The timestep embedding `[batch, time_embed_dim]` after SiLU (every resnet applies SiLU to
/// it first; done once here), in `sample`'s float type.
pub(crate) fn embed_time<B: Backend>(
    embedding: &TimestepEmbedding<B>,
    config: &UNetConfig,
    timesteps: &[f32],
    sample: &Tensor<B, 4>,
) -> Tensor<B, 2> {
    let batch = sample.dims()[0];
    let time_channels = config.block_out_channels[0];
    let features = Tensor::<B, 2>::from_data(
        timestep_features(
            timesteps,
            time_channels,
            config.flip_sin_to_cos,
            config.freq_shift,
        ),
        (&sample.device(), DType::F32),
    )
    .cast(sample.dtype())
    .expand([batch, time_channels]);
    silu(embedding.forward(features))
}

/// The down blocks and the mid block from `x` (`conv_in`'s output): the mid block's output
/// and the skip connections (`x` first). Stops before a block once `cancel` is set.
pub(crate) fn run_down_path<B: Backend>(
    down_blocks: &[DownBlock<B>],
    mid_block: &MidBlock<B>,
    mut x: Tensor<B, 4>,
    temb: &Tensor<B, 2>,
    context: &Tensor<B, 3>,
    cancel: Cancel,
) -> Result<(Tensor<B, 4>, Vec<Tensor<B, 4>>)> {
    let mut skips = vec![x.clone()];
    for block in down_blocks {
        cancel.check()?;
        x = block.forward(x, temb, context, &mut skips);
    }
    cancel.check()?;
    Ok((mid_block.forward(x, temb, context), skips))
}

/// The parts a U-Net and a ControlNet share, loaded.
pub(crate) struct DownPath<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub time_embedding: TimestepEmbedding<B>,
    pub down_blocks: Vec<DownBlock<B>>,
    pub mid_block: MidBlock<B>,
}

/// How `config` sets up the resnets and transformers of a U-Net (or a ControlNet).
pub(crate) fn block_settings(
    config: &UNetConfig,
) -> (ResnetSettings, impl Fn(usize) -> TransformerSettings + '_) {
    let resnet = ResnetSettings {
        groups: config.norm_num_groups,
        eps: config.norm_eps,
        temb_channels: Some(config.time_embed_dim()),
        output_scale_factor: config.resnet_out_scale_factor,
    };
    let transformer = |i: usize| TransformerSettings {
        heads: config.heads(i),
        cross_attention_dim: config.cross_attention_dim.get(i),
        layers: config.transformer_layers_per_block.get(i),
        groups: config.norm_num_groups,
        linear_projection: config.use_linear_projection,
    };
    (resnet, transformer)
}

/// Loads `conv_in`, `time_embedding`, `down_blocks.*` and `mid_block.*` (diffusers' names in
/// both `UNet2DConditionModel` and `ControlNetModel`) of a validated `config`.
pub(crate) fn load_down_path<B: Backend>(
    vb: &Loader<B>,
    config: &UNetConfig,
) -> Result<DownPath<B>> {
    let channels = &config.block_out_channels;
    let n = channels.len();
    let (resnet, transformer) = block_settings(config);
    let mut down_blocks = Vec::with_capacity(n);
    for i in 0..n {
        let cross = config.down_block_types[i] == DownBlockType::CrossAttention;
        let settings = BlockSettings {
            layers: config.layers_per_block.get(i),
            resnet,
            transformer: cross.then(|| transformer(i)),
            resample: i + 1 < n,
        };
        let c_in = if i == 0 { channels[0] } else { channels[i - 1] };
        let block = vb.pp("down_blocks").pp(i);
        let padding = config.downsample_padding;
        down_blocks.push(DownBlock::load(
            &block,
            [c_in, channels[i]],
            settings,
            padding,
        )?);
    }
    let mid_resnet = ResnetSettings {
        output_scale_factor: config.mid_block_scale_factor,
        ..resnet
    };
    let mid = channels[n - 1];
    let mid_block = MidBlock::load(&vb.pp("mid_block"), mid, mid_resnet, transformer(n - 1))?;
    let kernel = config.conv_in_kernel;
    Ok(DownPath {
        conv_in: Conv2d::load(
            &vb.pp("conv_in"),
            [config.in_channels, channels[0]],
            kernel,
            1,
            kernel / 2,
        )?,
        time_embedding: TimestepEmbedding::load(
            &vb.pp("time_embedding"),
            channels[0],
            config.time_embed_dim(),
        )?,
        down_blocks,
        mid_block,
    })
}
