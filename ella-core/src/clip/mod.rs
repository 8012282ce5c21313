//! SD1.5's text encoder: CLIP ViT-L/14's text transformer (transformers' `CLIPTextModel`) and
//! its byte-level BPE tokenizer, 77 tokens. Plain SD1.5 conditions on its last hidden state;
//! ELLA's community mode appends it to the connector's tokens.

mod config;
mod embedding;
mod model;
mod tokenizer;

use std::path::Path;

use crate::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

pub use config::ClipTextConfig;
pub use embedding::TextualInversion;
pub use model::{ClipEncoderLayer, ClipTextModel};
pub use tokenizer::{CLIP_TOKENS, ClipChunk, ClipTokenizer};

use crate::error::{Error, Result};
use crate::prompt_syntax;

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

    /// Adds textual-inversion embeddings, in order: their names become tokens of the
    /// tokenizer, their vectors rows of the token-embedding table. Each is checked (its width
    /// is CLIP's, its name is no token yet) before any is added.
    pub fn add_embeddings(&mut self, embeddings: &[TextualInversion]) -> Result<()> {
        let hidden = self.model.config.hidden_size;
        if let Some(wrong) = embeddings.iter().find(|e| e.vectors.shape[1] != hidden) {
            return Err(Error::IncompatibleModels(format!(
                "the embedding `{}` has vectors of {} values; this CLIP's are {hidden} wide                  (an embedding for another model)",
                wrong.name, wrong.vectors.shape[1]
            )));
        }
        let (ids, rows) = (self.tokenizer.vocab_size(), self.model.config.vocab_size);
        if ids != rows {
            return Err(Error::IncompatibleModels(format!(
                "the CLIP tokenizer has {ids} ids but the text encoder {rows} token embeddings: \
                 new tokens would not find their vectors"
            )));
        }
        let mut tokenizer = self.tokenizer.clone();
        for embedding in embeddings {
            tokenizer.add_embedding(&embedding.name, embedding.vector_count())?;
        }
        let device = self.model.token_embedding.device();
        for embedding in embeddings {
            let rows = Tensor::<B, 2>::from_data(embedding.vectors.clone(), &device);
            self.model.add_token_embeddings(rows);
        }
        self.tokenizer = tokenizer;
        Ok(())
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

    /// A prompt with A1111's weight syntax, of any length, as A1111 encodes it:
    /// `[1, 77 · chunks, hidden]` ([`prompt_syntax::parse`], [`ClipTokenizer::chunks`],
    /// [`ClipTextEncoder::encode_chunks`]).
    pub fn encode_weighted(&self, prompt: &str, skip: usize) -> Result<Tensor<B, 3>> {
        let chunks = self.tokenizer.chunks(&prompt_syntax::parse(prompt)?)?;
        self.encode_chunks(&chunks, skip)
    }

    /// Each chunk encoded on its own (no chunk sees another), its states multiplied by its
    /// tokens' weights and then rescaled to the chunk's unweighted mean (A1111's "Original"
    /// emphasis, which keeps a weighted prompt's overall magnitude), the chunks concatenated
    /// along the tokens.
    pub fn encode_chunks(&self, chunks: &[ClipChunk], skip: usize) -> Result<Tensor<B, 3>> {
        let n = chunks.len();
        let ids: Vec<i64> = chunks
            .iter()
            .flat_map(|c| c.ids.iter().map(|&id| i64::from(id)))
            .collect();
        let device = self.model.token_embedding.device();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, CLIP_TOKENS]), &device);
        let z = self.model.forward_skip(ids, skip)?;
        let [_, _, width] = z.dims();
        // All weights 1 leave the states as they are (A1111's ratio is then exactly 1).
        let z = match chunks.iter().all(|c| c.weights.iter().all(|&w| w == 1.0)) {
            true => z,
            false => {
                // A1111 multiplies by the weights as f32.
                let weights: Vec<f32> = chunks
                    .iter()
                    .flat_map(|c| c.weights.iter().map(|&w| w as f32))
                    .collect();
                let weights = Tensor::<B, 3>::from_data(
                    TensorData::new(weights, [n, CLIP_TOKENS, 1]).convert_dtype(z.dtype()),
                    (&device, z.dtype()),
                );
                let mean = |z: &Tensor<B, 3>| {
                    z.clone()
                        .reshape([n, CLIP_TOKENS * width])
                        .mean_dim(1)
                        .reshape([n, 1, 1])
                };
                let original_mean = mean(&z);
                let weighted = z * weights;
                let ratio = original_mean / mean(&weighted);
                weighted * ratio
            }
        };
        Ok(z.reshape([1, n * CLIP_TOKENS, width]))
    }
}
