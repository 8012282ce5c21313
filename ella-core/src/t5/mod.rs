//! The frozen T5 text encoder (flan-t5-xl for the official connector) and its tokenizer.

mod config;
mod model;
mod tokenizer;

use std::path::Path;

use crate::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

pub use config::{FeedForwardProj, T5Config, T5Precision};
pub use model::{
    T5Attention, T5Block, T5Encoder, T5FeedForward, T5LayerNorm, relative_position_buckets,
};
pub use tokenizer::{T5Tokenizer, TokenBatch, TokenMode};

use crate::cancel::Cancel;
use crate::error::{Error, Result};

/// Prompt in, T5 hidden states out: the tokenizer and the encoder of one model folder
/// (as the official `models--google--flan-t5-xl--text_encoder`: `config.json`,
/// `tokenizer.json`, `model.safetensors`).
#[derive(Debug)]
pub struct T5TextEncoder<B: Backend> {
    pub tokenizer: T5Tokenizer,
    pub encoder: T5Encoder<B>,
}

impl<B: Backend> T5TextEncoder<B> {
    /// Loads the folder with f32 weights (the CPU default).
    pub fn load(folder: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        Self::load_with_precision(folder, device, T5Precision::F32)
    }

    /// Loads the folder with weights and activations in `precision`. The official ELLA
    /// code runs T5 in F16 ([`T5Precision::F16`]), and the connector was trained on F16 T5
    /// outputs; use it on backends that have F16.
    pub fn load_with_precision(
        folder: impl AsRef<Path>,
        device: &B::Device,
        precision: T5Precision,
    ) -> Result<Self> {
        let folder = folder.as_ref();
        Ok(Self {
            tokenizer: T5Tokenizer::from_file(folder.join("tokenizer.json"))?,
            encoder: T5Encoder::load(folder, device, precision)?,
        })
    }

    /// Hidden states `[1, seq, d_model]` of one prompt. In flexible mode `seq` is the
    /// prompt's own token count; in fixed mode it is the fixed length, padding included.
    pub fn encode(&self, prompt: &str, mode: TokenMode) -> Result<Tensor<B, 3>> {
        let tokens = self.tokenizer.encode(&[prompt], mode)?;
        self.encode_tokens(&tokens)
    }

    /// Hidden states `[batch, seq, d_model]` of already tokenized prompts.
    pub fn encode_tokens(&self, tokens: &TokenBatch) -> Result<Tensor<B, 3>> {
        self.encode_tokens_with(tokens, Cancel::NEVER)
    }

    /// [`T5TextEncoder::encode_tokens`], stopping between layers once `cancel` is set.
    pub fn encode_tokens_with(&self, tokens: &TokenBatch, cancel: Cancel) -> Result<Tensor<B, 3>> {
        let batch = tokens.ids.len();
        let seq = tokens.ids.first().map_or(0, Vec::len);
        if batch == 0 || seq == 0 {
            return Err(Error::InvalidInput("no tokens to encode".into()));
        }
        if tokens
            .ids
            .iter()
            .chain(&tokens.mask)
            .any(|row| row.len() != seq)
        {
            return Err(Error::InvalidInput(
                "token rows and masks must all have the same length".into(),
            ));
        }
        let vocab = self.encoder.config.vocab_size;
        if let Some(id) = tokens
            .ids
            .iter()
            .flatten()
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::InvalidInput(format!(
                "token id {id} is outside the encoder's vocabulary of {vocab}; \
                 the tokenizer and the model do not belong together"
            )));
        }
        let device = self.encoder.shared.device();
        let to_tensor = |rows: &[Vec<u32>]| {
            let flat: Vec<i64> = rows.iter().flatten().map(|&v| i64::from(v)).collect();
            Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [batch, seq]), &device)
        };
        self.encoder.forward(
            to_tensor(&tokens.ids),
            Some(to_tensor(&tokens.mask)),
            cancel,
        )
    }
}
