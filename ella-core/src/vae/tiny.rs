//! `AutoencoderTiny` (TAESD, madebyollin's distilled VAE): plain 3×3 convolutions and
//! residual conv stacks, no norms or attention, so a decode costs a small fraction of the
//! KL VAE's (for previews, or as a fast VAE). diffusers' `autoencoder_tiny.py` and
//! `EncoderTiny` / `DecoderTiny` in `vae.py`; the weights keep their `nn.Sequential` names
//! (`encoder.layers.{i}`, `decoder.layers.{i}`), whose indices this code recomputes.
//!
//! Conventions are diffusers': [`AutoencoderTiny::decode`] takes latents as the U-Net sees
//! them (TAESD's `scaling_factor` is 1.0) and returns an image in about [-1, 1];
//! [`AutoencoderTiny::encode`] takes an image in [-1, 1] and returns such latents.

use std::path::Path;

use burn::module::Module;
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{DType, Tensor};

use super::tiny_config::TinyConfig;
use crate::backend::Backend;
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::nn::{Activation, Conv2d, resize_nearest};
use crate::weights::{Checkpoint, Loader, check_config, load_checked};

/// diffusers' `AutoencoderTinyBlock`: `relu(conv(act(conv(act(conv(x))))) + x)`. Its 1×1
/// `skip` convolution exists only between widths, which `EncoderTiny` and `DecoderTiny`
/// never ask for (every block keeps its level's width): the skip is the identity.
#[derive(Module, Debug)]
pub struct TinyBlock<B: Backend> {
    pub convs: Vec<Conv2d<B>>,
    #[module(skip)]
    pub act: Activation,
}

crate::nn::seamless_fields!(TinyBlock { convs });

impl<B: Backend> TinyBlock<B> {
    /// The three convolutions of `conv` (`nn.Sequential` indices 0, 2, 4; the activations
    /// between them hold no weights).
    fn load(vb: &Loader<B>, channels: usize, act: Activation) -> Result<Self> {
        let convs = [0, 2, 4]
            .into_iter()
            .map(|i| Conv2d::load(&vb.pp("conv").pp(i), [channels; 2], 3, 1, 1))
            .collect::<Result<_>>()?;
        Ok(Self { convs, act })
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let mut y = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward(y);
            if i + 1 < self.convs.len() {
                y = self.act.apply(y);
            }
        }
        relu(y + x)
    }
}

/// One encoder level: a convolution (the input convolution at the first level, a bias-free
/// stride-2 one after), then its blocks.
#[derive(Module, Debug)]
pub struct EncoderTinyLevel<B: Backend> {
    pub conv: Conv2d<B>,
    pub blocks: Vec<TinyBlock<B>>,
}

/// diffusers' `EncoderTiny`: an image in [0, 1] to latents.
#[derive(Module, Debug)]
pub struct EncoderTiny<B: Backend> {
    pub levels: Vec<EncoderTinyLevel<B>>,
    pub conv_out: Conv2d<B>,
}

crate::nn::seamless_fields!(EncoderTinyLevel { conv, blocks });
crate::nn::seamless_fields!(EncoderTiny { levels, conv_out });

impl<B: Backend> EncoderTiny<B> {
    fn load(vb: &Loader<B>, config: &TinyConfig) -> Result<Self> {
        let layers = vb.pp("layers");
        // `nn.Sequential` numbering: each level's convolution, then its blocks.
        let mut index = 0;
        let mut next = || {
            index += 1;
            layers.pp(index - 1)
        };
        let width = config.encoder_block_out_channels[0];
        let mut levels = Vec::with_capacity(config.num_encoder_blocks.len());
        for (i, &blocks) in config.num_encoder_blocks.iter().enumerate() {
            let conv = match i {
                0 => Conv2d::load(&next(), [config.in_channels, width], 3, 1, 1)?,
                _ => Conv2d::load_without_bias(&next(), [width; 2], 3, 2, 1)?,
            };
            let blocks = (0..blocks)
                .map(|_| TinyBlock::load(&next(), width, config.act_fn))
                .collect::<Result<_>>()?;
            levels.push(EncoderTinyLevel { conv, blocks });
        }
        let conv_out = Conv2d::load(&next(), [width, config.latent_channels], 3, 1, 1)?;
        Ok(Self { levels, conv_out })
    }

    /// Latents of an image in [0, 1]; stops between blocks once `cancel` is set.
    fn forward(&self, image: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        let mut x = image;
        for level in &self.levels {
            cancel.check()?;
            x = level.conv.forward(x);
            for block in &level.blocks {
                cancel.check()?;
                x = block.forward(x);
            }
        }
        Ok(self.conv_out.forward(x))
    }
}

/// One decoder level: its blocks, nearest upsampling (but the last level), and a
/// convolution (bias-free but the last, which makes the output channels).
#[derive(Module, Debug)]
pub struct DecoderTinyLevel<B: Backend> {
    pub blocks: Vec<TinyBlock<B>>,
    #[module(skip)]
    pub upsample: bool,
    pub conv: Conv2d<B>,
}

/// diffusers' `DecoderTiny`: latents to an image in about [0, 1].
#[derive(Module, Debug)]
pub struct DecoderTiny<B: Backend> {
    pub conv_in: Conv2d<B>,
    pub levels: Vec<DecoderTinyLevel<B>>,
    #[module(skip)]
    pub act: Activation,
    #[module(skip)]
    pub upsampling: usize,
}

crate::nn::seamless_fields!(DecoderTinyLevel { blocks, conv });
crate::nn::seamless_fields!(DecoderTiny { conv_in, levels });

impl<B: Backend> DecoderTiny<B> {
    fn load(vb: &Loader<B>, config: &TinyConfig) -> Result<Self> {
        let layers = vb.pp("layers");
        let width = config.decoder_block_out_channels[0];
        let conv_in = Conv2d::load(&layers.pp(0), [config.latent_channels, width], 3, 1, 1)?;
        // `nn.Sequential` numbering: the input convolution and its activation, then per
        // level its blocks, the `nn.Upsample` (no weights, but an index) and a convolution.
        let mut index = 2;
        let mut next = || {
            index += 1;
            layers.pp(index - 1)
        };
        let n = config.num_decoder_blocks.len();
        let mut levels = Vec::with_capacity(n);
        for (i, &blocks) in config.num_decoder_blocks.iter().enumerate() {
            let last = i + 1 == n;
            let blocks = (0..blocks)
                .map(|_| TinyBlock::load(&next(), width, config.act_fn))
                .collect::<Result<_>>()?;
            if !last {
                next();
            }
            let conv = match last {
                true => Conv2d::load(&next(), [width, config.out_channels], 3, 1, 1)?,
                false => Conv2d::load_without_bias(&next(), [width; 2], 3, 1, 1)?,
            };
            levels.push(DecoderTinyLevel {
                blocks,
                upsample: !last,
                conv,
            });
        }
        Ok(Self {
            conv_in,
            levels,
            act: config.act_fn,
            upsampling: config.upsampling_scaling_factor,
        })
    }

    /// The image (about [0, 1]) of latents; stops between blocks once `cancel` is set.
    fn forward(&self, latents: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        // diffusers' soft clamp of the latents to (-3, 3).
        let x = tanh(latents / 3.0) * 3.0;
        let mut x = self.act.apply(self.conv_in.forward(x));
        for level in &self.levels {
            for block in &level.blocks {
                cancel.check()?;
                x = block.forward(x);
            }
            if level.upsample {
                let [_, _, height, width] = x.dims();
                let f = self.upsampling;
                x = resize_nearest(x, [f * height, f * width]);
            }
            cancel.check()?;
            x = level.conv.forward(x);
        }
        Ok(x)
    }
}

/// TAESD: `encode` an image to latents, `decode` latents to an image, in diffusers'
/// conventions (see the module's documentation).
#[derive(Module, Debug)]
pub struct AutoencoderTiny<B: Backend> {
    pub encoder: EncoderTiny<B>,
    pub decoder: DecoderTiny<B>,
    #[module(skip)]
    pub config: TinyConfig,
}

crate::nn::seamless_fields!(AutoencoderTiny { encoder, decoder });

impl<B: Backend> AutoencoderTiny<B> {
    /// Loads a diffusers `AutoencoderTiny` folder (`config.json`,
    /// `diffusion_pytorch_model.safetensors`), e.g. `madebyollin/taesd`.
    pub fn load(folder: impl AsRef<Path>, device: &B::Device, dtype: DType) -> Result<Self> {
        let folder = folder.as_ref();
        let config = TinyConfig::from_file(&folder.join("config.json"))?;
        let checkpoint = Checkpoint::open(folder)?;
        Self::from_checkpoint(config, &checkpoint, device, dtype)
    }

    /// Builds TAESD from an opened checkpoint, checking every tensor against `config`.
    pub fn from_checkpoint(
        config: TinyConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        check_config(config.validate(), checkpoint.path())?;
        let (taesd, _) = load_checked(
            checkpoint,
            device,
            dtype,
            |_| false,
            |vb| Self::from_loader(vb, &config),
        )?;
        Ok(taesd)
    }

    /// Builds TAESD of a validated `config` from `vb` (diffusers' names).
    pub fn from_loader(vb: &Loader<B>, config: &TinyConfig) -> Result<Self> {
        Ok(Self {
            encoder: EncoderTiny::load(&vb.pp("encoder"), config)?,
            decoder: DecoderTiny::load(&vb.pp("decoder"), config)?,
            config: config.clone(),
        })
    }

    /// Decodes latents `[batch, latent_channels, h, w]` as the U-Net sees them (diffusers'
    /// `AutoencoderTiny.decode`, to which a pipeline passes `latents / scaling_factor` with
    /// TAESD's `scaling_factor` of 1.0: no rescaling) to an image
    /// `[batch, out_channels, h·f, w·f]` in about [-1, 1] (`f` =
    /// [`TinyConfig::upscale_factor`], 8 for TAESD; unclamped, as diffusers). Stops between
    /// blocks once `cancel` is set.
    pub fn decode(&self, latents: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        check_input(&latents, self.config.latent_channels, "latents")?;
        let image = self.decoder.forward(latents, cancel)?;
        // TAESD's [0, 1] to diffusers' [-1, 1].
        Ok(image * 2.0 - 1.0)
    }

    /// Encodes an image `[batch, in_channels, H, W]` in [-1, 1] to latents
    /// `[batch, latent_channels, ⌈H/f⌉, ⌈W/f⌉]` (`f` = [`TinyConfig::downscale_factor`], 8
    /// for TAESD) as the U-Net sees them, without sampling or scaling: diffusers'
    /// `AutoencoderTiny.encode(image).latents`. Stops between blocks once `cancel` is set.
    pub fn encode(&self, image: Tensor<B, 4>, cancel: Cancel) -> Result<Tensor<B, 4>> {
        check_input(&image, self.config.in_channels, "image")?;
        // diffusers' [-1, 1] to TAESD's [0, 1].
        self.encoder.forward((image + 1.0) / 2.0, cancel)
    }
}

/// Errors unless `x` has `channels` channels and no empty side (a convolution would panic).
fn check_input<B: Backend>(x: &Tensor<B, 4>, channels: usize, what: &str) -> Result<()> {
    let dims = x.dims();
    if dims[1] != channels || dims.contains(&0) {
        return Err(Error::InvalidInput(format!(
            "TAESD {what} of shape {dims:?}: expected [batch, {channels}, height, width], none 0"
        )));
    }
    Ok(())
}
