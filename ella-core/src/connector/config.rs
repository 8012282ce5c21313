//! `ConnectorConfig`: the sizes of ELLA's connector, named as the arguments of the
//! reference `ELLA(...)` constructor. The official `ella-sd1.5-tsc-t5xl.safetensors` ships
//! no config file; the defaults are that file.

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_LAYERS, MAX_WIDTH};
use crate::weights::{TensorSpec, check_sizes, linear_specs, read_config};

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

    /// Every tensor of the connector's state dict, official names.
    pub fn expected_tensors(&self) -> Vec<TensorSpec> {
        let (w, t) = (self.width, self.time_embed_dim);
        let mut specs = linear_specs("time_embedding.linear_1", self.time_channel, t, true);
        specs.extend(linear_specs("time_embedding.linear_2", t, t, true));
        specs.push(TensorSpec::new("connector.latents", &[self.num_latents, w]));
        specs.extend(linear_specs("connector.time_aware_linear", t, w, true));
        specs.extend(linear_specs("connector.proj_in", self.input_dim, w, true));
        for i in 0..self.layers {
            let block = format!("connector.perceiver_blocks.{i}");
            specs.push(TensorSpec::new(
                format!("{block}.attn.in_proj_weight"),
                &[3 * w, w],
            ));
            specs.push(TensorSpec::new(
                format!("{block}.attn.in_proj_bias"),
                &[3 * w],
            ));
            specs.extend(linear_specs(&format!("{block}.attn.out_proj"), w, w, true));
            specs.extend(linear_specs(&format!("{block}.mlp.c_fc"), w, 4 * w, true));
            specs.extend(linear_specs(&format!("{block}.mlp.c_proj"), 4 * w, w, true));
            for norm in ["ln_1", "ln_2", "ln_ff"] {
                specs.extend(linear_specs(
                    &format!("{block}.{norm}.linear"),
                    t,
                    2 * w,
                    true,
                ));
            }
        }
        if let Some(out) = self.output_dim {
            specs.extend(linear_specs("connector.proj_out.0", w, out, true));
            specs.push(TensorSpec::new("connector.proj_out.1.weight", &[out]));
            specs.push(TensorSpec::new("connector.proj_out.1.bias", &[out]));
        }
        specs
    }
}
