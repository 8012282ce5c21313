//! `AutoencoderKL`: encoder and decoder of resnets, a single-head attention in the middle,
//! and 2× resampling between levels (diffusers' `autoencoder_kl.py` and `vae.py`; block
//! names as there).

use std::path::Path;

use crate::backend::Backend;
use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor, TensorData};

use super::config::VaeConfig;
use crate::attention::Attention;
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::nn::{Conv2d, GroupNorm, resize_nearest};
use crate::resnet::{ResnetBlock2D, ResnetSettings};
use crate::weights::{Checkpoint, Loader, check_config, load_checked};

/// The mid block's attention: GroupNorm, one head over all `h·w` positions, residual
/// (diffusers' `Attention` with `group_norm`, `residual_connection`).
#[derive(Module, Debug)]
pub struct VaeAttention<B: Backend> {
    pub group_norm: GroupNorm<B>,
    pub attention: Attention<B>,
}

impl<B: Backend> VaeAttention<B> {
    fn load(vb: &Loader<B>, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::load(&vb.pp("group_norm"), groups, channels, 1e-6)?,
            attention: Attention::load(vb, [channels, channels], 1, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = x.dims();
        let tokens = self
            .group_norm
            .forward(x.clone())
            .reshape([batch, channels, height * width])
            .swap_dims(1, 2);
        let out = self.attention.forward(tokens, None);
        out.swap_dims(1, 2)
            .reshape([batch, channels, height, width])
            + x
    }
}

/// `UNetMidBlock2D` without timestep: resnet, attention, resnet.
#[derive(Module, Debug)]
pub struct UNetMidBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub attention: Option<VaeAttention<B>>,
}

crate::nn::seamless_fields!(UNetMidBlock2D { resnets });

impl<B: Backend> UNetMidBlock2D<B> {
    fn load(vb: &Loader<B>, channels: usize, config: &VaeConfig) -> Result<Self> {
        let settings = resnet_settings(config);
        let resnet =
            |j: usize| ResnetBlock2D::load(&vb.pp("resnets").pp(j), [channels; 2], settings);
        Ok(Self {
            resnets: vec![resnet(0)?, resnet(1)?],
            attention: match config.mid_block_add_attention {
                true => Some(VaeAttention::load(
                    &vb.pp("attentions.0"),
                    channels,
                    config.norm_num_groups,
                )?),
                false => None,
            },
        })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.resnets[0].forward(x, None);
        let x = match &self.attention {
            Some(attention) => attention.forward(x),
            None => x,
        };
        self.resnets[1].forward(x, None)
    }
}

fn resnet_settings(config: &VaeConfig) -> ResnetSettings {
    ResnetSettings {
        groups: config.norm_num_groups,
        eps: 1e-6,
        temb_channels: None,
        output_scale_factor: 1.0,
    }
}

/// One level of the encoder: resnets, then a stride-2 conv (but the last).
#[derive(Module, Debug)]
pub struct DownEncoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub downsampler: Option<Conv2d<B>>,
}

crate::nn::seamless_fields!(DownEncoderBlock2D {
    resnets,
    downsampler
});

impl<B: Backend> DownEncoderBlock2D<B> {
    /// `channels` = `[in, out]`.
    fn load(
        vb: &Loader<B>,
        channels: [usize; 2],
        config: &VaeConfig,
        downsample: bool,
    ) -> Result<Self> {
        let [c_in, c_out] = channels;
        let resnets = (0..config.layers_per_block)
            .map(|j| {
                let width_in = if j == 0 { c_in } else { c_out };
                let resnet = vb.pp("resnets").pp(j);
                ResnetBlock2D::load(&resnet, [width_in, c_out], resnet_settings(config))
            })
            .collect::<Result<_>>()?;
        let downsampler = match downsample {
            true => {
                // diffusers pads (0, 1, 0, 1) before a padding-free stride-2 conv.
                let mut conv = Conv2d::load(&vb.pp("downsamplers.0.conv"), [c_out; 2], 3, 2, 0)?;
                conv.extra_end_padding = 1;
                Some(conv)
            }
            false => None,
        };
        Ok(Self {
            resnets,
            downsampler,
        })
    }
}

/// One level of the decoder: resnets, then nearest 2× upsampling and a conv (but the last).
#[derive(Module, Debug)]
pub struct UpDecoderBlock2D<B: Backend> {
    pub resnets: Vec<ResnetBlock2D<B>>,
    pub upsampler: Option<Conv2d<B>>,
}

crate::nn::seamless_fields!(UpDecoderBlock2D { resnets, upsampler });

impl<B: Backend> UpDecoderBlock2D<B> {
    /// `channels` = `[in, out]`.
    fn load(
        vb: &Loader<B>,
        channels: [usize; 2],
        config: &VaeConfig,
        upsample: bool,
    ) -> Result<Self> {
        let [c_in, c_out] = channels;
        let resnets = (0..=config.layers_per_block)
            .map(|j| {
                let width_in = if j == 0 { c_in } else { c_out };
                let resnet = vb.pp("resnets").pp(j);
                ResnetBlock2D::load(&resnet, [width_in, c_out], resnet_settings(config))
            })
            .collect::<Result<_>>()?;
        let upsampler = match upsample {
            true => Some(Conv2d::load(
                &vb.pp("upsamplers.0.conv"),
                [c_out; 2],
                3,
                1,
                1,
            )?),
            false => None,
        };
        Ok(Self { resnets, upsampler })
    }
}

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub down_blocks: Vec<DownEncoderBlock2D<B>>,
    pub mid_block: UNetMidBlock2D<B>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

crate::nn::seamless_fields!(Encoder {
    conv_in,
    down_blocks,
    mid_block,
    conv_out
});

impl<B: Backend> Encoder<B> {
    fn load(vb: &Loader<B>, config: &VaeConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let n = channels.len();
        let down_blocks = (0..n)
            .map(|i| {
                let c_in = if i == 0 { channels[0] } else { channels[i - 1] };
                let block = vb.pp("down_blocks").pp(i);
                DownEncoderBlock2D::load(&block, [c_in, channels[i]], config, i + 1 < n)
            })
            .collect::<Result<_>>()?;
        let top = channels[n - 1];
        let groups = config.norm_num_groups;
        Ok(Self {
            conv_in: Conv2d::load(
                &vb.pp("conv_in"),
                [config.in_channels, channels[0]],
                3,
                1,
                1,
            )?,
            down_blocks,
            mid_block: UNetMidBlock2D::load(&vb.pp("mid_block"), top, config)?,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, top, 1e-6)?,
            conv_out: Conv2d::load(
                &vb.pp("conv_out"),
                [top, 2 * config.latent_channels],
                3,
                1,
                1,
            )?,
        })
    }

    /// The moments (mean and log-variance) of an image; stops between resnets once
    /// `cancel` is set.
    fn forward(&self, image: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        let mut x = self.conv_in.forward(image);
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                cancel.check()?;
                x = resnet.forward(x, None);
            }
            if let Some(conv) = &block.downsampler {
                x = conv.forward(x);
            }
        }
        x = self.mid_block.forward(x);
        Ok(self.conv_out.forward(silu(self.conv_norm_out.forward(x))))
    }
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub mid_block: UNetMidBlock2D<B>,
    pub up_blocks: Vec<UpDecoderBlock2D<B>>,
    pub conv_norm_out: GroupNorm<B>,
    pub conv_out: Conv2d<B>,
}

crate::nn::seamless_fields!(Decoder {
    conv_in,
    mid_block,
    up_blocks,
    conv_out
});

impl<B: Backend> Decoder<B> {
    fn load(vb: &Loader<B>, config: &VaeConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let n = channels.len();
        let top = channels[n - 1];
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev = top;
        for i in 0..n {
            let c_out = channels[n - 1 - i];
            let block = vb.pp("up_blocks").pp(i);
            up_blocks.push(UpDecoderBlock2D::load(
                &block,
                [prev, c_out],
                config,
                i + 1 < n,
            )?);
            prev = c_out;
        }
        let groups = config.norm_num_groups;
        Ok(Self {
            conv_in: Conv2d::load(&vb.pp("conv_in"), [config.latent_channels, top], 3, 1, 1)?,
            mid_block: UNetMidBlock2D::load(&vb.pp("mid_block"), top, config)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&vb.pp("conv_norm_out"), groups, channels[0], 1e-6)?,
            conv_out: Conv2d::load(
                &vb.pp("conv_out"),
                [channels[0], config.out_channels],
                3,
                1,
                1,
            )?,
        })
    }

    /// The image of (post-quant-conv) latents; stops between resnets once `cancel` is set.
    fn forward(&self, latents: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        let mut x = self.mid_block.forward(self.conv_in.forward(latents));
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                cancel.check()?;
                x = resnet.forward(x, None);
            }
            if let Some(conv) = &block.upsampler {
                let [_, _, height, width] = x.dims();
                x = conv.forward(resize_nearest(x, [2 * height, 2 * width]));
            }
        }
        cancel.check()?;
        Ok(self.conv_out.forward(silu(self.conv_norm_out.forward(x))))
    }
}

/// The VAE: `encode` an image to latents, `decode` latents to an image.
#[derive(Module, Debug)]
pub struct AutoencoderKL<B: Backend> {
    pub encoder: Encoder<B>,
    pub quant_conv: Option<Conv2d<B>>,
    pub post_quant_conv: Option<Conv2d<B>>,
    pub decoder: Decoder<B>,
    #[module(skip)]
    pub config: VaeConfig,
}

crate::nn::seamless_fields!(AutoencoderKL {
    encoder,
    quant_conv,
    post_quant_conv,
    decoder
});

impl<B: Backend> AutoencoderKL<B> {
    /// Loads a diffusers `vae/` folder (`config.json`, `diffusion_pytorch_model.safetensors`).
    pub fn load(folder: impl AsRef<Path>, device: &B::Device, dtype: DType) -> Result<Self> {
        let folder = folder.as_ref();
        let config = VaeConfig::from_file(&folder.join("config.json"))?;
        let checkpoint = Checkpoint::open(folder)?;
        Self::from_checkpoint(config, &checkpoint, device, dtype)
    }

    /// Builds the VAE from an opened checkpoint, checking every tensor against `config`.
    pub fn from_checkpoint(
        config: VaeConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        check_config(config.validate(), checkpoint.path())?;
        let (vae, _) = load_checked(
            checkpoint,
            device,
            dtype,
            |_| false,
            |vb| Self::from_loader(vb, &config),
        )?;
        Ok(vae)
    }

    /// Builds the VAE of a validated `config` from `vb` (diffusers' names).
    pub fn from_loader(vb: &Loader<B>, config: &VaeConfig) -> Result<Self> {
        let latent = config.latent_channels;
        let quant_conv = |name: &str, width: usize| Conv2d::load(&vb.pp(name), [width; 2], 1, 1, 0);
        Ok(Self {
            encoder: Encoder::load(&vb.pp("encoder"), config)?,
            decoder: Decoder::load(&vb.pp("decoder"), config)?,
            quant_conv: match config.use_quant_conv {
                true => Some(quant_conv("quant_conv", 2 * latent)?),
                false => None,
            },
            post_quant_conv: match config.use_post_quant_conv {
                true => Some(quant_conv("post_quant_conv", latent)?),
                false => None,
            },
            config: config.clone(),
        })
    }

    /// Decodes latents `[batch, latent_channels, h, w]` (already divided by the scaling
    /// factor, as diffusers' `vae.decode`) to an image `[batch, out_channels, h·f, w·f]` in
    /// about [-1, 1]. Stops between resnets once `cancel` is set.
    pub fn decode(&self, latents: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        let latents = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents),
            None => latents,
        };
        self.decoder.forward(latents, cancel)
    }

    /// [`AutoencoderKL::decode`] with a bound on memory for large images or batches; stops
    /// between images, tiles and levels once `cancel` is set.
    pub fn decode_with(
        &self,
        latents: Tensor<B, 4>,
        mode: VaeDecode,
        cancel: Cancel,
    ) -> Result<Tensor<B, 4>> {
        let batch = latents.dims()[0];
        let per_sample = |decode: &dyn Fn(Tensor<B, 4>) -> Result<Tensor<B, 4>>| {
            let images = (0..batch)
                .map(|i| decode(latents.clone().narrow(0, i, 1)))
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::cat(images, 0))
        };
        match mode {
            VaeDecode::Whole => self.decode(latents, cancel),
            VaeDecode::Sliced => per_sample(&|z| self.decode(z, cancel)),
            VaeDecode::Tiled => per_sample(&|z| self.tiled_decode(z, cancel)),
            VaeDecode::Tiny => Err(Error::InvalidInput(
                "VaeDecode::Tiny decodes with TAESD (AutoencoderTiny), not this VAE".into(),
            )),
        }
    }

    /// diffusers' `tiled_decode` (`enable_tiling`): latents larger than one tile
    /// (`sample_size / f` per side, 64 for SD1.5) are decoded in tiles that overlap by a
    /// quarter, each blended linearly into its upper and left neighbours over a quarter of a
    /// tile and cropped. Peak memory is that of one 512×512 decode whatever the image size;
    /// the result differs slightly from a whole decode (the tiles' GroupNorms see less).
    pub fn tiled_decode(&self, latents: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        let tile_sample = self.config.sample_size;
        let tile_latent = tile_sample / self.config.downscale_factor();
        let [_, _, height, width] = latents.dims();
        if height <= tile_latent && width <= tile_latent {
            return self.decode(latents, cancel);
        }
        // The integer truncations are diffusers' (`int(64 · 0.75)`, `int(512 · 0.25)`).
        let stride = (tile_latent as f64 * (1.0 - TILE_OVERLAP)) as usize;
        let blend = (tile_sample as f64 * TILE_OVERLAP) as usize;
        let keep = tile_sample - blend;
        let mut previous_row: Vec<Tensor<B, 4>> = Vec::new();
        let mut rows = Vec::new();
        for top in (0..height).step_by(stride) {
            let mut row: Vec<Tensor<B, 4>> = Vec::new();
            for (j, left) in (0..width).step_by(stride).enumerate() {
                let tile = latents.clone().slice([
                    0..latents.dims()[0],
                    0..latents.dims()[1],
                    top..(top + tile_latent).min(height),
                    left..(left + tile_latent).min(width),
                ]);
                let mut tile = self.decode(tile, cancel)?;
                if let Some(above) = previous_row.get(j) {
                    tile = blend_edge(above, tile, blend, 2);
                }
                if let Some(before) = row.last() {
                    tile = blend_edge(before, tile, blend, 3);
                }
                row.push(tile);
            }
            let cropped = row.iter().map(|tile| crop(tile.clone(), keep)).collect();
            rows.push(Tensor::cat(cropped, 3));
            previous_row = row;
        }
        Ok(Tensor::cat(rows, 2))
    }

    /// The mean of the latent distribution of an image `[batch, in_channels, H, W]` in
    /// [-1, 1] (multiply by the scaling factor for the U-Net).
    pub fn encode_mean(&self, image: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        let moments = self.encoder.forward(image, cancel)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(moments),
            None => moments,
        };
        Ok(moments.narrow(1, 0, self.config.latent_channels))
    }
}

/// How [`AutoencoderKL::decode_with`] bounds memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeDecode {
    /// The whole batch at once (fastest).
    #[default]
    Whole,
    /// One image at a time (diffusers' `enable_slicing`): same pixels, memory of one image.
    Sliced,
    /// One image at a time, in overlapping tiles (diffusers' `enable_tiling`): memory of
    /// one tile for any image size; pixels differ slightly from a whole decode.
    Tiled,
    /// TAESD, the pipeline's tiny autoencoder ([`super::AutoencoderTiny`]) instead of this
    /// VAE: a fraction of the time and memory, slightly softer images.
    Tiny,
}

/// The fraction of a tile that neighbouring tiles overlap (diffusers' `tile_overlap_factor`).
const TILE_OVERLAP: f64 = 0.25;

/// diffusers' `blend_v` (`dim` 2) / `blend_h` (`dim` 3): the first `extent` rows (columns)
/// of `tile` fade in from the last `extent` of its neighbour, weight `i / extent`.
fn blend_edge<B: Backend>(
    neighbour: &Tensor<B, 4>,
    tile: Tensor<B, 4>,
    extent: usize,
    dim: usize,
) -> Tensor<B, 4> {
    let extent = extent.min(neighbour.dims()[dim]).min(tile.dims()[dim]);
    let size = tile.dims()[dim];
    let mut shape = [1; 4];
    shape[dim] = extent;
    // The weights are computed in f64 and rounded once, as Python's `y / blend_extent`.
    let weights = |f: &dyn Fn(f64) -> f64| {
        let values: Vec<f32> = (0..extent)
            .map(|i| f(i as f64 / extent as f64) as f32)
            .collect();
        Tensor::<B, 1>::from_data(
            TensorData::new(values, [extent]),
            (&tile.device(), DType::F32),
        )
        .cast(tile.dtype())
        .reshape(shape)
    };
    let tail = neighbour
        .clone()
        .narrow(dim, neighbour.dims()[dim] - extent, extent);
    let head = tile.clone().narrow(dim, 0, extent);
    let blended = tail * weights(&|w| 1.0 - w) + head * weights(&|w| w);
    if extent == size {
        return blended;
    }
    Tensor::cat(vec![blended, tile.narrow(dim, extent, size - extent)], dim)
}

/// The top-left `keep × keep` of a tile (less at the image's bottom and right edges).
fn crop<B: Backend>(tile: Tensor<B, 4>, keep: usize) -> Tensor<B, 4> {
    let [_, _, height, width] = tile.dims();
    tile.narrow(2, 0, keep.min(height))
        .narrow(3, 0, keep.min(width))
}
