//! SUR-adapter (arXiv 2305.05189; official `SUR_adapter.py`): a small adapter, distilled from an
//! LLM during training, that rewrites CLIP's last hidden states once before denoising. No LLM
//! runs at inference.
//!
//! ```text
//! x (CLIP states) ─ 2 × post-norm transformer layer ─ T
//! W = softmax(query(T)·key(x)ᵀ/√d)·x + x;  A = output_layer(W) + W
//! out = w·fc(A) + (1 − w)·x            (w: the adapter weight, per request)
//! ```
//!
//! The official encoder is PyTorch's `nn.TransformerEncoder` with `batch_first=False` fed
//! `[batch, 77, d]`: it reads the prompts of a batch as the sequence and the 77 tokens as the
//! batch, so at each token position the prompts attend to each other — with classifier-free
//! guidance, the negative and the positive prompt. [`SurMode::Faithful`] reproduces that
//! exactly; [`SurMode::PerToken`] runs each prompt alone, as it was trained (batch size 1, a
//! sequence of length 1 per token).

use std::path::Path;

use crate::backend::Backend;
use crate::nn::Linear;
use burn::module::Module;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::{DType, Tensor};

use crate::error::{Error, Result};
use crate::nn::{LayerNorm, MultiheadAttention};
use crate::weights::{Checkpoint, Loader, load_checked};

/// How the adapter's transformer encoder sees a batch of prompts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SurMode {
    /// As the official pipeline runs it: the prompts of the batch (negative and positive)
    /// attend to each other at each token position. Reproduces its images.
    #[default]
    Faithful,
    /// As the adapter was trained: each prompt alone, each token a sequence of length 1.
    PerToken,
}

/// Sizes of an adapter, read from its file (the official one: width 768, 2 layers, FF 2048);
/// the head count is not in the file (8 officially).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SurAdapterConfig {
    pub width: usize,
    pub depth: usize,
    pub feed_forward: usize,
    pub heads: usize,
}

/// `nn.TransformerEncoderLayer` defaults: post-norm, ReLU, LayerNorm eps 1e-5.
#[derive(Module, Debug)]
pub struct EncoderLayer<B: Backend> {
    pub self_attn: MultiheadAttention<B>,
    pub linear1: Linear<B>,
    pub linear2: Linear<B>,
    pub norm1: LayerNorm<B>,
    pub norm2: LayerNorm<B>,
}

impl<B: Backend> EncoderLayer<B> {
    fn load(vb: &Loader<B>, config: &SurAdapterConfig) -> Result<Self> {
        let (d, ff) = (config.width, config.feed_forward);
        Ok(Self {
            self_attn: MultiheadAttention::load(&vb.pp("self_attn"), d, config.heads)?,
            linear1: Linear::load(&vb.pp("linear1"), d, ff, true)?,
            linear2: Linear::load(&vb.pp("linear2"), ff, d, true)?,
            norm1: LayerNorm::load(&vb.pp("norm1"), d, 1e-5)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), d, 1e-5)?,
        })
    }

    /// `[batch, seq, d]` → `x = norm1(x + SA(x))`, `norm2(x + linear2(relu(linear1(x))))`.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = self
            .norm1
            .forward(x.clone() + self.self_attn.forward(x.clone(), x));
        let ff = self.linear2.forward(relu(self.linear1.forward(x.clone())));
        self.norm2.forward(x + ff)
    }
}

#[derive(Module, Debug)]
pub struct SurAdapter<B: Backend> {
    pub layers: Vec<EncoderLayer<B>>,
    pub query_layer: Linear<B>,
    pub key_layer: Linear<B>,
    /// `output_layer.0` and `output_layer.2` (a ReLU between).
    pub output_1: Linear<B>,
    pub output_2: Linear<B>,
    pub fc: Linear<B>,
    #[module(skip)]
    pub config: SurAdapterConfig,
}

impl<B: Backend> SurAdapter<B> {
    /// Loads a SUR-adapter `.safetensors` (converted from the official `.pt` by
    /// `scripts/sur_adapter_to_safetensors.py`) with `heads` attention heads (8 officially).
    pub fn load(
        path: impl AsRef<Path>,
        heads: usize,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        Self::from_checkpoint(&Checkpoint::open(path)?, heads, device, dtype)
    }

    pub fn from_checkpoint(
        checkpoint: &Checkpoint,
        heads: usize,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidConfig {
            path: checkpoint.path().to_path_buf(),
            reason,
        };
        let width = match checkpoint.shape("fc.weight") {
            Some(&[out, inp]) if out == inp && out > 0 => out,
            Some(shape) => return Err(invalid(format!("`fc.weight` has shape {shape:?}"))),
            None => {
                return Err(Error::MissingTensor {
                    name: "fc.weight".into(),
                    path: checkpoint.path().to_path_buf(),
                    more: Default::default(),
                });
            }
        };
        let depth = (0..)
            .take_while(|i| {
                checkpoint
                    .shape(&format!("transformer_encoder.layers.{i}.linear1.weight"))
                    .is_some()
            })
            .count();
        let feed_forward = checkpoint
            .shape("transformer_encoder.layers.0.linear1.weight")
            .map_or(0, |s| s[0]);
        if depth == 0 || heads == 0 || width % heads != 0 {
            return Err(invalid(format!(
                "{depth} encoder layers, width {width}, {heads} heads: not a SUR-adapter this \
                 library runs (it needs layers and a width the heads divide)"
            )));
        }
        let config = SurAdapterConfig {
            width,
            depth,
            feed_forward,
            heads,
        };
        // The template layer the official module keeps, and the unused `value_layer`.
        let ignorable = |name: &str| {
            name.starts_with("encoder_layer.") || name.starts_with("attention.value_layer.")
        };
        let build = |vb: &Loader<B>| Self::from_loader(vb, config);
        Ok(load_checked(checkpoint, device, dtype, ignorable, build)?.0)
    }

    /// Builds the adapter of `config` from `vb` (the official names).
    pub fn from_loader(vb: &Loader<B>, config: SurAdapterConfig) -> Result<Self> {
        let d = config.width;
        let linear = |name: &str| Linear::load(&vb.pp(name), d, d, true);
        Ok(Self {
            layers: (0..config.depth)
                .map(|i| EncoderLayer::load(&vb.pp("transformer_encoder.layers").pp(i), &config))
                .collect::<Result<_>>()?,
            query_layer: linear("attention.query_layer")?,
            key_layer: linear("attention.key_layer")?,
            output_1: linear("attention.output_layer.0")?,
            output_2: linear("attention.output_layer.2")?,
            fc: linear("fc")?,
            config,
        })
    }

    /// The adapted CLIP states `w·fc(A) + (1 − w)·x` of `x` `[prompts, tokens, width]` (with
    /// classifier-free guidance: `[negative; positive]`, as the official pipeline passes them).
    pub fn forward(&self, x: Tensor<B, 3>, weight: f32, mode: SurMode) -> Result<Tensor<B, 3>> {
        let [prompts, tokens, width] = x.dims();
        if width != self.config.width {
            return Err(Error::InvalidInput(format!(
                "{width}-wide CLIP states for a {}-wide SUR-adapter",
                self.config.width
            )));
        }
        if !(0.0..=1.0).contains(&weight) {
            return Err(Error::InvalidInput(format!(
                "SUR-adapter weight {weight} must be in [0, 1]"
            )));
        }
        let encoder_input = match mode {
            // Token positions as the batch, prompts as the sequence.
            SurMode::Faithful => x.clone().swap_dims(0, 1),
            SurMode::PerToken => x.clone().reshape([prompts * tokens, 1, width]),
        };
        let encoded = self
            .layers
            .iter()
            .fold(encoder_input, |h, layer| layer.forward(h));
        let t = match mode {
            SurMode::Faithful => encoded.swap_dims(0, 1),
            SurMode::PerToken => encoded.reshape([prompts, tokens, width]),
        };
        let scores = self
            .query_layer
            .forward(t)
            .matmul(self.key_layer.forward(x.clone()).swap_dims(1, 2))
            / (width as f64).sqrt();
        let w = softmax(scores, 2).matmul(x.clone()) + x.clone();
        let a = self
            .output_2
            .forward(relu(self.output_1.forward(w.clone())))
            + w;
        Ok(self.fc.forward(a) * weight + x * (1.0 - weight))
    }
}
