//! `TinyConfig`: diffusers' `AutoencoderTiny` (TAESD) `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_BLOCK_LAYERS, MAX_LEVELS, MAX_WIDTH};
use crate::nn::Activation;
use crate::weights::{check_sizes, read_config};

/// How the decoder upsamples between levels (`upsample_fn`, `nn.Upsample`'s `mode`): TAESD
/// uses nearest; diffusers' other modes are not implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TinyUpsample {
    #[serde(rename = "nearest")]
    Nearest,
}

/// The largest `upsampling_scaling_factor` taken (TAESD's is 2).
const MAX_UPSAMPLING: usize = 16;

/// The fields of an `AutoencoderTiny` config; names and defaults (`Default`) are diffusers',
/// which are also `madebyollin/taesd`'s (the SD1.5 TAESD).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TinyConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// One width per encoder level; diffusers' `EncoderTiny` feeds each level's own width
    /// into its first convolution, so they must all be equal.
    pub encoder_block_out_channels: Vec<usize>,
    /// One width per decoder level, all equal (as the encoder's).
    pub decoder_block_out_channels: Vec<usize>,
    pub act_fn: Activation,
    pub upsample_fn: TinyUpsample,
    pub latent_channels: usize,
    pub upsampling_scaling_factor: usize,
    /// `AutoencoderTinyBlock`s per encoder level (after that level's convolution).
    pub num_encoder_blocks: Vec<usize>,
    /// `AutoencoderTinyBlock`s per decoder level (before that level's upsampling).
    pub num_decoder_blocks: Vec<usize>,
    /// With `latent_shift`, how diffusers' `forward` maps latents to bytes and back
    /// (`scale_latents`); `encode` and `decode` do not use them.
    pub latent_magnitude: f32,
    pub latent_shift: f32,
    pub force_upcast: bool,
    /// 1.0: TAESD's latents are already in the U-Net's scale (SD's VAE latents times its
    /// 0.18215), so a pipeline's `latents / scaling_factor` leaves them as they are.
    pub scaling_factor: f32,
    pub shift_factor: Option<f32>,
    /// What diffusers records of `decoder_block_out_channels` under the `AutoencoderKL`
    /// name (`register_to_config`); not read.
    pub block_out_channels: Option<Vec<usize>>,
}

impl Default for TinyConfig {
    /// diffusers' defaults: TAESD for SD1.5 (four 64-wide levels, 8× down).
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            encoder_block_out_channels: vec![64; 4],
            decoder_block_out_channels: vec![64; 4],
            act_fn: Activation::Relu,
            upsample_fn: TinyUpsample::Nearest,
            latent_channels: 4,
            upsampling_scaling_factor: 2,
            num_encoder_blocks: vec![1, 3, 3, 3],
            num_decoder_blocks: vec![3, 3, 3, 1],
            latent_magnitude: 3.0,
            latent_shift: 0.5,
            force_upcast: false,
            scaling_factor: 1.0,
            shift_factor: Some(0.0),
            block_out_channels: None,
        }
    }
}

impl TinyConfig {
    /// Reads and validates an `AutoencoderTiny` `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::validate)
    }

    pub fn validate(&self) -> Result<(), String> {
        check_sizes(&[
            ("in_channels", self.in_channels, MAX_WIDTH),
            ("out_channels", self.out_channels, MAX_WIDTH),
            ("latent_channels", self.latent_channels, MAX_WIDTH),
            (
                "upsampling_scaling_factor",
                self.upsampling_scaling_factor,
                MAX_UPSAMPLING,
            ),
        ])?;
        check_stages(
            "encoder_block_out_channels",
            &self.encoder_block_out_channels,
            "num_encoder_blocks",
            &self.num_encoder_blocks,
        )?;
        check_stages(
            "decoder_block_out_channels",
            &self.decoder_block_out_channels,
            "num_decoder_blocks",
            &self.num_decoder_blocks,
        )?;
        // diffusers' `get_activation` knows relu, silu (swish), gelu (exact) and mish.
        if !matches!(
            self.act_fn,
            Activation::Relu | Activation::Silu | Activation::Gelu
        ) {
            return Err(format!(
                "`act_fn` {:?} is not supported (relu, silu or gelu)",
                self.act_fn
            ));
        }
        for (name, value) in [
            ("latent_magnitude", self.latent_magnitude),
            ("latent_shift", self.latent_shift),
            ("shift_factor", self.shift_factor.unwrap_or(0.0)),
        ] {
            if !value.is_finite() {
                return Err(format!("`{name}` {value} must be a finite number"));
            }
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err("`scaling_factor` must be positive".into());
        }
        Ok(())
    }

    /// How many pixels one latent covers per side when encoding: 2^(levels − 1), 8 for TAESD.
    pub fn downscale_factor(&self) -> usize {
        1 << (self.encoder_block_out_channels.len() - 1)
    }

    /// How many pixels one latent becomes per side when decoding:
    /// `upsampling_scaling_factor`^(levels − 1), 8 for TAESD.
    pub fn upscale_factor(&self) -> usize {
        let levels = self.decoder_block_out_channels.len() as u32;
        self.upsampling_scaling_factor.pow(levels - 1)
    }
}

/// One half's levels: as many widths as block counts, 1 to [`MAX_LEVELS`]; every width the
/// same and in range; every count at most [`MAX_BLOCK_LAYERS`] (0 is diffusers' no block).
fn check_stages(
    widths_name: &str,
    widths: &[usize],
    blocks_name: &str,
    blocks: &[usize],
) -> Result<(), String> {
    if !(1..=MAX_LEVELS).contains(&widths.len()) || blocks.len() != widths.len() {
        return Err(format!(
            "`{widths_name}` and `{blocks_name}` must have the same length, 1 to {MAX_LEVELS}"
        ));
    }
    if let Some(&c) = widths.iter().find(|&&c| !(1..=MAX_WIDTH).contains(&c)) {
        return Err(format!(
            "`{widths_name}` value {c} must be between 1 and {MAX_WIDTH}"
        ));
    }
    if widths.iter().any(|&c| c != widths[0]) {
        return Err(format!(
            "`{widths_name}` {widths:?} must be one width at every level (each level's first \
             convolution takes its own width in)"
        ));
    }
    if let Some(&n) = blocks.iter().find(|&&n| n > MAX_BLOCK_LAYERS) {
        return Err(format!(
            "`{blocks_name}` value {n} must be at most {MAX_BLOCK_LAYERS}"
        ));
    }
    Ok(())
}
