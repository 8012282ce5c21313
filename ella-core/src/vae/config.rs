//! `VaeConfig`: diffusers' `AutoencoderKL` `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_BLOCK_LAYERS, MAX_WIDTH};
use crate::nn::Activation;
use crate::weights::{check_levels, check_sizes, read_config};

/// An encoder block's type (`down_block_types`): diffusers' only one for `AutoencoderKL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DownBlockType {
    #[serde(rename = "DownEncoderBlock2D")]
    DownEncoder,
}

/// A decoder block's type (`up_block_types`): diffusers' only one for `AutoencoderKL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpBlockType {
    #[serde(rename = "UpDecoderBlock2D")]
    UpDecoder,
}

/// The fields of an `AutoencoderKL` config; names and defaults (`Default`) are diffusers'.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub act_fn: Activation,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Latents are divided by this before decoding (0.18215 for SD1.5).
    pub scaling_factor: f32,
    pub shift_factor: Option<f32>,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    /// The image side the VAE was trained on (512 for SD1.5): tiled decoding works in tiles
    /// of this size, as diffusers' `enable_tiling`.
    pub sample_size: usize,
}

impl Default for VaeConfig {
    /// diffusers' defaults: one 64-wide level.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DownBlockType::DownEncoder],
            up_block_types: vec![UpBlockType::UpDecoder],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: Activation::Silu,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            sample_size: 32,
        }
    }
}

impl VaeConfig {
    /// SD1.5's VAE (`runwayml/stable-diffusion-v1-5/vae/config.json`).
    pub fn sd15() -> Self {
        Self {
            down_block_types: vec![DownBlockType::DownEncoder; 4],
            up_block_types: vec![UpBlockType::UpDecoder; 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            sample_size: 512,
            ..Self::default()
        }
    }

    /// Reads and validates `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::validate)
    }

    pub fn validate(&self) -> Result<(), String> {
        check_levels(
            &self.block_out_channels,
            &self.down_block_types,
            &self.up_block_types,
        )?;
        check_sizes(&[
            ("in_channels", self.in_channels, MAX_WIDTH),
            ("out_channels", self.out_channels, MAX_WIDTH),
            ("latent_channels", self.latent_channels, MAX_WIDTH),
            ("layers_per_block", self.layers_per_block, MAX_BLOCK_LAYERS),
            ("norm_num_groups", self.norm_num_groups, MAX_WIDTH),
            ("sample_size", self.sample_size, 1 << 14),
        ])?;
        if let Some(&c) = self
            .block_out_channels
            .iter()
            .find(|&&c| !(1..=MAX_WIDTH).contains(&c))
        {
            return Err(format!(
                "`block_out_channels` value {c} must be between 1 and {MAX_WIDTH}"
            ));
        }
        // diffusers' other activations would need every resnet to take one.
        if self.act_fn != Activation::Silu {
            return Err(format!(
                "`act_fn` {:?} is not supported (silu only)",
                self.act_fn
            ));
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|c| *c % self.norm_num_groups != 0)
        {
            return Err(format!(
                "block width {c} is not divisible by `norm_num_groups` {}",
                self.norm_num_groups
            ));
        }
        if self.sample_size < self.downscale_factor() {
            return Err(format!(
                "`sample_size` {} is smaller than one latent ({} pixels)",
                self.sample_size,
                self.downscale_factor()
            ));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return Err("`scaling_factor` must be positive".into());
        }
        Ok(())
    }

    /// How many pixels one latent covers per side: 2^(levels − 1), 8 for SD1.5.
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
