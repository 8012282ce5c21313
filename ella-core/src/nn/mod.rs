//! Small layers shared by several models: multi-head attention through Burn's fused
//! `attention` op, an affine-free LayerNorm with f32 statistics, and the sinusoidal
//! timestep features of diffusers' `Timesteps`.

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Tensor, TensorData};

/// `[batch, seq, heads * head_dim]` → `[batch, heads, seq, head_dim]`.
pub fn split_heads<B: Backend>(x: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, width] = x.dims();
    x.reshape([batch, seq, heads, width / heads])
        .swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` → `[batch, seq, heads * head_dim]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = x.dims();
    x.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// Multi-head scaled dot-product attention on `[batch, seq, width]` projections.
///
/// `scale` `None` is the usual `1/sqrt(head_dim)`; T5 passes `Some(1.0)` because it folds
/// the scale into its initialisation. `mask` (true = ignore that key) and `bias` are
/// `[batch, heads, q_len, k_len]`.
pub fn multi_head_attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    heads: usize,
    scale: Option<f64>,
    mask: Option<Tensor<B, 4, Bool>>,
    bias: Option<Tensor<B, 4>>,
) -> Tensor<B, 3> {
    let out = attention(
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
        mask,
        bias,
        AttentionModuleOptions {
            scale,
            softcap: None,
            is_causal: false,
        },
    );
    merge_heads(out)
}

/// LayerNorm over the last dim without affine parameters (`elementwise_affine=False`),
/// statistics in f32 whatever the activation dtype, as PyTorch does for half inputs.
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    ((x - mean) / (var + eps).sqrt()).cast(dtype)
}

/// Sinusoidal timestep features as diffusers' `get_timestep_embedding`, `[batch, channels]`.
///
/// Frequencies are `exp(-ln(10000) · i / (half - downscale_freq_shift))`, computed in f32
/// like the reference; with `flip_sin_to_cos` the cosine half comes first. Timesteps may be
/// fractional (sigma-based schedulers pass them so).
pub fn timestep_features(
    timesteps: &[f32],
    channels: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
) -> TensorData {
    let half = channels / 2;
    let neg_log_period = -(10000f64.ln() as f32);
    let frequencies: Vec<f32> = (0..half)
        .map(|i| (neg_log_period * i as f32 / (half as f32 - downscale_freq_shift)).exp())
        .collect();
    let mut values = Vec::with_capacity(timesteps.len() * channels);
    for &t in timesteps {
        let args = frequencies.iter().map(|f| t * f);
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.map(|a| (a.sin(), a.cos())).unzip();
        let (first, second) = if flip_sin_to_cos {
            (cos, sin)
        } else {
            (sin, cos)
        };
        values.extend(first);
        values.extend(second);
        // An odd width is zero-padded at the end, as the reference does.
        values.extend(std::iter::repeat_n(0.0, channels - 2 * half));
    }
    TensorData::new(values, [timesteps.len(), channels])
}
