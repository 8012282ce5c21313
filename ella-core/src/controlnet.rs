//! ControlNet (diffusers' `ControlNetModel`, SD1.5's canny, depth, tile, … ControlNets): a
//! copy of the U-Net's down path that also reads a conditioning image, and zero-initialised
//! 1×1 convolutions that turn each of its skip connections and its mid block's output into a
//! residual for the frozen U-Net ([`ControlResiduals`]).

use std::path::Path;

use crate::backend::Backend;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor};
use serde::Deserialize;

use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::limits::{MAX_LEVELS, MAX_WIDTH};
use crate::nn::{Conv2d, TimestepEmbedding};
use crate::unet::blocks::{DownBlock, MidBlock};
use crate::unet::{
    ControlResiduals, DownBlockType, UNetConfig, UpBlockType, check_inputs, embed_time,
    load_down_path, run_down_path,
};
use crate::weights::{Checkpoint, Loader, check_config, config_error, load_checked, read_json};

/// A ControlNet's `config.json`: the U-Net keys of its down path, and its own.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetConfig {
    /// The down path's settings (`up_block_types` mirrored from `down_block_types`).
    pub unet: UNetConfig,
    pub conditioning_channels: usize,
    pub conditioning_embedding_out_channels: Vec<usize>,
    pub controlnet_conditioning_channel_order: ChannelOrder,
    pub global_pool_conditions: bool,
}

/// `controlnet_conditioning_channel_order`: the channel order the ControlNet was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChannelOrder {
    #[serde(rename = "rgb")]
    Rgb,
    /// Refused by [`ControlNetConfig::validate`].
    #[serde(rename = "bgr")]
    Bgr,
}

/// The keys of a ControlNet config that a U-Net config lacks.
#[derive(Deserialize)]
struct OwnKeys {
    #[serde(default = "three")]
    conditioning_channels: usize,
    #[serde(default = "embedding_channels")]
    conditioning_embedding_out_channels: Vec<usize>,
    #[serde(default = "rgb")]
    controlnet_conditioning_channel_order: ChannelOrder,
    #[serde(default)]
    global_pool_conditions: bool,
}

fn three() -> usize {
    3
}
fn embedding_channels() -> Vec<usize> {
    vec![16, 32, 96, 256]
}
fn rgb() -> ChannelOrder {
    ChannelOrder::Rgb
}

impl ControlNetConfig {
    /// Reads and validates a ControlNet `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let json: serde_json::Value = read_json(path)?;
        let invalid = |e: serde_json::Error| config_error(path, e);
        let mut unet: UNetConfig = serde_json::from_value(json.clone()).map_err(invalid)?;
        let own: OwnKeys = serde_json::from_value(json).map_err(invalid)?;
        mirror_up_blocks(&mut unet);
        let config = Self {
            unet,
            conditioning_channels: own.conditioning_channels,
            conditioning_embedding_out_channels: own.conditioning_embedding_out_channels,
            controlnet_conditioning_channel_order: own.controlnet_conditioning_channel_order,
            global_pool_conditions: own.global_pool_conditions,
        };
        check_config(config.validate(), path)?;
        Ok(config)
    }

    /// The config of a ControlNet for `unet` (its down path, reading the latents alone as an
    /// inpainting U-Net's ControlNet does) with a hint encoder of `embedding_channels`
    /// reading `conditioning_channels`-channel images: what a file without a config means.
    pub fn for_unet(
        unet: &UNetConfig,
        conditioning_channels: usize,
        embedding_channels: Vec<usize>,
    ) -> Self {
        let mut unet = UNetConfig {
            in_channels: unet.out_channels,
            ..unet.clone()
        };
        mirror_up_blocks(&mut unet);
        Self {
            unet,
            conditioning_channels,
            conditioning_embedding_out_channels: embedding_channels,
            controlnet_conditioning_channel_order: ChannelOrder::Rgb,
            global_pool_conditions: false,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.unet.validate()?;
        let channels = &self.conditioning_embedding_out_channels;
        if !(1..=MAX_LEVELS).contains(&channels.len()) {
            return Err(format!(
                "`conditioning_embedding_out_channels` must have 1 to {MAX_LEVELS} values"
            ));
        }
        if let Some(&c) = channels.iter().find(|&&c| !(1..=MAX_WIDTH).contains(&c)) {
            return Err(format!(
                "`conditioning_embedding_out_channels` value {c} must be between 1 and {MAX_WIDTH}"
            ));
        }
        if self.controlnet_conditioning_channel_order == ChannelOrder::Bgr {
            return Err(
                "`controlnet_conditioning_channel_order` \"bgr\" is not supported (rgb only)"
                    .into(),
            );
        }
        if self.global_pool_conditions {
            return Err("`global_pool_conditions` (shuffle ControlNets) is not supported".into());
        }
        Ok(())
    }

    /// How much the conditioning embedding downsamples the control image.
    pub fn image_downscale(&self) -> usize {
        1 << (self.conditioning_embedding_out_channels.len() - 1)
    }
}

/// A ControlNet has no up blocks, but the U-Net config's checks want them: mirrors the down
/// ones.
fn mirror_up_blocks(unet: &mut UNetConfig) {
    unet.up_block_types = unet
        .down_block_types
        .iter()
        .rev()
        .map(|kind| match kind {
            DownBlockType::CrossAttention => UpBlockType::CrossAttention,
            DownBlockType::Plain => UpBlockType::Plain,
        })
        .collect();
}

/// `ControlNetConditioningEmbedding`: the control image (in [0, 1]) to a `conv_in`-wide map at
/// the latent's size: conv, then (conv, stride-2 conv) pairs, each followed by SiLU, and an
/// output conv.
#[derive(Module, Debug)]
pub struct ConditioningEmbedding<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub blocks: Vec<Conv2d<B>>,
    pub conv_out: Conv2d<B>,
}

crate::nn::seamless_fields!(ConditioningEmbedding {
    conv_in,
    blocks,
    conv_out
});

impl<B: Backend> ConditioningEmbedding<B> {
    /// `conv_in`, then per pair of `channels` a 3×3 conv and a stride-2 one, `conv_out` to
    /// `out` (the U-Net's first width).
    fn load(vb: &Loader<B>, image_channels: usize, channels: &[usize], out: usize) -> Result<Self> {
        let mut blocks = Vec::new();
        for (i, pair) in channels.windows(2).enumerate() {
            let [c_in, c_out] = [pair[0], pair[1]];
            let conv = |k: usize| vb.pp("blocks").pp(k);
            blocks.push(Conv2d::load(&conv(2 * i), [c_in, c_in], 3, 1, 1)?);
            blocks.push(Conv2d::load(&conv(2 * i + 1), [c_in, c_out], 3, 2, 1)?);
        }
        Ok(Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), [image_channels, channels[0]], 3, 1, 1)?,
            blocks,
            conv_out: Conv2d::load(
                &vb.pp("conv_out"),
                [channels[channels.len() - 1], out],
                3,
                1,
                1,
            )?,
        })
    }

    pub fn forward(&self, image: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = silu(self.conv_in.forward(image));
        let x = self
            .blocks
            .iter()
            .fold(x, |x, block| silu(block.forward(x)));
        self.conv_out.forward(x)
    }
}

#[derive(Module, Debug)]
pub struct ControlNetModel<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub time_embedding: TimestepEmbedding<B>,
    pub controlnet_cond_embedding: ConditioningEmbedding<B>,
    pub down_blocks: Vec<DownBlock<B>>,
    pub mid_block: MidBlock<B>,
    /// One 1×1 convolution per skip connection.
    pub controlnet_down_blocks: Vec<Conv2d<B>>,
    pub controlnet_mid_block: Conv2d<B>,
    #[module(skip)]
    pub config: ControlNetConfig,
}

crate::nn::seamless_fields!(ControlNetModel {
    conv_in,
    controlnet_cond_embedding,
    down_blocks,
    mid_block,
    controlnet_down_blocks,
    controlnet_mid_block
});

impl<B: Backend> ControlNetModel<B> {
    /// Loads a diffusers ControlNet: its folder (`config.json`,
    /// `diffusion_pytorch_model.safetensors`), or its weight file with `config.json` beside it.
    pub fn load(path: impl AsRef<Path>, device: &B::Device, dtype: DType) -> Result<Self> {
        let path = path.as_ref();
        let folder = match path.is_dir() {
            true => path,
            false => path.parent().unwrap_or(Path::new(".")),
        };
        let config = ControlNetConfig::from_file(&folder.join("config.json"))?;
        Self::from_checkpoint(config, &Checkpoint::open(path)?, device, dtype)
    }

    pub fn from_checkpoint(
        config: ControlNetConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        check_config(config.validate(), checkpoint.path())?;
        let build = |vb: &Loader<B>| Self::from_loader(vb, &config);
        Ok(load_checked(checkpoint, device, dtype, |_| false, build)?.0)
    }

    /// Builds the ControlNet of a validated `config` from `vb` (diffusers' names).
    pub fn from_loader(vb: &Loader<B>, config: &ControlNetConfig) -> Result<Self> {
        let path = load_down_path(vb, &config.unet)?;
        let first = config.unet.block_out_channels[0];
        let controlnet_cond_embedding = ConditioningEmbedding::load(
            &vb.pp("controlnet_cond_embedding"),
            config.conditioning_channels,
            &config.conditioning_embedding_out_channels,
            first,
        )?;
        // The skip connections' widths: conv_in's, then each resnet's and downsampler's.
        let mut widths = vec![first];
        for (i, block) in path.down_blocks.iter().enumerate() {
            let c = config.unet.block_out_channels[i];
            widths.extend(std::iter::repeat_n(c, block.resnets.len()));
            if block.downsampler.is_some() {
                widths.push(c);
            }
        }
        let zero_conv = |vb: &Loader<B>, c: usize| Conv2d::load(vb, [c, c], 1, 1, 0);
        let controlnet_down_blocks = widths
            .iter()
            .enumerate()
            .map(|(i, &c)| zero_conv(&vb.pp("controlnet_down_blocks").pp(i), c))
            .collect::<Result<Vec<_>>>()?;
        let mid = *config.unet.block_out_channels.last().expect("validated");
        Ok(Self {
            conv_in: path.conv_in,
            time_embedding: path.time_embedding,
            controlnet_cond_embedding,
            down_blocks: path.down_blocks,
            mid_block: path.mid_block,
            controlnet_down_blocks,
            controlnet_mid_block: zero_conv(&vb.pp("controlnet_mid_block"), mid)?,
            config: config.clone(),
        })
    }

    /// The residuals for the U-Net, scaled by `scale`, from the U-Net's input `sample`,
    /// `timesteps` and `context`, and the control image `[batch, 3, H, W]` in [0, 1] (the
    /// latent's size times [`ControlNetConfig::image_downscale`]).
    pub fn forward(
        &self,
        sample: Tensor<B, 4>,
        timesteps: &[f32],
        context: Tensor<B, 3>,
        image: Tensor<B, 4>,
        scale: f32,
        cancel: Cancel,
    ) -> Result<ControlResiduals<B>> {
        let config = &self.config.unet;
        check_inputs(config, &sample, timesteps, &context)?;
        let [batch, _, height, width] = sample.dims();
        let factor = self.config.image_downscale();
        let expected = [
            batch,
            self.config.conditioning_channels,
            height * factor,
            width * factor,
        ];
        if image.dims() != expected {
            return Err(Error::InvalidInput(format!(
                "control image {:?}; this ControlNet on a {height}×{width} latent needs {expected:?}",
                image.dims()
            )));
        }
        let temb = embed_time(&self.time_embedding, config, timesteps, &sample);
        let x = self.conv_in.forward(sample) + self.controlnet_cond_embedding.forward(image);
        let (mid, skips) = run_down_path(
            &self.down_blocks,
            &self.mid_block,
            x,
            &temb,
            &context,
            cancel,
        )?;
        let down = skips
            .into_iter()
            .zip(&self.controlnet_down_blocks)
            .map(|(skip, conv)| conv.forward(skip) * scale)
            .collect();
        Ok(ControlResiduals {
            down,
            mid: self.controlnet_mid_block.forward(mid) * scale,
        })
    }
}
