//! ella's `Backend::conv2d_forward` (on `Flex`: rten-gemm with a virtual im2col, `backend::cpu`)
//! against a direct convolution computed here in f64, and Burn's own `conv2d` against the
//! same reference, on the awkward shapes: stride 2, padding 0 and 1, the VAE downsampler's
//! extra end padding, 1×1 and 3×3 kernels, non-square and odd sizes, batch 2, channel counts
//! that are not multiples of a SIMD width, depths beyond one GEMM block, inputs that are not
//! contiguous. CPU backends only: the GPU backends use Burn's kernel unchanged.

use burn::tensor::module::conv2d;
use burn::tensor::ops::PaddedConvOptions;
use burn::tensor::{Tensor, TensorData};
use ella_core::Backend;

use crate::common::{assert_close, values};

/// One convolution: input `[batch, c_in, h, w]`, a `k × k` kernel to `c_out` channels.
#[derive(Clone, Copy, Debug)]
struct Case {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
    /// Extra padding at the bottom and right (the VAE encoder's downsamplers).
    extra_end: usize,
    bias: bool,
    /// Build the input transposed in memory (a strided view), as `swap_dims` leaves it.
    strided_input: bool,
}

const fn case(batch: usize, c_in: usize, c_out: usize, h: usize, w: usize, k: usize) -> Case {
    Case {
        batch,
        c_in,
        c_out,
        h,
        w,
        k,
        stride: 1,
        padding: k / 2,
        extra_end: 0,
        bias: true,
        strided_input: false,
    }
}

const CASES: [Case; 11] = [
    case(2, 5, 7, 9, 11, 3),
    case(2, 4, 9, 13, 11, 3),
    Case {
        stride: 2,
        ..case(1, 17, 3, 13, 10, 3)
    },
    Case {
        stride: 2,
        padding: 0,
        extra_end: 1,
        ..case(2, 4, 6, 8, 7, 3)
    },
    case(2, 19, 33, 5, 3, 1),
    Case {
        stride: 2,
        ..case(1, 3, 5, 6, 7, 1)
    },
    Case {
        padding: 0,
        bias: false,
        ..case(1, 2, 2, 5, 4, 3)
    },
    case(1, 1, 1, 2, 2, 3),
    case(1, 130, 40, 6, 5, 3),
    case(1, 8, 16, 40, 33, 3),
    Case {
        strided_input: true,
        ..case(2, 6, 5, 7, 9, 3)
    },
];

impl Case {
    fn out_size(&self) -> [usize; 2] {
        let out =
            |size: usize| (size + 2 * self.padding + self.extra_end - self.k) / self.stride + 1;
        [out(self.h), out(self.w)]
    }

    /// The convolution by its definition, in f64.
    fn reference(&self, x: &[f32], weight: &[f32], bias: &[f32]) -> TensorData {
        let [oh, ow] = self.out_size();
        let (k, pad) = (self.k, self.padding as isize);
        let mut out = Vec::with_capacity(self.batch * self.c_out * oh * ow);
        for b in 0..self.batch {
            for o in 0..self.c_out {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = if self.bias { bias[o] as f64 } else { 0.0 };
                        for c in 0..self.c_in {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let y = (oy * self.stride + ky) as isize - pad;
                                    let x_ = (ox * self.stride + kx) as isize - pad;
                                    if y < 0
                                        || x_ < 0
                                        || y >= self.h as isize
                                        || x_ >= self.w as isize
                                    {
                                        continue;
                                    }
                                    let (y, x_) = (y as usize, x_ as usize);
                                    let input = x[((b * self.c_in + c) * self.h + y) * self.w + x_];
                                    let w = weight[((o * self.c_in + c) * k + ky) * k + kx];
                                    sum += input as f64 * w as f64;
                                }
                            }
                        }
                        out.push(sum as f32);
                    }
                }
            }
        }
        TensorData::new(out, [self.batch, self.c_out, oh, ow])
    }
}

fn conv_matches_reference<B: Backend>() {
    let device = Default::default();
    for case in CASES {
        let x = values(case.batch * case.c_in * case.h * case.w, 1);
        let weight = values(case.c_out * case.c_in * case.k * case.k, 2);
        let bias = values(case.c_out, 3);
        let expected = case.reference(&x, &weight, &bias);

        let shape = [case.batch, case.c_in, case.h, case.w];
        let input = match case.strided_input {
            false => Tensor::<B, 4>::from_data(TensorData::new(x, shape), &device),
            true => {
                // The same values stored `[batch, c_in, w, h]`, then viewed as `[.., h, w]`.
                let transposed =
                    Tensor::<B, 4>::from_data(TensorData::new(x, shape), &device).swap_dims(2, 3);
                Tensor::<B, 4>::from_data(transposed.into_data(), &device).swap_dims(2, 3)
            }
        };
        let kernel = [case.c_out, case.c_in, case.k, case.k];
        let weight = Tensor::<B, 4>::from_data(TensorData::new(weight, kernel), &device);
        let bias = case
            .bias
            .then(|| Tensor::<B, 1>::from_data(TensorData::new(bias, [case.c_out]), &device));
        let end = case.padding + case.extra_end;

        // Sums of up to c_in·k² products of values in [-1, 1], in f32.
        let tolerance = 1e-6 * (case.c_in * case.k * case.k) as f32 + 1e-5;
        let ella = B::conv2d_forward(
            input.clone(),
            weight.clone(),
            bias.clone(),
            case.stride,
            [case.padding; 2],
            [end; 2],
        );
        assert_close(ella, &expected, tolerance, &format!("ella conv2d {case:?}"));
        let options =
            PaddedConvOptions::asymmetric([case.stride; 2], [case.padding; 2], [end; 2], [1, 1], 1);
        let burn = conv2d(input, weight, bias, options);
        assert_close(burn, &expected, tolerance, &format!("Burn conv2d {case:?}"));
    }
}

#[cfg(feature = "flex")]
mod flex {
    #[test]
    fn conv_matches_reference() {
        super::conv_matches_reference::<burn::backend::Flex>();
    }
}

#[cfg(feature = "ndarray")]
mod ndarray {
    #[test]
    fn conv_matches_reference() {
        super::conv_matches_reference::<burn::backend::NdArray>();
    }
}
