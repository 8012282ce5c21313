//! SD1.5's text encoder: CLIP ViT-L/14's text transformer (transformers' `CLIPTextModel`) and
//! its byte-level BPE tokenizer, 77 tokens. Plain SD1.5 conditions on its last hidden state;
//! ELLA's community mode appends it to the connector's tokens.

mod config;
mod model;
mod tokenizer;

use std::path::Path;

use crate::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

pub use config::ClipTextConfig;
pub use model::{ClipEncoderLayer, ClipTextModel};
pub use tokenizer::{CLIP_TOKENS, ClipTokenizer};

use crate::error::Result;

/// The tokenizer and the text model together: prompt in, hidden states out.
#[derive(Debug)]
pub struct ClipTextEncoder<B: Backend> {
    pub tokenizer: ClipTokenizer,
    pub model: ClipTextModel<B>,
}

impl<B: Backend> ClipTextEncoder<B> {
    /// Loads a diffusers SD folder's `text_encoder/` and `tokenizer/`.
    pub fn load(sd_folder: impl AsRef<Path>, device: &B::Device, dtype: DType) -> Result<Self> {
        let folder = sd_folder.as_ref();
        Ok(Self {
            tokenizer: ClipTokenizer::from_file(folder.join("tokenizer"))?,
            model: ClipTextModel::load(folder.join("text_encoder"), device, dtype)?,
        })
    }

    /// CLIP's last hidden state `[1, 77, hidden]` of one prompt, as SD pipelines condition
    /// on it (padded to 77 tokens, truncated beyond).
    pub fn encode(&self, prompt: &str) -> Result<Tensor<B, 3>> {
        self.encode_skip(prompt, 0)
    }

    /// [`ClipTextEncoder::encode`] with the last `skip` layers skipped
    /// ([`ClipTextModel::forward_skip`]).
    pub fn encode_skip(&self, prompt: &str, skip: usize) -> Result<Tensor<B, 3>> {
        let ids = self.tokenizer.encode(&[prompt])?.remove(0);
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        let len = ids.len();
        let device = self.model.token_embedding.device();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, len]), &device);
        self.model.forward_skip(ids, skip)
    }
}
