//! CLIP's byte-level BPE tokenizer (`tokenizer.json`, or `vocab.json` + `merges.txt` as in
//! SD1.5's own `tokenizer/` folder): `<|startoftext|>`, the prompt (lower-cased, truncated),
//! `<|endoftext|>`, padded to 77 tokens as SD pipelines do.

use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::limits::check_prompt_lengths;
use crate::weights::{open_tokenizer, read_json, read_text, tokenizers_call};

/// The number of tokens SD's CLIP text encoder reads.
pub const CLIP_TOKENS: usize = 77;

/// The tokenizer of a `tokenizer/` folder, padding with `<|endoftext|>` (SD1.5's pad token),
/// with the names of the textual-inversion embeddings added.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    /// The first id and vector count of every embedding of more than one vector: a prompt's
    /// name gives its first id, followed here by the others.
    multi_vector: Vec<(u32, u32)>,
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
        Ok(Self {
            inner,
            path,
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

    /// `[batch][77]` token ids. An embedding's name stands for all its vectors' ids (within
    /// the 75 tokens a prompt has).
    pub fn encode(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        check_prompt_lengths(prompts)?;
        let encodings = tokenizers_call(&self.path, || {
            self.inner.encode_batch(prompts.to_vec(), true)
        })?;
        Ok(encodings.iter().map(|e| self.expand(e.get_ids())).collect())
    }

    /// `ids` (`<|startoftext|>`, tokens, `<|endoftext|>`, padding) with every multi-vector
    /// embedding's first id followed by its other ids, truncated and padded to 77 again.
    /// Expanding the truncated ids gives what expanding all of them would: each id's
    /// expansion only grows what follows it.
    fn expand(&self, ids: &[u32]) -> Vec<u32> {
        if self.multi_vector.is_empty() {
            return ids.to_vec();
        }
        let (bos, eos) = (ids[0], *ids.last().expect("77 ids"));
        let tokens = ids[1..].iter().take_while(|&&id| id != eos);
        let mut expanded = vec![bos];
        for &id in tokens {
            expanded.push(id);
            if let Some(&(first, n)) = self.multi_vector.iter().find(|(first, _)| *first == id) {
                expanded.extend(first + 1..first + n);
            }
        }
        expanded.truncate(CLIP_TOKENS - 1);
        expanded.resize(CLIP_TOKENS, eos);
        expanded
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
