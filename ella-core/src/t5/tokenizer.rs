//! The T5 tokenizer (`tokenizer.json`, through the `tokenizers` crate) with ELLA's two
//! token-length modes.

use std::path::{Path, PathBuf};

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::limits::{MAX_T5_TOKENS, check_prompt_lengths};
use crate::weights::{open_tokenizer, tokenizers_call};

/// How prompts are cut into T5 tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenMode {
    /// The prompt's own length, no padding and no truncation (`""` is the single `</s>`).
    /// The default of the official demo and of ComfyUI-ELLA; better for short prompts.
    #[default]
    Flexible,
    /// Padded or truncated to exactly this many tokens (ELLA was trained with 128). A
    /// truncated prompt still ends in `</s>`; the padding's T5 outputs reach the connector.
    Fixed(usize),
}

impl TokenMode {
    /// The training length of ELLA: fixed 128 tokens.
    pub const FIXED_128: TokenMode = TokenMode::Fixed(128);
}

/// Token ids of a batch of prompts, padded to a common length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    /// `[batch][seq]` token ids; padding is the pad id (0 for T5).
    pub ids: Vec<Vec<u32>>,
    /// `[batch][seq]`, 1 for tokens and 0 for padding.
    pub mask: Vec<Vec<u32>>,
}

impl TokenBatch {
    /// The number of real tokens (`</s>` included) of each prompt.
    pub fn lengths(&self) -> Vec<usize> {
        self.mask
            .iter()
            .map(|row| row.iter().filter(|&&m| m != 0).count())
            .collect()
    }
}

/// T5's SentencePiece tokenizer as stored in `tokenizer.json`; appends `</s>`.
#[derive(Clone)]
pub struct T5Tokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pad_id: u32,
}

impl std::fmt::Debug for T5Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T5Tokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl T5Tokenizer {
    /// Loads `tokenizer.json` (a file, or the folder holding it).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let (mut inner, path) = open_tokenizer(path.as_ref())?;
        let failed = |reason: String| Error::Tokenizer {
            path: path.clone(),
            reason,
        };
        let pad_id = inner
            .token_to_id("<pad>")
            .ok_or_else(|| failed("no `<pad>` token".into()))?;
        if inner.token_to_id("</s>").is_none() {
            return Err(failed("no `</s>` token".into()));
        }
        // Padding and truncation are set per call from the token mode.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| failed(e.to_string()))?;
        Ok(Self {
            inner,
            path,
            pad_id,
        })
    }

    /// Tokenizes prompts. Flexible mode pads a batch to its longest prompt (mask 0 on the
    /// padding); fixed mode pads or truncates every prompt to the fixed length. Prompts over
    /// [`MAX_PROMPT_BYTES`](crate::limits::MAX_PROMPT_BYTES) and token counts over [`MAX_T5_TOKENS`] are refused.
    pub fn encode(&self, prompts: &[&str], mode: TokenMode) -> Result<TokenBatch> {
        let failed = |reason: String| Error::Tokenizer {
            path: self.path.clone(),
            reason,
        };
        check_prompt_lengths(prompts)?;
        let mut tokenizer = self.inner.clone();
        let padding = PaddingParams {
            pad_id: self.pad_id,
            pad_token: "<pad>".into(),
            ..Default::default()
        };
        match mode {
            TokenMode::Flexible => {
                tokenizer.with_padding(Some(PaddingParams {
                    strategy: PaddingStrategy::BatchLongest,
                    ..padding
                }));
            }
            TokenMode::Fixed(length) => {
                if !(1..=MAX_T5_TOKENS).contains(&length) {
                    return Err(Error::InvalidInput(format!(
                        "a fixed token length must be 1 (room for `</s>`) to {MAX_T5_TOKENS}, \
                         not {length}"
                    )));
                }
                tokenizer.with_padding(Some(PaddingParams {
                    strategy: PaddingStrategy::Fixed(length),
                    ..padding
                }));
                tokenizer
                    .with_truncation(Some(TruncationParams {
                        max_length: length,
                        ..Default::default()
                    }))
                    .map_err(|e| failed(e.to_string()))?;
            }
        }
        let encodings = tokenizers_call(&self.path, || {
            tokenizer.encode_batch(prompts.to_vec(), true)
        })?;
        if let Some(long) = encodings.iter().find(|e| e.len() > MAX_T5_TOKENS) {
            return Err(Error::InvalidInput(format!(
                "a prompt of {} T5 tokens is longer than the {MAX_T5_TOKENS} read (ELLA was \
                 trained on 128; fixed mode truncates)",
                long.len()
            )));
        }
        Ok(TokenBatch {
            ids: encodings.iter().map(|e| e.get_ids().to_vec()).collect(),
            mask: encodings
                .iter()
                .map(|e| e.get_attention_mask().to_vec())
                .collect(),
        })
    }
}
