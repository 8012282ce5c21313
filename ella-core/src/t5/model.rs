//! The T5 encoder stack as HF's `T5EncoderModel` computes `last_hidden_state`.
//!
//! Pre-norm blocks of self-attention and feed-forward with residuals; T5's RMS layer norm
//! (no mean subtraction, no bias, statistics in f32); attention scores without the
//! `1/sqrt(d_kv)` scale; a relative position bias computed once (block 0's table) and
//! shared by every block; padding keys masked; a final layer norm. Padding positions are
//! not zeroed: ELLA's fixed-length mode consumes them.

use std::path::Path;

use crate::backend::Backend;
use crate::nn::Linear;
use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use super::config::{T5Config, T5Precision};
use crate::cancel::Cancel;
use crate::error::Result;
use crate::nn::{Activation, multi_head_attention};
use crate::weights::{Checkpoint, Loader, check_config, load_checked};

/// T5's layer norm: `x / sqrt(mean(x²) + eps) · weight`, with the statistics in f32.
#[derive(Module, Debug)]
pub struct T5LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> T5LayerNorm<B> {
    pub fn load(vb: &Loader<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [dim])?),
            eps,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let variance = x.clone().powi_scalar(2).mean_dim(2);
        // A division, not `recip()`: ndarray's SIMD reciprocal is a ~12-bit approximation.
        let normed = (x / (variance + self.eps).sqrt()).cast(dtype);
        normed * self.weight.val().unsqueeze::<3>()
    }
}

/// `T5Attention` (encoder self-attention; no biases anywhere in T5).
#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
}

/// `DenseReluDense`: `wo(act(wi x))`, or `wo(act(wi_0 x) · wi_1 x)` when gated.
#[derive(Module, Debug)]
pub struct T5FeedForward<B: Backend> {
    /// `wi` (ungated) or `wi_0` (gated: the branch that goes through the activation).
    pub wi_0: Linear<B>,
    /// `wi_1`, the linear branch of a gated feed-forward.
    pub wi_1: Option<Linear<B>>,
    pub wo: Linear<B>,
    #[module(skip)]
    pub activation: Activation,
}

/// One encoder block: `layer.0` (self-attention) and `layer.1` (feed-forward), each pre-norm.
#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    pub attention_norm: T5LayerNorm<B>,
    pub attention: T5Attention<B>,
    pub feed_forward_norm: T5LayerNorm<B>,
    pub feed_forward: T5FeedForward<B>,
}

/// The T5 encoder: token ids (and padding mask) in, `last_hidden_state` out.
#[derive(Module, Debug)]
pub struct T5Encoder<B: Backend> {
    /// `shared.weight`, the token embedding `[vocab, d_model]`.
    pub shared: Param<Tensor<B, 2>>,
    /// Block 0's `relative_attention_bias.weight`, `[num_buckets, num_heads]`.
    pub relative_attention_bias: Param<Tensor<B, 2>>,
    pub block: Vec<T5Block<B>>,
    pub final_layer_norm: T5LayerNorm<B>,
    #[module(skip)]
    pub config: T5Config,
}

impl<B: Backend> T5Attention<B> {
    fn load(vb: &Loader<B>, config: &T5Config) -> Result<Self> {
        let (d, inner) = (config.d_model, config.num_heads * config.d_kv);
        Ok(Self {
            q: Linear::load(&vb.pp("q"), d, inner, false)?,
            k: Linear::load(&vb.pp("k"), d, inner, false)?,
            v: Linear::load(&vb.pp("v"), d, inner, false)?,
            o: Linear::load(&vb.pp("o"), inner, d, false)?,
            num_heads: config.num_heads,
        })
    }

    fn forward(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let out = multi_head_attention(
            self.q.forward(x.clone()),
            self.k.forward(x.clone()),
            self.v.forward(x),
            self.num_heads,
            Some(1.0),
            mask,
            Some(bias),
        );
        self.o.forward(out)
    }
}

impl<B: Backend> T5FeedForward<B> {
    /// `wi` (or `wi_0` and `wi_1` when gated) and `wo`, `wo` in `wo_dtype`.
    fn load(vb: &Loader<B>, config: &T5Config, wo_dtype: DType) -> Result<Self> {
        let (d, d_ff) = (config.d_model, config.d_ff);
        let (wi_0, wi_1) = match config.feed_forward_proj.gated {
            true => (
                Linear::load(&vb.pp("wi_0"), d, d_ff, false)?,
                Some(Linear::load(&vb.pp("wi_1"), d, d_ff, false)?),
            ),
            false => (Linear::load(&vb.pp("wi"), d, d_ff, false)?, None),
        };
        Ok(Self {
            wi_0,
            wi_1,
            wo: Linear::load_as(&vb.pp("wo"), d_ff, d, false, wo_dtype)?,
            activation: config.feed_forward_proj.activation,
        })
    }

    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = self.activation.apply(self.wi_0.forward(x.clone()));
        let hidden = match &self.wi_1 {
            Some(wi_1) => hidden * wi_1.forward(x),
            None => hidden,
        };
        // HF casts the product to `wo`'s dtype when they differ (wo kept in f32).
        let hidden = hidden.cast(self.wo.weight.val().dtype());
        self.wo.forward(hidden)
    }
}

impl<B: Backend> T5Block<B> {
    fn load(vb: &Loader<B>, config: &T5Config, wo_dtype: DType) -> Result<Self> {
        let (d, eps) = (config.d_model, config.layer_norm_epsilon);
        let (attention, feed_forward) = (vb.pp("layer.0"), vb.pp("layer.1"));
        Ok(Self {
            attention_norm: T5LayerNorm::load(&attention.pp("layer_norm"), d, eps)?,
            attention: T5Attention::load(&attention.pp("SelfAttention"), config)?,
            feed_forward_norm: T5LayerNorm::load(&feed_forward.pp("layer_norm"), d, eps)?,
            feed_forward: T5FeedForward::load(
                &feed_forward.pp("DenseReluDense"),
                config,
                wo_dtype,
            )?,
        })
    }

    fn forward(
        &self,
        h: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 3> {
        let h = h.clone()
            + self
                .attention
                .forward(self.attention_norm.forward(h), bias, mask);
        let h = clamp_half(h);
        let ff = self
            .feed_forward
            .forward(self.feed_forward_norm.forward(h.clone()))
            .cast(h.dtype());
        clamp_half(h + ff)
    }
}

/// HF clamps f16 activations to ±(65504 − 1000) so that an overflow in one layer does not
/// turn the rest of the stack into inf/NaN. No-op for other dtypes.
fn clamp_half<B: Backend>(h: Tensor<B, 3>) -> Tensor<B, 3> {
    if h.dtype() == DType::F16 {
        let limit = 65504.0 - 1000.0;
        h.clamp(-limit, limit)
    } else {
        h
    }
}

impl<B: Backend> T5Encoder<B> {
    /// Loads an HF T5 encoder folder: `config.json` and `model.safetensors` (or a sharded
    /// `model.safetensors.index.json`). Weights are converted to `precision`'s dtypes (F32
    /// on CPU; F16 is what the official ELLA code runs T5 in).
    pub fn load(
        folder: impl AsRef<Path>,
        device: &B::Device,
        precision: T5Precision,
    ) -> Result<Self> {
        let folder = folder.as_ref();
        let config = T5Config::from_file(&folder.join("config.json"))?;
        let checkpoint = Checkpoint::open(folder)?;
        Self::from_checkpoint(config, &checkpoint, device, precision)
    }

    /// Builds the encoder from an opened checkpoint after checking every tensor name, shape
    /// and dtype against `config`. `encoder.embed_tokens.weight` is accepted in place of
    /// `shared.weight`; `decoder.*` and `lm_head.*` (a full seq2seq file) are ignored.
    pub fn from_checkpoint(
        config: T5Config,
        checkpoint: &Checkpoint,
        device: &B::Device,
        precision: T5Precision,
    ) -> Result<Self> {
        check_config(config.validate(), checkpoint.path())?;
        let embedding = if checkpoint.shape("shared.weight").is_none()
            && checkpoint.shape("encoder.embed_tokens.weight").is_some()
        {
            "encoder.embed_tokens.weight"
        } else {
            "shared.weight"
        };
        let ignorable = |name: &str| {
            name == "encoder.embed_tokens.weight"
                || name == "shared.weight"
                || name.starts_with("decoder.")
                || name.starts_with("lm_head.")
        };
        let build = |vb: &Loader<B>| Self::from_loader(vb, &config, precision, embedding);
        Ok(load_checked(checkpoint, device, precision.dtype(), ignorable, build)?.0)
    }

    /// Builds the encoder of a validated `config` from `vb` (HF's names), the token
    /// embedding read from `embedding` (`shared.weight` or `encoder.embed_tokens.weight`).
    pub fn from_loader(
        vb: &Loader<B>,
        config: &T5Config,
        precision: T5Precision,
        embedding: &str,
    ) -> Result<Self> {
        let d = config.d_model;
        let encoder = vb.pp("encoder");
        Ok(Self {
            shared: Param::from_tensor(vb.tensor(embedding, [config.vocab_size, d])?),
            relative_attention_bias: Param::from_tensor(encoder.tensor(
                "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                [config.relative_attention_num_buckets, config.num_heads],
            )?),
            block: (0..config.num_layers)
                .map(|i| T5Block::load(&encoder.pp("block").pp(i), config, precision.wo_dtype()))
                .collect::<Result<_>>()?,
            final_layer_norm: T5LayerNorm::load(
                &encoder.pp("final_layer_norm"),
                d,
                config.layer_norm_epsilon,
            )?,
            config: config.clone(),
        })
    }

    /// `last_hidden_state` `[batch, seq, d_model]` for token ids `[batch, seq]`.
    /// `attention_mask` (1 = token, 0 = padding; `[batch, seq]`) hides padding keys. Stops
    /// between blocks once `cancel` is set.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        cancel: Cancel,
    ) -> Result<Tensor<B, 3>> {
        let [batch, seq] = input_ids.dims();
        let heads = self.config.num_heads;
        let device = input_ids.device();
        let mut h = embedding(self.shared.val(), input_ids);

        let buckets = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                relative_position_buckets(
                    seq,
                    self.config.relative_attention_num_buckets,
                    self.config.relative_attention_max_distance,
                ),
                [seq, seq],
            ),
            &device,
        );
        // [seq, seq, heads] → [1, heads, seq, seq], shared by every block.
        let bias = embedding(self.relative_attention_bias.val(), buckets)
            .permute([2, 0, 1])
            .unsqueeze::<4>()
            .expand([batch, heads, seq, seq]);
        let mask = attention_mask.map(|mask| {
            mask.equal_elem(0)
                .reshape([batch, 1, 1, seq])
                .expand([batch, heads, seq, seq])
        });
        for block in &self.block {
            cancel.check()?;
            h = block.forward(h, bias.clone(), mask.clone());
        }
        Ok(self.final_layer_norm.forward(h))
    }
}

/// T5's bidirectional relative-position buckets, `[query, key]` row-major, exactly as HF's
/// `_relative_position_bucket` (the log computed in f32 and truncated toward zero).
pub fn relative_position_buckets(seq: usize, num_buckets: usize, max_distance: usize) -> Vec<i64> {
    let half = num_buckets / 2;
    let max_exact = half / 2;
    let log_range = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let mut buckets = Vec::with_capacity(seq * seq);
    for query in 0..seq as i64 {
        for key in 0..seq as i64 {
            let relative = key - query;
            let base = if relative > 0 { half } else { 0 };
            let n = relative.unsigned_abs() as usize;
            let offset = if n < max_exact {
                n
            } else {
                let large = ((n as f32 / max_exact as f32).ln() / log_range
                    * (half - max_exact) as f32) as usize;
                (max_exact + large).min(half - 1)
            };
            buckets.push((base + offset) as i64);
        }
    }
    buckets
}
