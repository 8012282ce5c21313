//! The one error type of the library. Every variant names the file, tensor, shape or
//! value that was wrong, so a host can show it to a user as is.

use std::path::PathBuf;

/// Everything that can go wrong in `ella-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file could not be created or written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A weight file of a loaded model was rewritten on disk: re-reading a weight (to
    /// restore it from a LoRA) found other bytes than at load.
    #[error(
        "{path} changed on disk since the model was loaded (tensor `{name}` reads differently): \
         reload the model"
    )]
    FileChanged { path: PathBuf, name: String },

    /// A safetensors file is truncated, has a corrupt or absurdly long header, or
    /// overlapping tensor data.
    #[error("{path} is not a valid safetensors file: {reason}")]
    InvalidSafetensors { path: PathBuf, reason: String },

    /// A JSON file (config, shard index) could not be parsed.
    #[error("{path} is not valid JSON for this file kind: {reason}")]
    InvalidJson { path: PathBuf, reason: String },

    /// A config value is outside what the model supports.
    #[error("invalid config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    /// A tensor the config requires is not in the weight file(s).
    #[error("tensor `{name}` is missing from {path}{more}")]
    MissingTensor {
        name: String,
        path: PathBuf,
        more: MoreProblems,
    },

    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` in {path} has shape {actual:?}, expected {expected:?}{more}")]
    ShapeMismatch {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        actual: Vec<usize>,
        more: MoreProblems,
    },

    /// A tensor is stored in a dtype the loaders do not read (only F32, F16 and BF16 are).
    #[error("tensor `{name}` in {path} has dtype {dtype}; expected F32, F16 or BF16{more}")]
    UnsupportedDtype {
        name: String,
        path: PathBuf,
        dtype: String,
        more: MoreProblems,
    },

    /// The file holds a tensor that the config does not account for, which means the
    /// config and the weights describe different models (e.g. more layers than configured).
    #[error("tensor `{name}` in {path} is not part of the configured model: {hint}{more}")]
    UnexpectedTensor {
        name: String,
        path: PathBuf,
        hint: String,
        more: MoreProblems,
    },

    /// A weight holds NaN or infinite values: any image made with it would be black.
    #[error("tensor `{name}` in {path} holds {count} NaN or infinite values")]
    NonFiniteWeights {
        name: String,
        path: PathBuf,
        count: usize,
    },

    /// A request or a model would need more working memory than the budget allows
    /// ([`crate::Pipeline::set_memory_budget`]; by default the memory the machine has free).
    #[error(
        "{what} needs about {} MiB of working memory, more than the budget of {} MiB",
        needed.div_ceil(1 << 20),
        budget >> 20
    )]
    OutOfMemory {
        what: String,
        needed: u64,
        budget: u64,
    },

    /// A computation produced NaN or infinite values (bad weights, an F16 overflow, an
    /// absurd guidance or LoRA scale); no image is returned.
    #[error(
        "{what} holds NaN or infinite values (check the weights, the precision and the \
         guidance and LoRA scales)"
    )]
    NonFinite { what: String },

    /// The backend cannot compute in the requested float type (e.g. F16 on `ndarray`).
    #[error("the {backend} backend does not support {dtype} tensors; use F32 on this backend")]
    UnsupportedPrecision { dtype: String, backend: String },

    /// The tokenizer file could not be loaded or failed on a prompt.
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    /// A model file of a kind ella does not run (an SD2.x or SDXL checkpoint, a file that is
    /// not a single-file checkpoint at all).
    #[error("{path} is {reason}")]
    UnsupportedModel { path: PathBuf, reason: String },

    /// Inputs to a model call disagree with each other or with the model.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// Models that do not fit together (e.g. a connector whose output width is not the
    /// U-Net's cross-attention width).
    #[error("incompatible models: {0}")]
    IncompatibleModels(String),

    /// The caller cancelled a generation; the pipeline stays usable.
    #[error("cancelled")]
    Cancelled,
}

/// The other problems a weight file check found beside the one an error is about, so that
/// one message names every missing, misshaped, wrongly typed and left-over tensor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoreProblems(pub Vec<String>);

impl std::fmt::Display for MoreProblems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const LISTED: usize = 20;
        if self.0.is_empty() {
            return Ok(());
        }
        write!(f, "; and {} more: ", self.0.len())?;
        let listed = &self.0[..self.0.len().min(LISTED)];
        write!(f, "{}", listed.join("; "))?;
        if self.0.len() > LISTED {
            write!(f, "; …")?;
        }
        Ok(())
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
