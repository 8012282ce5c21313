//! Convolutions and linear layers for `Flex`, the CPU default, on rten-gemm.
//!
//! Burn flex 0.21 runs `conv2d` through its conv3d path: an NHWC copy of the input, an
//! unfolded (im2col) matrix and a new buffer per call, which made SD's U-Net and VAE copy-
//! and allocation-bound (docs/performance.md). Here the convolution is one GEMM per image,
//! `output[out, oh·ow] = weight[out, in·kh·kw] × im2col(image)[in·kh·kw, oh·ow]`, with:
//! - the image kept NCHW and read in place: rten-gemm's *virtual* im2col gathers each block
//!   of the unfolded matrix straight into its packing buffer, so the unfolded matrix never
//!   exists (1×1 convolutions read the image as the matrix it already is);
//! - the weight used as stored (`[out, in, kh, kw]` is already `[out, in·kh·kw]` row-major);
//! - the GEMM writing, bias included, straight into the output tensor's fresh buffer.
//!
//! Linear layers are one GEMM, `x[rows, in] × weight[in, out]`, bias fused, written straight
//! into the output (Burn flex's matmul goes through the `gemm` crate, then adds the bias in a
//! second pass over a second buffer).
//!
//! Other dtypes (F16/BF16 weights on the CPU) keep Burn's kernels.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::flex::{FlexTensor, Layout};
use burn::tensor::{Bytes, DType, Shape, Tensor, TensorPrimitive};
use rten_gemm::{
    BiasVector, ColOffsets, GemmExecutor, GemmInputA, GemmInputB, GemmUninitOptions, Im2Col,
    RowOffsets,
};
use rten_tensor::NdTensorView;

use burn::tensor::module::linear;

use super::burn_conv2d;

impl super::Backend for Flex {
    fn conv2d_forward(
        x: Tensor<Self, 4>,
        weight: Tensor<Self, 4>,
        bias: Option<Tensor<Self, 1>>,
        stride: usize,
        padding: [usize; 2],
        padding_end: [usize; 2],
    ) -> Tensor<Self, 4> {
        let all_f32 = x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        let geometry = Geometry::new(x.dims(), weight.dims(), stride, padding, padding_end);
        match (all_f32, geometry) {
            (true, Some(geometry)) => {
                let primitive = |t: Tensor<Self, 4>| t.into_primitive().tensor();
                let output = geometry.conv(
                    primitive(x),
                    primitive(weight),
                    bias.map(|b| b.into_primitive().tensor()),
                );
                Tensor::from_primitive(TensorPrimitive::Float(output))
            }
            _ => burn_conv2d(x, weight, bias, stride, padding, padding_end),
        }
    }

    fn linear_forward<const D: usize>(
        x: Tensor<Self, D>,
        weight: Tensor<Self, 2>,
        bias: Option<Tensor<Self, 1>>,
    ) -> Tensor<Self, D> {
        let dims = x.dims();
        let [d_in, d_out] = weight.dims();
        let supported = x.dtype() == DType::F32
            && weight.dtype() == DType::F32
            && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32)
            && D >= 2
            && dims[D - 1] == d_in
            && dims.iter().chain(&[d_out]).all(|&d| d > 0);
        if !supported {
            return linear(x, weight, bias);
        }
        let rows: usize = dims[..D - 1].iter().product();
        let x = x.into_primitive().tensor().to_contiguous();
        let weight = weight.into_primitive().tensor().to_contiguous();
        let bias = bias.map(|b| b.into_primitive().tensor().to_contiguous());
        let options = GemmUninitOptions {
            bias: bias.as_ref().map(|b| BiasVector::Row(f32_slice(b))),
            ..Default::default()
        };
        let mut shape = dims;
        shape[D - 1] = d_out;
        // SAFETY: the GEMM writes every element of its `rows × d_out` output.
        let output = unsafe {
            fresh_output(Shape::new(shape), |out| {
                EXECUTOR
                    .with(|gemm| {
                        gemm.gemm_uninit(
                            out,
                            GemmInputA::Unpacked(NdTensorView::from_data(
                                [rows, d_in],
                                f32_slice(&x),
                            )),
                            GemmInputB::Unpacked(NdTensorView::from_data(
                                [d_in, d_out],
                                f32_slice(&weight),
                            )),
                            options,
                        )
                    })
                    .map(|_| ())
                    .expect("linear: GEMM sizes are the checked tensor sizes");
            })
        };
        Tensor::from_primitive(TensorPrimitive::Float(output))
    }
}

/// The sizes of one convolution, checked to fit rten-gemm's i32 image offsets.
struct Geometry {
    batch: usize,
    channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel: [usize; 2],
    stride: usize,
    padding: [usize; 2],
    /// The image's size with its padding.
    padded: [usize; 2],
    out_size: [usize; 2],
}

impl Geometry {
    /// `None` for what this kernel leaves to Burn's: empty tensors, a kernel larger than the
    /// padded image, or an image too large for i32 offsets.
    fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: usize,
        padding: [usize; 2],
        padding_end: [usize; 2],
    ) -> Option<Self> {
        let [batch, channels, height, width] = x;
        let [out_channels, weight_channels, kh, kw] = weight;
        let padded = [
            height + padding[0] + padding_end[0],
            width + padding[1] + padding_end[1],
        ];
        let sizes_fit = weight_channels == channels
            && x.iter().chain(&weight).all(|&d| d > 0)
            && stride > 0
            && padded[0] >= kh
            && padded[1] >= kw
            // Offsets and their sums (see `im2col`) stay within ±4·channels·padded area.
            && i32::try_from(4 * channels * padded[0] * padded[1]).is_ok();
        sizes_fit.then(|| Self {
            batch,
            channels,
            height,
            width,
            out_channels,
            kernel: [kh, kw],
            stride,
            padding,
            padded,
            out_size: [(padded[0] - kh) / stride + 1, (padded[1] - kw) / stride + 1],
        })
    }

    /// A convolution that is a plain matrix product of the weight and the image.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == 1 && self.out_size == [self.height, self.width]
    }

    fn conv(&self, x: FlexTensor, weight: FlexTensor, bias: Option<FlexTensor>) -> FlexTensor {
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let bias = bias.map(|b| b.to_contiguous());
        let image = f32_slice(&x);
        let weight = NdTensorView::from_data(
            [
                self.out_channels,
                self.channels * self.kernel[0] * self.kernel[1],
            ],
            f32_slice(&weight),
        );
        let options = GemmUninitOptions {
            bias: bias.as_ref().map(|b| BiasVector::Column(f32_slice(b))),
            ..Default::default()
        };

        let [out_h, out_w] = self.out_size;
        let image_len = self.channels * self.height * self.width;
        let output_len = self.out_channels * out_h * out_w;
        let shape = Shape::new([self.batch, self.out_channels, out_h, out_w]);
        // SAFETY: each image's GEMM writes the whole `output_len` chunk of its output.
        unsafe {
            fresh_output(shape, |output| {
                EXECUTOR.with(|gemm| {
                    for (image, out) in image
                        .chunks_exact(image_len)
                        .zip(output.chunks_exact_mut(output_len))
                    {
                        let run = |rhs: GemmInputB<f32>, out: &mut [MaybeUninit<f32>]| {
                            gemm.gemm_uninit(
                                out,
                                GemmInputA::Unpacked(weight),
                                rhs,
                                options.clone(),
                            )
                            .map(|_| ())
                        };
                        let done = if self.is_pointwise() {
                            let matrix = NdTensorView::from_data(
                                [self.channels, self.height * self.width],
                                image,
                            );
                            run(GemmInputB::Unpacked(matrix), out)
                        } else {
                            let image = NdTensorView::from_data(
                                [self.channels, self.height, self.width],
                                image,
                            );
                            run(GemmInputB::Im2Col(&self.im2col(image, gemm)), out)
                        };
                        done.expect("conv2d: GEMM sizes are derived from the checked geometry");
                    }
                })
            })
        }
    }

    /// rten-gemm's virtual im2col of one NCHW image: for each row of the unfolded matrix
    /// (input channel, kernel row, kernel column) and each column (output pixel), offsets
    /// into the image, padding being offsets outside `[0, max]` (read as zeros). Both tables
    /// are padded to the GEMM kernel's steps with offsets that are always outside.
    fn im2col<'a>(&self, image: NdTensorView<'a, f32, 3>, gemm: &GemmExecutor) -> Im2Col<'a, f32> {
        let [kh, kw] = self.kernel;
        let [out_h, out_w] = self.out_size;
        let width = self.width as i32;
        let plane = (self.height * self.width) as i32;
        // Below minus any entry's magnitude (each is at most the padded area), so that a sum
        // with an outside entry is negative, and far enough from i32::MIN not to overflow.
        let outside = -((self.padded[0] * self.padded[1]) as i32) - 1;

        let rows = self.channels * kh * kw;
        let padded_rows = rows.next_multiple_of(gemm.im2col_row_count_step());
        let mut row_offsets = RowOffsets {
            chan: Vec::with_capacity(padded_rows),
            y: Vec::with_capacity(padded_rows),
            x: Vec::with_capacity(padded_rows),
        };
        for row in 0..rows {
            let (channel, tap) = (row / (kh * kw), row % (kh * kw));
            row_offsets.chan.push(channel as i32 * plane);
            row_offsets.y.push((tap / kw) as i32 * width);
            row_offsets.x.push((tap % kw) as i32);
        }
        row_offsets.chan.resize(padded_rows, 0);
        row_offsets.y.resize(padded_rows, outside);
        row_offsets.x.resize(padded_rows, outside);

        let columns = out_h * out_w;
        let padded_columns = columns.next_multiple_of(gemm.im2col_col_count_step());
        let mut col_offsets = ColOffsets {
            y: Vec::with_capacity(padded_columns),
            x: Vec::with_capacity(padded_columns),
        };
        let origin = |out: usize, pad: usize| (out * self.stride) as i32 - pad as i32;
        for column in 0..columns {
            let (oy, ox) = (column / out_w, column % out_w);
            col_offsets.y.push(origin(oy, self.padding[0]) * width);
            col_offsets.x.push(origin(ox, self.padding[1]));
        }
        col_offsets.y.resize(padded_columns, outside);
        col_offsets.x.resize(padded_columns, outside);

        Im2Col {
            image,
            row_offsets,
            col_offsets,
            n_cols: columns,
            n_rows: rows,
            max_y_offset: plane - width,
            max_x_offset: width - 1,
        }
    }
}

/// A new f32 tensor of `shape` whose elements `fill` writes, without zeroing them first.
///
/// # Safety
/// `fill` must initialise every element of the slice it is given.
unsafe fn fresh_output(shape: Shape, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> FlexTensor {
    let len = shape.num_elements();
    let mut values: Vec<f32> = Vec::with_capacity(len);
    fill(&mut values.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` initialised all `len` elements.
    unsafe { values.set_len(len) };
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

thread_local! {
    /// rten-gemm's f32 GEMM for this CPU (AVX-512, AVX2+FMA, NEON or generic), chosen once
    /// per calling thread (an executor may not move between threads).
    static EXECUTOR: GemmExecutor = GemmExecutor::default();
}

fn f32_slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("conv2d: contiguous f32 tensors, checked by the caller")
}
