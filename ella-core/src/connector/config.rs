//! `ConnectorConfig`: the sizes of ELLA's connector, named as the arguments of the
//! reference `ELLA(...)` constructor. The official `ella-sd1.5-tsc-t5xl.safetensors` ships
//! no config file; the defaults are that file.

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_LAYERS, MAX_WIDTH};
use crate::weights::{check_sizes, read_config};

/// Sizes of the Timestep-Aware Semantic Connector. `Default` is the official SD1.5 file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Width of the sinusoidal timestep features (320).
    pub time_channel: usize,
    /// Width of the timestep embedding (768).
    pub time_embed_dim: usize,
    /// Width of the resampler and of its output tokens (768, SD1.5's cross-attention width).
    pub width: usize,
    /// Number of perceiver blocks (6).
    pub layers: usize,
    /// Attention heads per block (8, of 96 channels each).
    pub heads: usize,
    /// Number of learned latents, i.e. of condition tokens out (64).
    pub num_latents: usize,
    /// Width of the text encoder's hidden states (2048 for flan-t5-xl).
    pub input_dim: usize,
    /// Optional output projection (Linear + LayerNorm); the SD1.5 file has none.
    pub output_dim: Option<usize>,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            time_channel: 320,
            time_embed_dim: 768,
            width: 768,
            layers: 6,
            heads: 8,
            num_latents: 64,
            input_dim: 2048,
            output_dim: None,
        }
    }
}

impl ConnectorConfig {
    /// Reads a JSON file with any of the fields (the rest keep the official values).
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::validate)
    }

    /// Checks that the sizes describe a buildable connector of a plausible size.
    pub fn validate(&self) -> Result<(), String> {
        check_sizes(&[
            ("time_channel", self.time_channel, MAX_WIDTH),
            ("time_embed_dim", self.time_embed_dim, MAX_WIDTH),
            ("width", self.width, MAX_WIDTH),
            ("layers", self.layers, MAX_LAYERS),
            ("heads", self.heads, self.width),
            ("num_latents", self.num_latents, 1 << 12),
            ("input_dim", self.input_dim, MAX_WIDTH),
            ("output_dim", self.output_dim.unwrap_or(1), MAX_WIDTH),
        ])?;
        if !self.width.is_multiple_of(self.heads) {
            return Err(format!(
                "`width` {} is not divisible by `heads` {}",
                self.width, self.heads
            ));
        }
        Ok(())
    }

    /// The width of the tokens the connector outputs.
    pub fn output_width(&self) -> usize {
        self.output_dim.unwrap_or(self.width)
    }
}
