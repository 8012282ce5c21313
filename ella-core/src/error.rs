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
    #[error("tensor `{name}` is missing from {path}")]
    MissingTensor { name: String, path: PathBuf },

    /// A tensor has a shape other than the config implies.
    #[error("tensor `{name}` in {path} has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// A tensor is stored in a dtype the loaders do not read (only F32, F16 and BF16 are).
    #[error("tensor `{name}` in {path} has dtype {dtype}; expected F32, F16 or BF16")]
    UnsupportedDtype {
        name: String,
        path: PathBuf,
        dtype: String,
    },

    /// The file holds a tensor that the config does not account for, which means the
    /// config and the weights describe different models (e.g. more layers than configured).
    #[error("tensor `{name}` in {path} is not part of the configured model: {hint}")]
    UnexpectedTensor {
        name: String,
        path: PathBuf,
        hint: String,
    },

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

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
