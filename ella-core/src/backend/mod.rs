//! ella's backend trait: Burn's `Backend` plus the few ops whose generic Burn kernels are the
//! bottleneck of Stable Diffusion on some backend (Burn's *backend extension* pattern).
//!
//! Every op defaults to Burn's own, so a backend overrides only what it runs faster; today
//! that is the CPU default, `Flex`, whose convolutions and linear layers run on rten-gemm
//! (`cpu`). Models
//! are generic over this trait, so a host picks a backend exactly as with Burn's.

#[cfg(feature = "flex")]
mod cpu;

use burn::tensor::Tensor;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::PaddedConvOptions;

/// A Burn backend ella can run on: Burn's trait, with ops a backend may specialise.
pub trait Backend: burn::tensor::backend::Backend {
    /// PyTorch's `nn.Conv2d` forward on NCHW tensors (no groups, no dilation): `weight`
    /// `[out, in, kh, kw]`, `padding` `[top, left]` and `padding_end` `[bottom, right]`.
    fn conv2d_forward(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 1>>,
        stride: usize,
        padding: [usize; 2],
        padding_end: [usize; 2],
    ) -> Tensor<Self, 4> {
        burn_conv2d(x, weight, bias, stride, padding, padding_end)
    }

    /// PyTorch's `nn.Linear` forward with the weight stored `[in, out]`.
    fn linear_forward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        linear(x, weight, bias)
    }
}

/// Burn's `conv2d`, the default of [`Backend::conv2d_forward`].
fn burn_conv2d<B: burn::tensor::backend::Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    stride: usize,
    padding: [usize; 2],
    padding_end: [usize; 2],
) -> Tensor<B, 4> {
    let options = PaddedConvOptions::asymmetric([stride; 2], padding, padding_end, [1, 1], 1);
    conv2d(x, weight, bias, options)
}

#[cfg(feature = "ndarray")]
impl Backend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl Backend for crate::Wgpu {}
#[cfg(feature = "cuda")]
impl Backend for crate::Cuda {}
