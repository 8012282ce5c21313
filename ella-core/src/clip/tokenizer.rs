//! CLIP's byte-level BPE tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt` as in
//! SD1.5's own `tokenizer/` folder): `<|startoftext|>`, the prompt (lower-cased, truncated),
//! `<|endoftext|>`, padded to 77 tokens as SD pipelines do; or, for A1111's weighted
//! prompts, any number of such 77-token chunks.

use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, Result};
use crate::limits::{MAX_CLIP_CHUNKS, check_prompt_lengths};
use crate::prompt_syntax::BREAK;
use crate::weights::{open_tokenizer, read_json, read_text, tokenizers_call};

/// The number of tokens SD's CLIP text encoder reads.
pub const CLIP_TOKENS: usize = 77;

/// The tokens of a prompt between `<|startoftext|>` and `<|endoftext|>`.
const CHUNK_LENGTH: usize = CLIP_TOKENS - 2;

/// A1111's "Prompt word wrap length limit" (`comma_padding_backtrack`), its default: a chunk
/// that fills up within this many tokens of a comma is cut after the comma.
const COMMA_BACKTRACK: usize = 20;

/// The tokenizer of a `tokenizer/` folder, padding with `<|endoftext|>` (SD1.5's pad token),
/// with the names of the textual-inversion embeddings added.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    bos: u32,
    eos: u32,
    /// `,</w>`, where A1111 prefers to cut a long prompt (none in a vocabulary without it).
    comma: Option<u32>,
    /// The first id and vector count of every embedding of more than one vector: a prompt's
    /// name gives its first id, followed here by the others.
    multi_vector: Vec<(u32, u32)>,
}

/// One 77-token chunk of a weighted prompt: `<|startoftext|>`, up to 75 tokens,
/// `<|endoftext|>` padding, and each token's weight (1 for the special tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipChunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f64>,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("path", &self.path)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `tokenizer.json` (the file, or the `tokenizer/` folder holding it), or a folder
    /// with `vocab.json` and `merges.txt` only (SD1.5's), read as transformers'
    /// `CLIPTokenizer` reads them.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (mut inner, path) = match path.is_dir() && !path.join("tokenizer.json").exists() {
            true => (from_vocab_and_merges(path)?, path.join("vocab.json")),
            false => open_tokenizer(path)?,
        };
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                reason: format!("no `{token}` token"),
            })
        };
        let (bos, eos) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        let comma = inner.token_to_id(",</w>");
        // The special tokens, the length and the padding are ours to add (`encode`, `chunks`).
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path,
            bos,
            eos,
            comma,
            multi_vector: Vec::new(),
        })
    }

    /// The number of ids, the added embedding tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Adds the tokens of an embedding of `vectors` vectors called `name` (`name`, `name_1`, …
    /// as diffusers' `load_textual_inversion`), matched in prompts case-insensitively, inside
    /// words too, as diffusers matches them; returns the first id (the ids are consecutive,
    /// from the current [`ClipTokenizer::vocab_size`]). A name the vocabulary has already is
    /// refused.
    pub fn add_embedding(&mut self, name: &str, vectors: usize) -> Result<u32> {
        let first = self.vocab_size() as u32;
        let tokens: Vec<String> = (0..vectors)
            .map(|i| match i {
                0 => name.to_string(),
                i => format!("{name}_{i}"),
            })
            .collect();
        if let Some(taken) = tokens.iter().find(|t| self.inner.token_to_id(t).is_some()) {
            return Err(Error::InvalidInput(format!(
                "the embedding name `{taken}` is a token CLIP has already; rename the file"
            )));
        }
        for (i, token) in tokens.iter().enumerate() {
            let added = self
                .inner
                .add_tokens([AddedToken::from(token.clone(), false)])
                .map_err(|e| Error::Tokenizer {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
            if added != 1 || self.inner.token_to_id(token) != Some(first + i as u32) {
                return Err(Error::InvalidInput(format!(
                    "the embedding name `{token}` could not be added as token {}",
                    first + i as u32
                )));
            }
        }
        if vectors > 1 {
            self.multi_vector.push((first, vectors as u32));
        }
        Ok(first)
    }

    /// `[batch][77]` token ids, as diffusers tokenizes: the first 75 tokens, the rest cut. An
    /// embedding's name stands for all its vectors' ids.
    pub fn encode(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        check_prompt_lengths(prompts)?;
        let tokenized = self.tokens(prompts)?;
        Ok(tokenized
            .iter()
            .map(|tokens| {
                let ids: Vec<u32> = tokens.iter().flat_map(|&id| self.expand(id)).collect();
                self.wrap(&ids[..ids.len().min(CHUNK_LENGTH)])
            })
            .collect())
    }

    /// A1111's `tokenize_line`: the segments of a parsed prompt
    /// ([`crate::prompt_syntax::parse`]) as 77-token chunks with each token's weight. Each
    /// segment is tokenized on its own; a chunk ends at 75 tokens (after the last comma when
    /// one is among its last 20), at `BREAK`, and never inside an embedding's vectors.
    pub fn chunks(&self, parsed: &[(String, f64)]) -> Result<Vec<ClipChunk>> {
        let texts: Vec<&str> = parsed.iter().map(|(text, _)| text.as_str()).collect();
        check_prompt_lengths(&texts)?;
        let tokenized = self.tokens(&texts)?;
        let mut chunks = Chunks::new(self);
        for ((text, weight), tokens) in parsed.iter().zip(tokenized) {
            if (text.as_str(), *weight) == BREAK {
                chunks.close()?;
                continue;
            }
            for id in tokens {
                chunks.push(&self.expand(id), *weight, Some(id) == self.comma)?;
            }
        }
        chunks.finish()
    }

    /// Each text's token ids, without special tokens.
    fn tokens(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = tokenizers_call(&self.path, || {
            self.inner.encode_batch(texts.to_vec(), false)
        })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// `id`, or a multi-vector embedding's ids when `id` is its first.
    fn expand(&self, id: u32) -> Vec<u32> {
        match self.multi_vector.iter().find(|(first, _)| *first == id) {
            Some(&(first, n)) => (first..first + n).collect(),
            None => vec![id],
        }
    }

    /// `<|startoftext|>`, `tokens` (at most 75), `<|endoftext|>` up to 77.
    fn wrap(&self, tokens: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(CLIP_TOKENS);
        ids.push(self.bos);
        ids.extend_from_slice(tokens);
        ids.resize(CLIP_TOKENS, self.eos);
        ids
    }
}

/// The chunks of one prompt as they fill (A1111's `tokenize_line` state).
struct Chunks<'a> {
    tokenizer: &'a ClipTokenizer,
    done: Vec<ClipChunk>,
    ids: Vec<u32>,
    weights: Vec<f64>,
    /// Where the current chunk's last comma is.
    last_comma: Option<usize>,
}

impl<'a> Chunks<'a> {
    fn new(tokenizer: &'a ClipTokenizer) -> Self {
        Self {
            tokenizer,
            done: Vec::new(),
            ids: Vec::new(),
            weights: Vec::new(),
            last_comma: None,
        }
    }

    /// Adds one token (or an embedding's ids, kept together) of `weight`.
    fn push(&mut self, ids: &[u32], weight: f64, comma: bool) -> Result<()> {
        if ids.len() > CHUNK_LENGTH {
            return Err(Error::InvalidInput(format!(
                "an embedding of {} vectors does not fit in CLIP's {CHUNK_LENGTH} tokens",
                ids.len()
            )));
        }
        let full = self.ids.len() == CHUNK_LENGTH;
        match self.last_comma {
            _ if comma => self.last_comma = Some(self.ids.len()),
            Some(at) if full && CHUNK_LENGTH - at <= COMMA_BACKTRACK => {
                let moved_ids = self.ids.split_off(at + 1);
                let moved_weights = self.weights.split_off(at + 1);
                self.close()?;
                self.ids = moved_ids;
                self.weights = moved_weights;
            }
            _ => {}
        }
        if self.ids.len() == CHUNK_LENGTH || self.ids.len() + ids.len() > CHUNK_LENGTH {
            self.close()?;
        }
        self.ids.extend_from_slice(ids);
        self.weights.extend(std::iter::repeat_n(weight, ids.len()));
        Ok(())
    }

    /// Ends the current chunk: wrapped and padded, weight 1 for the special tokens.
    fn close(&mut self) -> Result<()> {
        if self.done.len() == MAX_CLIP_CHUNKS {
            return Err(Error::InvalidInput(format!(
                "a CLIP prompt of more than {MAX_CLIP_CHUNKS} chunks of {CHUNK_LENGTH} tokens"
            )));
        }
        let ids = self.tokenizer.wrap(&std::mem::take(&mut self.ids));
        let mut weights = vec![1.0];
        weights.append(&mut self.weights);
        weights.resize(CLIP_TOKENS, 1.0);
        self.done.push(ClipChunk { ids, weights });
        self.last_comma = None;
        Ok(())
    }

    /// The chunks, the pending tokens closed (an empty prompt is one empty chunk).
    fn finish(mut self) -> Result<Vec<ClipChunk>> {
        if !self.ids.is_empty() || self.done.is_empty() {
            self.close()?;
        }
        Ok(self.done)
    }
}

/// CLIP's tokenizer from `vocab.json` (token → id) and `merges.txt` (BPE merges, one
/// `left right` pair a line after a `#version` header), assembled exactly as transformers
/// converts them (normalize NFC, collapse whitespace, lower-case; split into words, numbers and
/// punctuation; byte-level BPE with `</w>` ending each word; `<|startoftext|>` … `<|endoftext|>`).
fn from_vocab_and_merges(folder: &Path) -> Result<Tokenizer> {
    let vocab_path = folder.join("vocab.json");
    let merges_path = folder.join("merges.txt");
    let failed = |path: &Path, reason: String| Error::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let vocab: serde_json::Map<String, serde_json::Value> = read_json(&vocab_path)?;
    let merges_text = read_text(&merges_path)?;
    let merges = merges_text
        .lines()
        .filter(|line| !line.starts_with("#version") && !line.trim().is_empty())
        .map(|line| {
            line.split_once(' ')
                .map(|(left, right)| [left, right])
                .ok_or_else(|| failed(&merges_path, format!("`{line}` is not a merge pair")))
        })
        .collect::<Result<Vec<_>>>()?;
    let id = |token: &str| {
        vocab
            .get(token)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| failed(&vocab_path, format!("no `{token}` token")))
    };
    let (bos, eos) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
    let special = |id: u64, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(bos, "<|startoftext|>"), special(eos, "<|endoftext|>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": WORDS}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", eos],
            "cls": ["<|startoftext|>", bos], "trim_offsets": false, "add_prefix_space": false},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>",
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    tokenizers_call(folder, || json.to_string().parse::<Tokenizer>())
}

/// CLIP's pre-tokenizer pattern: its special tokens, English contractions, letter runs,
/// single digits, and runs of other non-space characters.
const WORDS: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
