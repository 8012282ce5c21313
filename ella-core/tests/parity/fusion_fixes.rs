//! The op patterns behind the Burn fixes vendored in `vendor/` (see its README), each checked
//! against a reference computed here in f64. They matter on the fused GPU backends (wgpu,
//! CUDA), where Burn 0.21 without the patches gives wrong values; the CPU backends run them
//! too, as a check of the references. The third fix, tracel-ai/burn#5292 (a panic), is
//! covered by `pipeline::*::half_precision_sampling`, the test that hit it.

use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Bool, Tensor, TensorData};
use ella_core::Backend;

use crate::common::{assert_close, values};

/// `rows × k` times `k × n` (row-major), plus `bias`, in f64.
fn affine(x: &[f32], w: &[f32], bias: &[f32], k: usize, n: usize) -> Vec<f32> {
    x.chunks(k)
        .flat_map(|row| {
            (0..n).map(move |j| {
                let dot: f64 = (0..k).map(|i| row[i] as f64 * w[i * n + j] as f64).sum();
                (dot + bias[j] as f64) as f32
            })
        })
        .collect()
}

fn linear<B: Backend>(d_in: usize, d_out: usize, seed: usize, device: &B::Device) -> Linear<B> {
    let mut layer = LinearConfig::new(d_in, d_out).init::<B>(device);
    layer.weight = layer.weight.map(|_| {
        Tensor::from_data(
            TensorData::new(values(d_in * d_out, seed), [d_in, d_out]),
            device,
        )
    });
    layer.bias = layer.bias.map(|b| {
        b.map(|_| Tensor::from_data(TensorData::new(values(d_out, seed + 1), [d_out]), device))
    });
    layer
}

/// tracel-ai/burn#5122: a batched vector × matrix product (`[batch, 1, k]` through a
/// `Linear`, as the SUR-adapter's per-token mode runs it) fused with the bias: the fused
/// `gemv_unit_perpendicular` kernel computed one batch only (errors ≈ 1).
fn batched_vector_matrix<B: Backend>() {
    let device = Default::default();
    let (batch, d, ff) = (154, 32, 64);
    let first = linear::<B>(d, ff, 1, &device);
    let second = linear::<B>(ff, d, 3, &device);
    let x = values(batch * d, 5);
    let input = Tensor::<B, 3>::from_data(TensorData::new(x.clone(), [batch, 1, d]), &device);
    let out = second.forward(first.forward(input));
    let hidden = affine(&x, &values(d * ff, 1), &values(ff, 2), d, ff);
    let expected = affine(&hidden, &values(ff * d, 3), &values(d, 4), ff, d);
    assert_close(
        out,
        &TensorData::new(expected, [batch, 1, d]),
        1e-4,
        "linear(linear(x)) on [154, 1, 32]",
    );
}

/// tracel-ai/burn#5268: a masked softmax written out (mask, max, subtract, exp, sum,
/// divide), as attention fallbacks do: the fused reduce-broadcast masked its bounds check
/// instead of branching and wrote over position 0 of each row.
fn masked_softmax<B: Backend>() {
    let device = Default::default();
    let (batch, n) = (6, 96);
    let x = values(batch * n * n, 7);
    let scores = Tensor::<B, 3>::from_data(TensorData::new(x.clone(), [batch, n, n]), &device);
    let causal: Vec<bool> = (0..n * n).map(|i| i % n > i / n).collect();
    let mask = Tensor::<B, 3, Bool>::from_data(TensorData::new(causal, [1, n, n]), &device);
    let masked = scores.mask_fill(mask, -1e4);
    let shifted = masked.clone() - masked.max_dim(2);
    let exp = shifted.exp();
    let out = exp.clone() / exp.sum_dim(2);
    let expected: Vec<f32> = x
        .chunks(n)
        .enumerate()
        .flat_map(|(r, row)| {
            let i = r % n;
            let e: Vec<f64> = (0..n)
                .map(|j| if j > i { 0.0 } else { (row[j] as f64).exp() })
                .collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |v| (v / sum) as f32)
        })
        .collect();
    assert_close(
        out,
        &TensorData::new(expected, [batch, n, n]),
        1e-5,
        "causal masked softmax on [6, 96, 96]",
    );
}

backend_tests! {
    batched_vector_matrix => batched_vector_matrix,
    masked_softmax => masked_softmax,
}
