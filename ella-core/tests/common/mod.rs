//! Helpers shared by the parity tests: fixture paths, reference tensors, tolerances, and a
//! macro that runs one test body on every CPU backend compiled in.
#![allow(dead_code)]

pub mod counting;
pub mod files;
pub mod fuzz;

use std::path::PathBuf;

use burn::tensor::{Int, Tensor, TensorData};
use ella_core::Backend;
use ella_core::Checkpoint;

/// Max abs error allowed against the PyTorch reference when both sides run in f32, on every
/// backend: the CPU ones and the fused GPU ones (fused wgpu on lavapipe passes every parity
/// test within it). CUDA's F32 matmuls run in TF32, which
/// [`assert_close`] widens to [`TF32_RELATIVE_TOLERANCE`]. Half-precision runs state their
/// own bounds (`pipeline::half_precision_sampling`, the T5 F16 tests).
pub const F32_TOLERANCE: f32 = 1e-4;

/// Deterministic values in [-1, 1], for kernel tests with host references.
pub fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104_729) % 201) as f32 / 100.0 - 1.0)
        .collect()
}

/// A file under `tests/fixtures`, or under `$ELLA_FIXTURES` when set (test binaries run on
/// another machine, as `scripts/gpu-check.sh` does).
pub fn fixture(path: &str) -> PathBuf {
    std::env::var_os("ELLA_FIXTURES")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
            PathBuf::from,
        )
        .join(path)
}

/// The tiny test models: the T5 and connector fixtures on the tiny SD1.5 folder.
pub fn tiny_paths() -> ella_core::ModelPaths {
    ella_core::ModelPaths {
        ella: Some(ella_core::EllaPaths {
            t5: fixture("t5"),
            connector: fixture("ella/ella.safetensors"),
            config: Some(fixture("ella/config.json")),
        }),
        ..ella_core::ModelPaths::ella("", "", fixture("sd"))
    }
}

/// A reference file of named tensors written by `scripts/make_fixtures.py`.
pub struct Reference(Checkpoint);

impl Reference {
    pub fn open(name: &str) -> Self {
        Self(Checkpoint::open(fixture(&format!("reference/{name}"))).expect("reference file"))
    }

    pub fn data(&self, name: &str) -> TensorData {
        self.0.data(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether the reference has a tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.shape(name).is_some()
    }

    /// An int32 tensor of the reference (token ids, masks) as rows.
    pub fn rows(&self, name: &str) -> Vec<Vec<u32>> {
        let data = self.data_int(name);
        let cols = data.shape[1];
        data.iter::<i64>()
            .map(|v| v as u32)
            .collect::<Vec<_>>()
            .chunks(cols)
            .map(<[u32]>::to_vec)
            .collect()
    }

    /// A non-float tensor's dtype, shape and bytes (the loaders read floats only).
    pub fn raw(&self, name: &str) -> (safetensors::Dtype, Vec<usize>, Vec<u8>) {
        let bytes = std::fs::read(self.0.path()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        (view.dtype(), view.shape().to_vec(), view.data().to_vec())
    }

    /// An RGB8 image stored as bytes `[height, width, 3]`.
    pub fn image(&self, name: &str) -> ella_core::Image {
        let (_, shape, pixels) = self.raw(name);
        ella_core::Image {
            width: shape[1],
            height: shape[0],
            pixels,
        }
    }

    pub fn data_int(&self, name: &str) -> TensorData {
        let (dtype, shape, bytes) = self.raw(name);
        assert_eq!(dtype, safetensors::Dtype::I32, "{name}");
        let values: Vec<i32> = bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        TensorData::new(values, shape)
    }

    pub fn int_tensor<B: Backend>(&self, name: &str, device: &B::Device) -> Tensor<B, 2, Int> {
        let data = self.data_int(name);
        let values: Vec<i64> = data.iter::<i64>().collect();
        Tensor::from_data(TensorData::new(values, data.shape.clone()), device)
    }
}

/// Relative tolerance on backends whose F32 matmuls run in TF32 (10-bit mantissa) on tensor
/// cores: CUDA, as PyTorch with `allow_tf32`.
pub const TF32_RELATIVE_TOLERANCE: f32 = 1e-2;

/// Whether `B`'s name (Burn's `Backend::name`, e.g. "fusion<jit<wgpu<spirv>>>") contains `part`.
pub fn backend_is<B: Backend>(part: &str) -> bool {
    B::name(&Default::default()).to_lowercase().contains(part)
}

/// Whether `B` multiplies F32 matrices in TF32.
pub fn matmul_in_tf32<B: Backend>() -> bool {
    backend_is::<B>("cuda")
}

/// Asserts equal shapes and a max abs error ≤ `tolerance` (at least
/// [`TF32_RELATIVE_TOLERANCE`] × the reference's scale on TF32 backends); returns the error.
pub fn assert_close<B: Backend, const D: usize>(
    actual: Tensor<B, D>,
    expected: &TensorData,
    tolerance: f32,
    what: &str,
) -> f32 {
    let tolerance = match matmul_in_tf32::<B>() {
        true => tolerance.max(TF32_RELATIVE_TOLERANCE * max_abs(expected)),
        false => tolerance,
    };
    let actual = actual.into_data().convert::<f32>();
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let max_err = actual
        .iter::<f32>()
        .zip(expected.iter::<f32>())
        .map(|(a, e)| {
            if a.is_nan() || e.is_nan() {
                f32::INFINITY
            } else {
                (a - e).abs()
            }
        })
        .fold(0.0f32, f32::max);
    let scale = max_abs(expected);
    assert!(
        max_err <= tolerance,
        "{what}: max abs error {max_err:e} > {tolerance:e} (reference max |x| = {scale})"
    );
    assert!(
        scale > 0.0,
        "{what}: reference is all zeros, nothing was compared"
    );
    max_err
}

fn max_abs(data: &TensorData) -> f32 {
    data.iter::<f32>().map(f32::abs).fold(0.0f32, f32::max)
}

#[cfg(feature = "wgpu")]
mod wgpu_skip;
#[cfg(feature = "wgpu")]
#[allow(unused_imports)] // not every test binary has wgpu tests
pub use wgpu_skip::wgpu_usable;

/// GPU tests keep their kernels where ella does by default, also those that make tensors
/// without ella's loaders (which settle the directory otherwise).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn default_kernel_cache() {
    ella_core::gpu::set_kernel_cache_dir(ella_core::gpu::default_kernel_cache_dir())
        .expect("the default kernel cache directory");
}

/// Runs `body::<Backend>()` as one `#[test]` per backend compiled in, in a module named
/// after it (`cargo test cuda::` runs the CUDA ones). An entry marked `#[cpu]` skips wgpu:
/// a check of file layouts or request logic whose numbers the other entries already prove
/// on wgpu, and whose run on lavapipe (a minute a sampling) CI cannot afford.
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$only:ident])? $name:ident => $body:ident),* $(,)?) => {
        #[cfg(feature = "flex")]
        mod flex {
            $(#[test] fn $name() { super::$body::<burn::backend::Flex>(); })*
        }
        #[cfg(feature = "ndarray")]
        mod ndarray {
            $(#[test] fn $name() { super::$body::<burn::backend::NdArray>(); })*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $($crate::wgpu_test!($($only)? ; $name => $body);)*
        }
        #[cfg(feature = "cuda")]
        mod cuda {
            $(#[test] fn $name() {
                $crate::common::default_kernel_cache();
                super::$body::<ella_core::Cuda>();
            })*
        }
    };
}

/// One wgpu test of [`backend_tests`], none for a `#[cpu]` entry.
#[macro_export]
macro_rules! wgpu_test {
    (cpu ; $name:ident => $body:ident) => {};
    (; $name:ident => $body:ident) => {
        #[test]
        fn $name() {
            if !$crate::common::wgpu_usable() {
                return;
            }
            $crate::common::default_kernel_cache();
            super::$body::<ella_core::Wgpu>();
        }
    };
}
