//! CLIP's byte-level BPE tokenizer (`tokenizer.json`): `<|startoftext|>`, the prompt
//! (lower-cased, truncated), `<|endoftext|>`, padded to 77 tokens as SD pipelines do.

use std::path::{Path, PathBuf};

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::weights::open_tokenizer;

/// The number of tokens SD's CLIP text encoder reads.
pub const CLIP_TOKENS: usize = 77;

/// The tokenizer of a `tokenizer/` folder, padding with `<|endoftext|>` (SD1.5's pad token).
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` (the file, or the `tokenizer/` folder holding it).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let (mut inner, path) = open_tokenizer(path.as_ref())?;
        let failed = |reason: String| Error::Tokenizer {
            path: path.clone(),
            reason,
        };
        let pad_token = "<|endoftext|>";
        let pad_id = inner
            .token_to_id(pad_token)
            .ok_or_else(|| failed(format!("no `{pad_token}` token")))?;
        if inner.token_to_id("<|startoftext|>").is_none() {
            return Err(failed("no `<|startoftext|>` token".into()));
        }
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(CLIP_TOKENS),
            pad_id,
            pad_token: pad_token.into(),
            ..Default::default()
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: CLIP_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self { inner, path })
    }

    /// `[batch][77]` token ids.
    pub fn encode(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .inner
            .encode_batch(prompts.to_vec(), true)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }
}
