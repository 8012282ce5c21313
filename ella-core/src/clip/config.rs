//! `ClipTextConfig`: the fields of a transformers `CLIPTextConfig` (`text_encoder/config.json`).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use crate::weights::{check_positive, check_sizes, read_config};

/// Names and defaults are transformers'; `sd15()` is SD1.5's text encoder.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "vocab")]
    pub vocab_size: usize,
    #[serde(default = "hidden")]
    pub hidden_size: usize,
    #[serde(default = "intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "heads")]
    pub num_attention_heads: usize,
    #[serde(default = "positions")]
    pub max_position_embeddings: usize,
    /// `quick_gelu` (OpenAI CLIP, SD1.5) or `gelu`.
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
}

fn vocab() -> usize {
    49408
}
fn hidden() -> usize {
    512
}
fn intermediate() -> usize {
    2048
}
fn layers() -> usize {
    12
}
fn heads() -> usize {
    8
}
fn positions() -> usize {
    77
}
fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// SD1.5's `text_encoder/config.json` (openai/clip-vit-large-patch14's text model).
    pub fn sd15() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_attention_heads: 12,
            ..serde_json::from_str("{}").expect("defaults")
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::validate)
    }

    pub fn validate(&self) -> Result<(), String> {
        check_sizes(&[
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("hidden_size", self.hidden_size, MAX_WIDTH),
            ("intermediate_size", self.intermediate_size, 4 * MAX_WIDTH),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            (
                "num_attention_heads",
                self.num_attention_heads,
                self.hidden_size,
            ),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 16,
            ),
        ])?;
        check_positive("layer_norm_eps", self.layer_norm_eps)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} is not divisible by `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !matches!(self.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(format!("`hidden_act` {} is not supported", self.hidden_act));
        }
        Ok(())
    }
}
