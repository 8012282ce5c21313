//! Textual-inversion embeddings (`EasyNegative.safetensors`, diffusers' `learned_embeds`):
//! new CLIP tokens, each one or more vectors of the token-embedding table, that a prompt uses
//! by name. `docs/embeddings-reference.md` says what diffusers and A1111 do with them.

use std::path::Path;

use burn::tensor::TensorData;

use crate::error::{Error, Result};
use crate::weights::Checkpoint;

/// One embedding file: its name as prompts write it and its vectors `[n, hidden]` (F32).
#[derive(Debug, Clone, PartialEq)]
pub struct TextualInversion {
    pub name: String,
    pub vectors: TensorData,
}

impl TextualInversion {
    /// Reads a `.safetensors` embedding of one tensor: A1111's `emb_params` (or a converted
    /// `.pt`'s `string_to_param.*`), named by the file's stem as A1111 names it; or diffusers'
    /// `{name: vectors}`, named by its key. Vectors `[hidden]` or `[n, hidden]`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let checkpoint = Checkpoint::open(path)?;
        let refuse = |reason: String| Error::UnsupportedModel {
            path: path.to_path_buf(),
            reason,
        };
        let names: Vec<&str> = checkpoint.names().collect();
        let [key] = names.as_slice() else {
            return Err(refuse(format!(
                "not a textual-inversion embedding: {} tensors where SD1.5 embeddings have one \
                 (SDXL embeddings hold `clip_l` and `clip_g`)",
                names.len()
            )));
        };
        let name = match *key {
            "emb_params" => stem(path),
            key if key.starts_with("string_to_param.") => stem(path),
            key => key.to_string(),
        };
        let data = checkpoint.data(key)?.convert::<f32>();
        let vectors = match data.shape.as_slice() {
            &[hidden] => TensorData::new(data.to_vec::<f32>().expect("f32"), [1, hidden]),
            &[n, _] if n > 0 => data,
            shape => {
                return Err(refuse(format!(
                    "embedding `{key}` has shape {shape:?}; expected [hidden] or [vectors, hidden]"
                )));
            }
        };
        if name.trim().is_empty() {
            return Err(refuse("an embedding with an empty name".into()));
        }
        Ok(Self { name, vectors })
    }

    /// How many vectors (tokens) the name stands for.
    pub fn vector_count(&self) -> usize {
        self.vectors.shape[0]
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
