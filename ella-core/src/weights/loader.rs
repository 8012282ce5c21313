//! The scoped loader every layer builds itself from, as candle's `VarBuilder`:
//! `loader.pp("down_blocks").pp(0)` reads `down_blocks.0.*`, and each layer's `load` sits
//! beside its `forward` and names only its own tensors.
//!
//! A model is loaded in two passes of the same `load` code ([`load_checked`]): first on a
//! *plan* loader, which reads nothing and builds one-element placeholders, only recording
//! the name and shape of every tensor asked for; that list is compared with the file, and
//! every missing, misshaped, wrongly typed or left-over tensor is reported at once, by
//! name, before a single tensor is built. Then the same code runs on the file. The list of
//! a model's tensors is thus written once, in its layers, and [`plan`] gives it to tests.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::rc::Rc;

use burn::module::ParamId;
use burn::tensor::{DType, Tensor, TensorData};

use super::{Checkpoint, TensorSpec};
use crate::backend::Backend;
use crate::error::{Error, Result};

/// How a module stores a weight it was loaded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A `Linear` weight: `[in, out]`, PyTorch's `[out, in]` transposed.
    Linear,
    /// A convolution kernel, as PyTorch's `[out, in, k, k]`.
    Conv,
}

/// A loaded weight: the module parameter that holds it, how, and its PyTorch shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedWeight {
    pub param: ParamId,
    pub layout: Layout,
    pub shape: Vec<usize>,
}

/// The linear and convolution weights of a loaded model by their file names, with the
/// checkpoint they came from: what updating weights in place (LoRA) needs to find a
/// parameter and to restore its original value.
#[derive(Debug, Clone)]
pub struct WeightIndex {
    pub checkpoint: Checkpoint,
    pub weights: BTreeMap<String, IndexedWeight>,
}

impl Default for WeightIndex {
    /// No weights (a model before [`load_checked`] hands it its index).
    fn default() -> Self {
        Self {
            checkpoint: Checkpoint::empty(),
            weights: BTreeMap::new(),
        }
    }
}

/// What the tensors of a [`Loader`] come from.
enum Source<'a> {
    /// The checkpoint's values (already checked against the plan).
    Checkpoint(&'a Checkpoint),
    /// Nothing: reads are recorded and answered with placeholders.
    Plan,
}

/// What every scope of one loader shares.
struct Shared<'a, B: Backend> {
    source: Source<'a>,
    device: &'a B::Device,
    dtype: DType,
    /// Every tensor asked for, in order.
    read: RefCell<Vec<TensorSpec>>,
    index: RefCell<BTreeMap<String, IndexedWeight>>,
}

/// Builds modules from a checkpoint, under a name prefix. Cloning is cheap; scopes made
/// with [`Loader::pp`] share what was read.
pub struct Loader<'a, B: Backend> {
    shared: Rc<Shared<'a, B>>,
    prefix: String,
}

impl<B: Backend> Clone for Loader<'_, B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            prefix: self.prefix.clone(),
        }
    }
}

impl<'a, B: Backend> Loader<'a, B> {
    fn with_source(source: Source<'a>, device: &'a B::Device, dtype: DType) -> Self {
        Self {
            shared: Rc::new(Shared {
                source,
                device,
                dtype,
                read: RefCell::new(Vec::new()),
                index: RefCell::new(BTreeMap::new()),
            }),
            prefix: String::new(),
        }
    }

    /// The scope `name` below this one ("push prefix"): `pp("attn1").pp("to_q")` reads
    /// `attn1.to_q.*`. An empty name is this scope.
    pub fn pp(&self, name: impl Display) -> Self {
        let name = name.to_string();
        let prefix = match (self.prefix.is_empty(), name.is_empty()) {
            (_, true) => self.prefix.clone(),
            (true, false) => name,
            (false, false) => format!("{}.{name}", self.prefix),
        };
        Self {
            shared: self.shared.clone(),
            prefix,
        }
    }

    /// The file name of tensor `leaf` in this scope.
    pub fn name(&self, leaf: &str) -> String {
        self.pp(leaf).prefix
    }

    /// The float type tensors are built in.
    pub fn dtype(&self) -> DType {
        self.shared.dtype
    }

    /// Records a read of tensor `leaf` of `shape`; returns its file name.
    fn note(&self, leaf: &str, shape: &[usize]) -> String {
        let name = self.name(leaf);
        let spec = TensorSpec::new(name.clone(), shape);
        self.shared.read.borrow_mut().push(spec);
        name
    }

    /// Host values of tensor `leaf`, which must have `shape`, as stored (F32, F16 or
    /// BF16). When planning, a one-element placeholder of the same rank (a config may ask
    /// for sizes no file has: nothing of that size is allocated before the check).
    pub fn data(&self, leaf: &str, shape: &[usize]) -> Result<TensorData> {
        let name = self.note(leaf, shape);
        match self.shared.source {
            Source::Checkpoint(checkpoint) => checkpoint.values(&name, shape),
            Source::Plan => Ok(TensorData::zeros::<f32, _>(vec![1; shape.len()])),
        }
    }

    /// Tensor `leaf` of `shape` `[N · rows, …]` split into `N` tensors of `[rows, …]` on the
    /// host (PyTorch's `in_proj_weight` stacks q, k and v so); placeholders when planning.
    pub fn stacked<const N: usize>(&self, leaf: &str, shape: &[usize]) -> Result<[TensorData; N]> {
        let data = self.data(leaf, shape)?;
        Ok(match self.shared.source {
            Source::Checkpoint(_) => split_rows(&data),
            Source::Plan => std::array::from_fn(|_| data.clone()),
        })
    }

    /// Tensor `leaf` of `shape`, in the loader's float type.
    pub fn tensor<const D: usize>(&self, leaf: &str, shape: [usize; D]) -> Result<Tensor<B, D>> {
        self.tensor_as(leaf, shape, self.shared.dtype)
    }

    /// [`Loader::tensor`] in `dtype` instead of the loader's (T5's `wo` kept in F32).
    pub fn tensor_as<const D: usize>(
        &self,
        leaf: &str,
        shape: [usize; D],
        dtype: DType,
    ) -> Result<Tensor<B, D>> {
        match self.shared.source {
            Source::Checkpoint(_) => self.upload(self.data(leaf, &shape)?, dtype),
            Source::Plan => self.placeholder(leaf, &shape),
        }
    }

    /// The 2-D tensor `leaf` of `shape` `[rows, cols]`, transposed to `[cols, rows]` on the
    /// host (contiguous: products read a stored `[in, out]` matrix faster than a transposed
    /// view), in `dtype`.
    pub fn transposed(&self, leaf: &str, shape: [usize; 2], dtype: DType) -> Result<Tensor<B, 2>> {
        match self.shared.source {
            Source::Checkpoint(_) => {
                let data = self.data(leaf, &shape)?.convert_dtype(dtype);
                self.upload(transpose(data), dtype)
            }
            Source::Plan => self.placeholder(leaf, &shape),
        }
    }

    /// Host values (parts of a stacked tensor read with [`Loader::data`]) as a tensor in
    /// `dtype`, transposed first when `transpose_2d` (as [`Loader::transposed`]).
    pub fn upload_data<const D: usize>(
        &self,
        data: TensorData,
        dtype: DType,
        transpose_2d: bool,
    ) -> Result<Tensor<B, D>> {
        if let Source::Plan = self.shared.source {
            return Ok(Tensor::empty([1; D], (self.shared.device, DType::F32)));
        }
        let data = data.convert_dtype(dtype);
        match transpose_2d {
            true => self.upload(transpose(data), dtype),
            false => self.upload(data, dtype),
        }
    }

    fn upload<const D: usize>(&self, data: TensorData, dtype: DType) -> Result<Tensor<B, D>> {
        check_precision::<B>(self.shared.device, dtype)?;
        Ok(Tensor::from_data(
            data.convert_dtype(dtype),
            (self.shared.device, dtype),
        ))
    }

    /// What a plan answers a read with: a one-element F32 tensor of the same rank (a
    /// planned model is never run), after recording the read.
    fn placeholder<const D: usize>(&self, leaf: &str, shape: &[usize]) -> Result<Tensor<B, D>> {
        self.note(leaf, shape);
        Ok(Tensor::empty([1; D], (self.shared.device, DType::F32)))
    }

    /// Records that weight `leaf` (PyTorch shape `shape`) is held by parameter `param`, so
    /// that LoRA can find it (see [`WeightIndex`]).
    pub fn record(&self, leaf: &str, param: ParamId, layout: Layout, shape: &[usize]) {
        let weight = IndexedWeight {
            param,
            layout,
            shape: shape.to_vec(),
        };
        self.shared
            .index
            .borrow_mut()
            .insert(self.name(leaf), weight);
    }
}

/// The tensors `build` reads, by name and shape, in order, without reading or building
/// any: the list a model's config implies (what [`load_checked`] checks a file against).
pub fn plan<B: Backend, T>(
    device: &B::Device,
    build: impl FnOnce(&Loader<B>) -> Result<T>,
) -> Result<Vec<TensorSpec>> {
    // Planning builds nothing in the model's precision: F32, which every backend has.
    let loader = Loader::with_source(Source::Plan, device, DType::F32);
    drop(build(&loader)?);
    let read = loader.shared.read.take();
    Ok(read)
}

/// Loads a model with `build` from `checkpoint` into `dtype` tensors on `device`, after
/// checking the file against [`plan`]: every tensor `build` reads must be present with its
/// shape and a float dtype, and every other tensor must be one `ignorable` accepts;
/// otherwise nothing is built and the error names every problem. Returns the model and
/// the index of the weights it read.
pub fn load_checked<B: Backend, T>(
    checkpoint: &Checkpoint,
    device: &B::Device,
    dtype: DType,
    ignorable: impl Fn(&str) -> bool,
    build: impl Fn(&Loader<B>) -> Result<T>,
) -> Result<(T, WeightIndex)> {
    // Every model's tensors are made here: the GPU kernel cache is settled before them.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    crate::gpu::ensure_configured::<B>();
    check_precision::<B>(device, dtype)?;
    let expected = plan(device, &build)?;
    checkpoint.check(&expected, ignorable)?;
    let loader = Loader::with_source(Source::Checkpoint(checkpoint), device, dtype);
    let model = build(&loader)?;
    let index = loader.shared.index.take();
    Ok((
        model,
        WeightIndex {
            checkpoint: checkpoint.clone(),
            weights: index,
        },
    ))
}

/// Splits a `[N · rows, cols]` tensor into `N` tensors of `[rows, cols]` on the host.
fn split_rows<const N: usize>(data: &TensorData) -> [TensorData; N] {
    let row_shape: Vec<usize> = std::iter::once(data.shape[0] / N)
        .chain(data.shape[1..].iter().copied())
        .collect();
    let bytes = data.as_bytes();
    let part_len = bytes.len() / N;
    std::array::from_fn(|i| {
        let chunk = bytes[i * part_len..(i + 1) * part_len].to_vec();
        TensorData::from_bytes_vec(chunk, row_shape.clone(), data.dtype)
    })
}

/// Host transpose of a 2-D tensor of any element size.
fn transpose(data: TensorData) -> TensorData {
    let (rows, cols) = (data.shape[0], data.shape[1]);
    let bytes = data.as_bytes();
    let out = match data.dtype.size() {
        2 => transpose_blocked::<2>(bytes, rows, cols),
        4 => transpose_blocked::<4>(bytes, rows, cols),
        _ => transpose_blocked::<8>(bytes, rows, cols),
    };
    TensorData::from_bytes_vec(out, [cols, rows], data.dtype)
}

/// Row-major `[rows, cols]` of `N`-byte elements → `[cols, rows]`, in 32×32 blocks so that
/// reads and writes both stay in cache (billions of weights at load time).
fn transpose_blocked<const N: usize>(bytes: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    const BLOCK: usize = 32;
    let mut out = vec![0u8; bytes.len()];
    for r0 in (0..rows).step_by(BLOCK) {
        for c0 in (0..cols).step_by(BLOCK) {
            for r in r0..(r0 + BLOCK).min(rows) {
                for c in c0..(c0 + BLOCK).min(cols) {
                    let from = (r * cols + c) * N;
                    let to = (c * rows + r) * N;
                    out[to..to + N].copy_from_slice(&bytes[from..from + N]);
                }
            }
        }
    }
    out
}

/// Errors unless `dtype` is a float type the backend computes in.
fn check_precision<B: Backend>(device: &B::Device, dtype: DType) -> Result<()> {
    let float = matches!(dtype, DType::F32 | DType::F16 | DType::BF16);
    if float && B::supports_dtype(device, dtype) {
        Ok(())
    } else {
        Err(Error::UnsupportedPrecision {
            dtype: format!("{dtype:?}"),
            backend: B::name(device),
        })
    }
}
