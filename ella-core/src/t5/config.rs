//! `T5Config`: the fields of an HF T5 `config.json` that the encoder uses.

use std::path::Path;

use serde::Deserialize;
use serde::de::IntoDeserializer;

use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::limits::{MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use crate::nn::Activation;
use crate::weights::{check_positive, check_sizes, read_config};

/// The encoder's part of an HF `T5Config`. Field names and defaults are HF's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    #[serde(default = "default_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub feed_forward_proj: FeedForwardProj,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

fn default_num_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_eos() -> u32 {
    1
}

/// `feed_forward_proj`: `"relu"` (T5 v1.0, the default), `"gated-gelu"` (T5 v1.1 and
/// flan-t5) or `"[gated-]ACT"`, parsed as HF parses it into `dense_act_fn` and
/// `is_gated_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FeedForwardProj {
    pub activation: Activation,
    /// `wo(act(wi_0 x) · wi_1 x)` rather than `wo(act(wi x))`.
    pub gated: bool,
}

impl Default for FeedForwardProj {
    fn default() -> Self {
        Self {
            activation: Activation::Relu,
            gated: false,
        }
    }
}

impl TryFrom<String> for FeedForwardProj {
    type Error = String;

    fn try_from(proj: String) -> Result<Self, String> {
        // HF special-cases `gated-gelu` to `gelu_new`.
        if proj == "gated-gelu" {
            return Ok(Self {
                activation: Activation::GeluNew,
                gated: true,
            });
        }
        let (act, gated) = match proj.strip_prefix("gated-") {
            Some(act) => (act, true),
            None => (proj.as_str(), false),
        };
        let activation = Activation::deserialize(act.into_deserializer()).map_err(
            |_: serde::de::value::Error| {
                format!(
                    "`feed_forward_proj` \"{proj}\" is not supported (relu, gelu, gelu_new, \
                     quick_gelu, silu, each optionally `gated-`)"
                )
            },
        )?;
        Ok(Self { activation, gated })
    }
}

impl T5Config {
    /// `google/flan-t5-xl`, the text encoder of the official ELLA SD1.5 connector.
    pub fn flan_t5_xl() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 2048,
            d_kv: 64,
            d_ff: 5120,
            num_layers: 24,
            num_heads: 32,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: FeedForwardProj {
                activation: Activation::GeluNew,
                gated: true,
            },
            pad_token_id: 0,
            eos_token_id: 1,
        }
    }

    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::validate)
    }

    /// Checks that the sizes describe a buildable encoder of a plausible size.
    pub fn validate(&self) -> Result<(), String> {
        check_sizes(&[
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("d_model", self.d_model, MAX_WIDTH),
            ("d_kv", self.d_kv, MAX_WIDTH),
            ("d_ff", self.d_ff, 4 * MAX_WIDTH),
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_heads", self.num_heads, MAX_WIDTH),
            (
                "num_heads × d_kv",
                self.num_heads.saturating_mul(self.d_kv),
                MAX_WIDTH,
            ),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
                1 << 20,
            ),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
                1 << 12,
            ),
        ])?;
        if self.relative_attention_num_buckets < 4
            || !self.relative_attention_num_buckets.is_multiple_of(2)
        {
            return Err("`relative_attention_num_buckets` must be an even number ≥ 4".into());
        }
        check_positive("layer_norm_epsilon", self.layer_norm_epsilon)
    }
}

/// The precision T5 runs in. The official ELLA code moves the whole encoder to f16
/// (`.to(torch.float16)`, `wo` included), and the connector was trained on those states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum T5Precision {
    /// f32 throughout: the CPU default.
    #[default]
    F32,
    /// Everything in f16, `wo` included, as the official code (the GPU default).
    F16,
    /// f16 with the feed-forward output projections `wo` in f32, as transformers loads T5 in
    /// f16 (`_keep_in_fp32_modules`): flan-t5's largest activations come out of `wo`.
    F16WoF32,
    /// bf16 throughout (CUDA): f32's range, about three fewer significant bits than f16.
    BF16,
}

impl T5Precision {
    /// The dtype of the weights and activations.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 | Self::F16WoF32 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }

    /// The dtype of the `wo` projections.
    pub fn wo_dtype(self) -> DType {
        match self {
            Self::F16WoF32 => DType::F32,
            other => other.dtype(),
        }
    }

    /// The whole encoder in `dtype` (F32, F16 or BF16).
    pub fn uniform(dtype: DType) -> Result<Self> {
        match dtype {
            DType::F32 => Ok(Self::F32),
            DType::F16 => Ok(Self::F16),
            DType::BF16 => Ok(Self::BF16),
            other => Err(Error::InvalidInput(format!(
                "T5 runs in F32, F16 or BF16, not {other:?}"
            ))),
        }
    }
}
