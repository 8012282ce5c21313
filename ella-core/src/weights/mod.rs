//! Weight files: safetensors (single or sharded), every header checked before any data is
//! read, tensors checked against what a model reads and converted to the chosen float type.
//!
//! This module knows file formats and tensors, never layers or model math. Each layer
//! builds itself from a scoped [`Loader`]; [`load_checked`] first runs a model's loading
//! code as a plan, so that [`Checkpoint::check`] can compare the tensors it would read with
//! the file(s) before any is built: a wrong file fails with an error that names every
//! missing, misshaped or left-over tensor instead of producing a wrong image. Files are
//! read, not mapped ([`file`]): what a host changes on disk later cannot crash it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{DType, TensorData};
use safetensors::Dtype;
use safetensors::tensor::Metadata;
use serde::Deserialize;

use crate::error::{Error, MoreProblems, Result};
use crate::limits::{MAX_LEVELS, MAX_TEXT_BYTES};

mod file;
mod loader;

use file::WeightFile;
pub(crate) use file::{open_regular, read_bytes, read_text};
pub use loader::plan;
pub(crate) use loader::{Layout, Loader, WeightIndex, load_checked};

/// The largest safetensors header read (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A tensor a model expects: its name in the file and its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
        }
    }
}

/// Where one tensor's bytes are, and how they are typed.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Range<u64>,
}

/// One model's weights: a `.safetensors` file, or an HF sharded checkpoint
/// (`*.safetensors.index.json` naming several files). Cloning shares the open files.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// What the user pointed at; used in error messages.
    origin: PathBuf,
    /// Shared with the [`Checkpoint::remap`] views of this checkpoint.
    files: Vec<Arc<WeightFile>>,
    entries: BTreeMap<String, Entry>,
    /// The files' `__metadata__` strings.
    metadata: BTreeMap<String, String>,
    /// For [`Checkpoint::random`]: the seed of the generated weights.
    random_seed: Option<u64>,
}

/// The part of an HF `model.safetensors.index.json` that says which shard holds which tensor.
#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens a safetensors file, a sharded checkpoint's `*.index.json`, or a folder in the
    /// HF layout (`model.safetensors`, transformers) or the diffusers layout
    /// (`diffusion_pytorch_model.safetensors`), each possibly sharded (`….index.json`) or
    /// as the `.fp16` variant.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let candidates = [
                "model",
                "diffusion_pytorch_model",
                "model.fp16",
                "diffusion_pytorch_model.fp16",
            ]
            .iter()
            .flat_map(|stem| {
                [
                    format!("{stem}.safetensors"),
                    format!("{stem}.safetensors.index.json"),
                ]
            });
            return match candidates.map(|name| path.join(name)).find(|p| p.exists()) {
                Some(file) => Self::open(file),
                None => Err(Error::Io {
                    path: path.join("model.safetensors"),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no model.safetensors, diffusion_pytorch_model.safetensors or sharded index in this folder",
                    ),
                }),
            };
        }
        let mut checkpoint = Self {
            origin: path.to_path_buf(),
            files: Vec::new(),
            entries: BTreeMap::new(),
            metadata: BTreeMap::new(),
            random_seed: None,
        };
        if path.to_string_lossy().ends_with(".json") {
            checkpoint.add_shards(path)?;
        } else {
            checkpoint.add_file(path, None)?;
        }
        Ok(checkpoint)
    }

    /// Adds the shards an HF `*.index.json` names, each of which must be a file in the
    /// index's own folder (or below it): an index cannot make ella open other files.
    fn add_shards(&mut self, index_path: &Path) -> Result<()> {
        let index: ShardIndex = read_json(index_path)?;
        let folder = index_path.parent().unwrap_or(Path::new("."));
        let mut shards: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (tensor, shard) in &index.weight_map {
            shards.entry(shard).or_default().push(tensor);
        }
        for (shard, tensors) in shards {
            let inside = Path::new(shard)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !inside || shard.is_empty() {
                return Err(Error::InvalidJson {
                    path: index_path.to_path_buf(),
                    reason: format!("shard `{shard}` is not a file name inside the index's folder"),
                });
            }
            self.add_file(&folder.join(shard), Some(&tensors))?;
        }
        Ok(())
    }

    /// Opens one file, checks its header as the `safetensors` crate does (every tensor's
    /// offsets inside the file, contiguous, sized as its shape and dtype say) and refuses
    /// a header that names a tensor twice; records its tensors. For a shard, `only` lists
    /// the tensors the index assigns to it; a listed tensor the shard lacks is an error.
    fn add_file(&mut self, path: &Path, only: Option<&[&str]>) -> Result<()> {
        let invalid = |reason: String| Error::InvalidSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let file = WeightFile::open(path)?;
        if file.len < 8 {
            return Err(invalid(format!(
                "{} bytes is too short for a header",
                file.len
            )));
        }
        let start = file.read(0..8)?;
        let header_len = u64::from_le_bytes(start[..].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file.len {
            if is_pickle(&start) {
                return Err(Error::UnsupportedModel {
                    path: path.to_path_buf(),
                    reason: "a PyTorch pickle (.pth, .ckpt, .pt or .bin), not safetensors: ella \
                             never unpickles, since a pickle can run code. Convert it once with \
                             `python3 scripts/pth_to_safetensors.py FILE` (torch.load with \
                             weights_only=True)"
                        .into(),
                });
            }
            return Err(invalid(format!(
                "the header claims {header_len} bytes in a file of {}",
                file.len
            )));
        }
        let header = file.read(8..8 + header_len)?;
        let header =
            std::str::from_utf8(&header).map_err(|_| invalid("the header is not UTF-8".into()))?;
        reject_duplicate_names(header).map_err(invalid)?;
        let metadata: Metadata =
            serde_json::from_str(header).map_err(|e| invalid(e.to_string()))?;
        let data_start = 8 + header_len;
        if data_start + metadata.data_len() as u64 != file.len {
            return Err(invalid(format!(
                "the header describes {} bytes of tensor data but the file has {}",
                metadata.data_len(),
                file.len - data_start
            )));
        }
        if let Some(strings) = metadata.metadata() {
            self.metadata
                .extend(strings.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let file_index = self.files.len();
        for (name, info) in metadata.tensors() {
            if only.is_some_and(|names| !names.contains(&name.as_str())) {
                continue;
            }
            let (begin, end) = info.data_offsets;
            self.entries.insert(
                name,
                Entry {
                    file: file_index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: data_start + begin as u64..data_start + end as u64,
                },
            );
        }
        if let Some(names) = only
            && let Some(missing) = names.iter().find(|n| !self.entries.contains_key(**n))
        {
            return Err(Error::MissingTensor {
                name: missing.to_string(),
                path: path.to_path_buf(),
                more: MoreProblems::default(),
            });
        }
        self.files.push(Arc::new(file));
        Ok(())
    }

    /// A checkpoint without tensors.
    pub(crate) fn empty() -> Self {
        Self {
            origin: PathBuf::new(),
            files: Vec::new(),
            entries: BTreeMap::new(),
            metadata: BTreeMap::new(),
            random_seed: None,
        }
    }

    /// A checkpoint that has every tensor a model asks for, filled with small uniform random
    /// values (deterministic per seed and name): models in real shapes for benchmarks and
    /// memory measurements without the weight files.
    pub fn random(seed: u64) -> Self {
        Self {
            origin: PathBuf::from(format!("<random weights, seed {seed}>")),
            files: Vec::new(),
            entries: BTreeMap::new(),
            metadata: BTreeMap::new(),
            random_seed: Some(seed),
        }
    }

    /// A view of some of this checkpoint's tensors under other names, sharing its mapped
    /// files: `rename` gives a tensor's new name, or `None` to leave it out. Reads a model
    /// stored in another key layout (an LDM single-file checkpoint) with the loaders of the
    /// diffusers layout.
    pub fn remap(&self, rename: impl Fn(&str) -> Option<String>) -> Self {
        let entries = self
            .entries
            .iter()
            .filter_map(|(name, entry)| rename(name).map(|new| (new, entry.clone())))
            .collect();
        Self {
            origin: self.origin.clone(),
            files: self.files.clone(),
            entries,
            metadata: self.metadata.clone(),
            random_seed: self.random_seed,
        }
    }

    /// Drops the trailing size-1 axes of a tensor's shape (a 1×1 conv kernel read as a
    /// linear weight); other tensors are left as they are.
    pub fn squeeze_trailing_ones(&mut self, name: &str, rank: usize) {
        if let Some(entry) = self.entries.get_mut(name)
            && entry.shape.len() > rank
            && entry.shape[rank..].iter().all(|&d| d == 1)
        {
            entry.shape.truncate(rank);
        }
    }

    /// The file (or index) this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.origin
    }

    /// A string of the files' `__metadata__` (e.g. diffusers' `lora_adapter_metadata`).
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Checks that every expected tensor is present with the expected shape and a float
    /// dtype we read, and that every other tensor in the file is one `ignorable` accepts.
    /// The error is about the first problem (in `expected`'s order, then left-over tensors
    /// by name) and names all the others ([`MoreProblems`]).
    pub fn check(&self, expected: &[TensorSpec], ignorable: impl Fn(&str) -> bool) -> Result<()> {
        if self.random_seed.is_some() {
            return Ok(());
        }
        let wanted: BTreeSet<&str> = expected.iter().map(|s| s.name.as_str()).collect();
        let mut problems: Vec<Error> = expected
            .iter()
            .filter_map(|spec| self.check_spec(spec).err())
            .collect();
        problems.extend(
            self.names()
                .filter(|name| !wanted.contains(name) && !ignorable(name))
                .map(|extra| Error::UnexpectedTensor {
                    name: extra.to_string(),
                    path: self.files[self.entries[extra].file].path.clone(),
                    hint: "the config describes a different model than this file holds (check \
                           the number of layers, heads and widths)"
                        .into(),
                    more: MoreProblems::default(),
                }),
        );
        let mut problems = problems.into_iter();
        let Some(mut first) = problems.next() else {
            return Ok(());
        };
        let others: Vec<String> = problems.map(|p| short_problem(&p)).collect();
        match &mut first {
            Error::MissingTensor { more, .. }
            | Error::ShapeMismatch { more, .. }
            | Error::UnsupportedDtype { more, .. }
            | Error::UnexpectedTensor { more, .. } => more.0 = others,
            _ => {}
        }
        Err(first)
    }

    /// Checks that one tensor is present with the expected shape and a float dtype we read.
    fn check_spec(&self, spec: &TensorSpec) -> Result<()> {
        let entry = self.entry(&spec.name)?;
        if entry.shape != spec.shape {
            return Err(Error::ShapeMismatch {
                name: spec.name.clone(),
                path: self.files[entry.file].path.clone(),
                expected: spec.shape.clone(),
                actual: entry.shape.clone(),
                more: MoreProblems::default(),
            });
        }
        if float_dtype(entry.dtype).is_none() {
            return Err(Error::UnsupportedDtype {
                name: spec.name.clone(),
                path: self.files[entry.file].path.clone(),
                dtype: format!("{:?}", entry.dtype),
                more: MoreProblems::default(),
            });
        }
        Ok(())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.origin.clone(),
            more: MoreProblems::default(),
        })
    }

    /// The values of tensor `name` of `shape`: as stored, or generated for a
    /// [`Checkpoint::random`] one.
    pub fn values(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        match self.random_seed {
            Some(seed) => Ok(random_data(seed, name, shape)),
            None => self.data(name),
        }
    }

    /// Reads one tensor's values as stored (F32, F16 or BF16), on the host. A tensor holding
    /// NaN or infinity is an error: it could only make a black image.
    pub fn data(&self, name: &str) -> Result<TensorData> {
        let entry = self.entry(name)?;
        let file = &self.files[entry.file];
        let dtype = float_dtype(entry.dtype).ok_or_else(|| Error::UnsupportedDtype {
            name: name.to_string(),
            path: file.path.clone(),
            dtype: format!("{:?}", entry.dtype),
            more: MoreProblems::default(),
        })?;
        // `add_file` checked that every range lay inside the file.
        let bytes = file.read_tensor(name, entry.bytes.clone())?;
        let non_finite = count_non_finite(&bytes, dtype);
        if non_finite > 0 {
            return Err(Error::NonFiniteWeights {
                name: name.to_string(),
                path: file.path.clone(),
                count: non_finite,
            });
        }
        Ok(TensorData::from_bytes_vec(
            bytes,
            entry.shape.clone(),
            dtype,
        ))
    }
}

/// One line about a weight-file problem, without the path (listed after the first problem).
fn short_problem(problem: &Error) -> String {
    match problem {
        Error::MissingTensor { name, .. } => format!("`{name}` missing"),
        Error::ShapeMismatch {
            name,
            expected,
            actual,
            ..
        } => format!("`{name}` has shape {actual:?}, expected {expected:?}"),
        Error::UnsupportedDtype { name, dtype, .. } => format!("`{name}` has dtype {dtype}"),
        Error::UnexpectedTensor { name, .. } => format!("`{name}` is not part of the model"),
        other => other.to_string(),
    }
}

/// Uniform values in ±0.05 from a xorshift stream seeded by `seed` and the tensor's name.
fn random_data(seed: u64, name: &str, shape: &[usize]) -> TensorData {
    let mut state = name.bytes().fold(seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let count: usize = shape.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    TensorData::new(values, shape.to_vec())
}

/// Burn's dtype for the safetensors float dtypes we read.
fn float_dtype(dtype: Dtype) -> Option<DType> {
    match dtype {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Opens a Hugging Face `tokenizer.json` (the file, or the folder holding it); returns the
/// tokenizer and the file's path for error messages.
pub fn open_tokenizer(path: &Path) -> Result<(tokenizers::Tokenizer, PathBuf)> {
    let mut path = path.to_path_buf();
    if path.is_dir() {
        path = path.join("tokenizer.json");
    }
    let bytes = read_bytes(&path, MAX_TEXT_BYTES)?;
    let tokenizer = tokenizers_call(&path, || tokenizers::Tokenizer::from_bytes(bytes))?;
    Ok((tokenizer, path))
}

/// Runs a call into the `tokenizers` crate, whose deserializers and post-processors panic
/// on some malformed files (found by fuzzing: `expect("Helper")` in its normalizer and
/// decoder deserializers, an index in `TemplateProcessing`): the panic becomes a typed
/// error naming the file.
pub fn tokenizers_call<T>(path: &Path, work: impl FnOnce() -> tokenizers::Result<T>) -> Result<T> {
    let failed = |reason: String| Error::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(result) => result.map_err(|e| failed(e.to_string())),
        Err(_) => Err(failed(
            "the tokenizers crate failed on this file (it panicked)".into(),
        )),
    }
}

/// Errors unless every `(name, value, max)` has `1 ≤ value ≤ max`.
pub fn check_sizes(sizes: &[(&str, usize, usize)]) -> Result<(), String> {
    match sizes.iter().find(|(_, v, max)| !(1..=*max).contains(v)) {
        Some((name, value, max)) => Err(format!("`{name}` {value} must be between 1 and {max}")),
        None => Ok(()),
    }
}

/// The number of resolution levels of a U-Net or VAE config: `block_out_channels`,
/// `down_block_types` and `up_block_types` must be as long, 1 to [`MAX_LEVELS`].
pub fn check_levels<D, U>(channels: &[usize], down: &[D], up: &[U]) -> Result<usize, String> {
    let n = channels.len();
    match (1..=MAX_LEVELS).contains(&n) && down.len() == n && up.len() == n {
        true => Ok(n),
        false => Err(format!(
            "`block_out_channels`, `down_block_types` and `up_block_types` must have the same \
             length, 1 to {MAX_LEVELS}"
        )),
    }
}

/// Errors unless `value` (an epsilon, a scale) is a finite number above 0.
pub fn check_positive(name: &str, value: f64) -> Result<(), String> {
    match value.is_finite() && value > 0.0 {
        true => Ok(()),
        false => Err(format!("`{name}` {value} must be a finite number above 0")),
    }
}

/// Turns a config's own complaint (from its `validate`) into an error naming `path`.
pub fn check_config<T>(validated: Result<T, String>, path: &Path) -> Result<T> {
    validated.map_err(|reason| Error::InvalidConfig {
        path: path.to_path_buf(),
        reason,
    })
}

/// Reads a JSON config file and checks it with `validate`.
pub fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl Fn(&T) -> Result<(), String>,
) -> Result<T> {
    let config: T = serde_json::from_str(&read_text(path)?).map_err(|e| config_error(path, e))?;
    check_config(validate(&config), path)?;
    Ok(config)
}

/// Why a config file did not deserialise: `InvalidJson` when it is not JSON, `InvalidConfig`
/// when a value is not one the config takes (serde's data errors: a block type or activation
/// outside the enum's variants, a string for a number), as a value `validate` refuses.
pub fn config_error(path: &Path, error: serde_json::Error) -> Error {
    let (path, reason) = (path.to_path_buf(), error.to_string());
    match error.classify() {
        serde_json::error::Category::Data => Error::InvalidConfig { path, reason },
        _ => Error::InvalidJson { path, reason },
    }
}

/// Reads a JSON file into `T`, with errors that name the file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&read_text(path)?).map_err(|e| Error::InvalidJson {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Whether a file whose first 8 bytes are no safetensors header length starts as PyTorch's
/// pickles do: a zip archive (`torch.save` since 1.6) or a bare pickle (protocol 2 to 5,
/// older `.ckpt` files).
fn is_pickle(start: &[u8]) -> bool {
    start.starts_with(b"PK\x03\x04") || matches!(start, [0x80, 2..=5, ..])
}

/// Errors when a JSON object at the top of `header` has a key twice (serde keeps the last,
/// so a file could hide a tensor behind another of the same name).
fn reject_duplicate_names(header: &str) -> std::result::Result<(), String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Err(serde::de::Error::custom(format!(
                        "tensor `{key}` is named twice"
                    )));
                }
            }
            Ok(())
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(header);
    serde::Deserializer::deserialize_map(&mut deserializer, Keys).map_err(|e| e.to_string())
}

/// How many of `bytes`' values (little-endian F32, F16 or BF16) are NaN or infinite: all
/// exponent bits set.
fn count_non_finite(bytes: &[u8], dtype: DType) -> usize {
    match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .filter(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x7f80_0000 == 0x7f80_0000)
            .count(),
        DType::F16 => bytes
            .chunks_exact(2)
            .filter(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00)
            .count(),
        DType::BF16 => bytes
            .chunks_exact(2)
            .filter(|b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80)
            .count(),
        _ => 0,
    }
}
