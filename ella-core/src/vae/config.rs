//! `VaeConfig`: diffusers' `AutoencoderKL` `config.json`.

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_BLOCK_LAYERS, MAX_WIDTH};
use crate::weights::{check_levels, check_sizes, read_config};

/// The fields of an `AutoencoderKL` config; names and defaults are diffusers'.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Latents are divided by this before decoding (0.18215 for SD1.5).
    #[serde(default = "scaling")]
    pub scaling_factor: f32,
    #[serde(default)]
    pub shift_factor: Option<f32>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
    /// The image side the VAE was trained on (512 for SD1.5): tiled decoding works in tiles
    /// of this size, as diffusers' `enable_tiling`.
    #[serde(default = "thirty_two")]
    pub sample_size: usize,
}

fn three() -> usize {
    3
}
fn thirty_two() -> usize {
    32
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn groups() -> usize {
    32
}
fn scaling() -> f32 {
    0.18215
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}

impl VaeConfig {
    /// SD1.5's VAE (`runwayml/stable-diffusion-v1-5/vae/config.json`).
    pub fn sd15() -> Self {
        let json = r#"{
            "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "sample_size": 512,
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
        }"#;
        serde_json::from_str(json).expect("valid built-in config")
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
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "DownEncoderBlock2D")
        {
            return Err(format!("down block type `{t}` is not supported"));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "UpDecoderBlock2D")
        {
            return Err(format!("up block type `{t}` is not supported"));
        }
        if self.act_fn != "silu" {
            return Err(format!("`act_fn` {} is not supported", self.act_fn));
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
