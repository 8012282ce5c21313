//! Small layers shared by several models: multi-head attention through Burn's fused
//! `attention` op, layer and group norms with f32 statistics, 2-D convolution, PyTorch's
//! nearest-neighbour resize, the sinusoidal timestep features of diffusers' `Timesteps`, and
//! the activations configs name.

use crate::backend::Backend;
use burn::module::{Module, Param};
use burn::tensor::activation::{gelu, relu, sigmoid, silu, tanh};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use crate::error::Result;
use crate::weights::{Layout, Loader};

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

/// The most bytes of f32 attention scores one attention call may hold at once: longer
/// queries are computed in row chunks (exactly: each query row's softmax is its own), so
/// backends that materialize the score matrix stay bounded at any image size.
pub const ATTENTION_CHUNK_BYTES: usize = 64 << 20;

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
    let [batch, q_len, _] = q.dims();
    let k_len = k.dims()[1];
    let (q, k, v) = (
        split_heads(q, heads),
        split_heads(k, heads),
        split_heads(v, heads),
    );
    let options = AttentionModuleOptions {
        scale,
        softcap: None,
        is_causal: false,
    };
    let row_bytes = (batch * heads * k_len * 4).max(1);
    let chunk = (ATTENTION_CHUNK_BYTES / row_bytes).max(1);
    if q_len <= chunk {
        return merge_heads(attention(q, k, v, mask, bias, options));
    }
    let rows = |t: Tensor<B, 4>, start: usize, len: usize| t.narrow(2, start, len);
    let parts = (0..q_len)
        .step_by(chunk)
        .map(|start| {
            let len = chunk.min(q_len - start);
            attention(
                rows(q.clone(), start, len),
                k.clone(),
                v.clone(),
                mask.clone().map(|m| m.narrow(2, start, len)),
                bias.clone().map(|b| rows(b, start, len)),
                options,
            )
        })
        .collect();
    merge_heads(Tensor::cat(parts, 2))
}

/// LayerNorm over the last dim without affine parameters (`elementwise_affine=False`),
/// statistics in f32 whatever the activation dtype, as PyTorch does for half inputs.
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let dtype = x.dtype();
    let x = x.cast(DType::F32);
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    ((x - mean) / (var + eps).sqrt()).cast(dtype)
}

/// An activation as configs name it (transformers' `ACT2FN`, diffusers' `get_activation`):
/// CLIP's `hidden_act`, the activation in T5's `feed_forward_proj`, U-Net and VAE `act_fn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Activation {
    #[serde(rename = "relu")]
    Relu,
    /// Exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU, tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluNew,
    /// `x·σ(1.702x)`, OpenAI CLIP's.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    /// `x` through the activation, elementwise.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Relu => relu(x),
            Activation::Gelu => gelu(x),
            Activation::GeluNew => gelu_new(x),
            Activation::QuickGelu => x.clone() * sigmoid(x * 1.702),
            Activation::Silu => silu(x),
        }
    }
}

/// `gelu_new`, the tanh approximation: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
/// Burn's `gelu_approximate` computes `x³` with a float `powf`, several times slower.
fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    x * (tanh(inner) + 1.0) * 0.5
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

/// PyTorch `nn.MultiheadAttention` (biases on, batch first here): `in_proj_weight` stacks the
/// q, k and v projections, kept as three linears.
#[derive(Module, Debug)]
pub struct MultiheadAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    #[module(skip)]
    pub heads: usize,
}

impl<B: Backend> MultiheadAttention<B> {
    /// Reads `in_proj_weight` / `in_proj_bias` (q, k, v stacked) and `out_proj`.
    pub fn load(vb: &Loader<B>, width: usize, heads: usize) -> Result<Self> {
        let [w_q, w_k, w_v] = vb.stacked("in_proj_weight", &[3 * width, width])?;
        let [b_q, b_k, b_v] = vb.stacked("in_proj_bias", &[3 * width])?;
        let part = |weight, bias| Linear::from_parts(vb, weight, bias);
        Ok(Self {
            q_proj: part(w_q, b_q)?,
            k_proj: part(w_k, b_k)?,
            v_proj: part(w_v, b_v)?,
            out_proj: Linear::load(&vb.pp("out_proj"), width, width, true)?,
            heads,
        })
    }

    /// `query` `[batch, q_len, width]` attends to `key_value` `[batch, kv_len, width]`.
    pub fn forward(&self, query: Tensor<B, 3>, key_value: Tensor<B, 3>) -> Tensor<B, 3> {
        let attended = multi_head_attention(
            self.q_proj.forward(query),
            self.k_proj.forward(key_value.clone()),
            self.v_proj.forward(key_value),
            self.heads,
            None,
            None,
            None,
        );
        self.out_proj.forward(attended)
    }
}

/// PyTorch `nn.Linear`, the weight stored `[in, out]` (transposed once at load, so the
/// product reads it contiguously). Runs [`Backend::linear_forward`].
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
}

impl<B: Backend> Linear<B> {
    /// PyTorch's `weight` `[out, in]` (transposed here once) and, with `bias`, `bias`.
    pub fn load(vb: &Loader<B>, d_input: usize, d_output: usize, bias: bool) -> Result<Self> {
        Self::load_as(vb, d_input, d_output, bias, vb.dtype())
    }

    /// [`Linear::load`] in `dtype` instead of the loader's (T5's `wo` kept in F32).
    pub fn load_as(
        vb: &Loader<B>,
        d_input: usize,
        d_output: usize,
        bias: bool,
        dtype: DType,
    ) -> Result<Self> {
        let shape = [d_output, d_input];
        let linear = Self {
            weight: Param::from_tensor(vb.transposed("weight", shape, dtype)?),
            bias: match bias {
                true => Some(Param::from_tensor(vb.tensor_as(
                    "bias",
                    [d_output],
                    dtype,
                )?)),
                false => None,
            },
        };
        vb.record("weight", linear.weight.id, Layout::Linear, &shape);
        Ok(linear)
    }

    /// A linear from host data in PyTorch's layout (one part of a stacked weight), in the
    /// loader's float type.
    pub fn from_parts(vb: &Loader<B>, weight: TensorData, bias: TensorData) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.upload_data(weight, vb.dtype(), true)?),
            bias: Some(Param::from_tensor(vb.upload_data(
                bias,
                vb.dtype(),
                false,
            )?)),
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        B::linear_forward(x, self.weight.val(), self.bias.as_ref().map(Param::val))
    }
}

/// PyTorch `nn.LayerNorm` with affine weight and bias, statistics in f32.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(vb: &Loader<B>, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [dim])?),
            bias: Param::from_tensor(vb.tensor("bias", [dim])?),
            eps,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        layer_norm(x, self.eps) * self.weight.val().unsqueeze::<D>()
            + self.bias.val().unsqueeze::<D>()
    }
}

/// PyTorch `nn.GroupNorm` on `[batch, channels, height, width]`, statistics in f32.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    pub groups: usize,
    #[module(skip)]
    pub eps: f64,
}

impl<B: Backend> GroupNorm<B> {
    pub fn load(vb: &Loader<B>, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(vb.tensor("weight", [channels])?),
            bias: Param::from_tensor(vb.tensor("bias", [channels])?),
            groups,
            eps,
        })
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [batch, channels, height, width] = x.dims();
        let dtype = x.dtype();
        let grouped = x.cast(DType::F32).reshape([
            batch,
            self.groups,
            channels / self.groups * height * width,
        ]);
        let (var, mean) = grouped.clone().var_mean_bias(2);
        let normed = ((grouped - mean) / (var + self.eps).sqrt())
            .reshape([batch, channels, height, width])
            .cast(dtype);
        let affine = |p: &Param<Tensor<B, 1>>| p.val().reshape([1, channels, 1, 1]);
        normed * affine(&self.weight) + affine(&self.bias)
    }
}

/// Which image axes wrap around (seamless, tileable textures): every convolution pads
/// circularly along them instead of with zeros, as diffusers users get by setting each
/// `Conv2d`'s `padding_mode="circular"` (both axes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Seamless {
    /// Zero padding, a normal image.
    #[default]
    Off,
    /// The left and right edges meet.
    X,
    /// The top and bottom edges meet.
    Y,
    /// Both: a texture that tiles in every direction.
    XY,
}

impl Seamless {
    pub fn wraps_x(self) -> bool {
        matches!(self, Seamless::X | Seamless::XY)
    }

    pub fn wraps_y(self) -> bool {
        matches!(self, Seamless::Y | Seamless::XY)
    }
}

/// A model or block whose convolutions can wrap around ([`Seamless`]). Models are cheap to
/// clone (their weights are shared), so a request that wraps sets it on clones.
pub trait SetSeamless {
    fn set_seamless(&mut self, seamless: Seamless);
}

impl<T: SetSeamless> SetSeamless for Vec<T> {
    fn set_seamless(&mut self, seamless: Seamless) {
        self.iter_mut().for_each(|t| t.set_seamless(seamless));
    }
}

impl<T: SetSeamless> SetSeamless for Option<T> {
    fn set_seamless(&mut self, seamless: Seamless) {
        if let Some(t) = self {
            t.set_seamless(seamless);
        }
    }
}

/// Implements [`SetSeamless`] for a struct by passing the setting to the listed fields (those
/// that hold convolutions).
macro_rules! seamless_fields {
    ($t:ident { $($field:ident),* $(,)? }) => {
        impl<B: $crate::backend::Backend> $crate::nn::SetSeamless for $t<B> {
            fn set_seamless(&mut self, seamless: $crate::nn::Seamless) {
                $($crate::nn::SetSeamless::set_seamless(&mut self.$field, seamless);)*
            }
        }
    };
}
pub(crate) use seamless_fields;

/// `x` with its last `padding` rows (columns) before it and its first after it, along `dim`:
/// PyTorch's circular padding.
fn pad_circular<B: Backend>(x: Tensor<B, 4>, dim: usize, padding: usize) -> Tensor<B, 4> {
    let size = x.dims()[dim];
    let head = x.clone().narrow(dim, 0, padding);
    let tail = x.clone().narrow(dim, size - padding, padding);
    Tensor::cat(vec![tail, x, head], dim)
}

/// PyTorch `nn.Conv2d` (square kernel), weight `[out, in, k, k]`.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: Param<Tensor<B, 4>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub stride: usize,
    /// Zero padding on every side.
    #[module(skip)]
    pub padding: usize,
    /// Extra zero padding at the bottom and right only (the VAE encoder's downsamplers pad
    /// `(0, 1, 0, 1)` before a padding-free conv).
    #[module(skip)]
    pub extra_end_padding: usize,
    /// The axes whose `padding` wraps around instead of being zeros.
    #[module(skip)]
    pub seamless: Seamless,
}

impl<B: Backend> Conv2d<B> {
    /// `weight` `[out, in, k, k]` and `bias`; `channels` = `[in, out]`.
    pub fn load(
        vb: &Loader<B>,
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::load_with_bias(vb, channels, kernel, stride, padding, true)
    }

    /// [`Conv2d::load`] of a convolution without bias (PyTorch's `bias=False`: TAESD's
    /// resampling convolutions).
    pub fn load_without_bias(
        vb: &Loader<B>,
        channels: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Self::load_with_bias(vb, channels, kernel, stride, padding, false)
    }

    fn load_with_bias(
        vb: &Loader<B>,
        [c_in, c_out]: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let shape = [c_out, c_in, kernel, kernel];
        let conv = Self {
            weight: Param::from_tensor(vb.tensor("weight", shape)?),
            bias: match bias {
                true => Some(Param::from_tensor(vb.tensor("bias", [c_out])?)),
                false => None,
            },
            stride,
            padding,
            extra_end_padding: 0,
            seamless: Seamless::Off,
        };
        vb.record("weight", conv.weight.id, Layout::Conv, &shape);
        Ok(conv)
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let p = self.padding;
        let wrap_y = p > 0 && self.seamless.wraps_y();
        let wrap_x = p > 0 && self.seamless.wraps_x();
        let x = if wrap_y { pad_circular(x, 2, p) } else { x };
        let x = if wrap_x { pad_circular(x, 3, p) } else { x };
        // A wrapped axis is already padded; the other keeps its zeros.
        let zeros = [!wrap_y, !wrap_x].map(|zeros| if zeros { p } else { 0 });
        B::conv2d_forward(
            x,
            self.weight.val(),
            self.bias.as_ref().map(Param::val),
            self.stride,
            zeros,
            zeros.map(|z| z + self.extra_end_padding),
        )
    }
}

impl<B: Backend> SetSeamless for Conv2d<B> {
    fn set_seamless(&mut self, seamless: Seamless) {
        self.seamless = seamless;
    }
}

/// PyTorch's `F.interpolate(mode="nearest")` to `[height, width]`: source index
/// `floor(i · in/out)` computed in f32, as ATen does.
pub fn resize_nearest<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let [_, _, height, width] = x.dims();
    let device = x.device();
    let indices = |input: usize, output: usize| {
        let scale = input as f32 / output as f32;
        let idx: Vec<i64> = (0..output)
            .map(|i| ((i as f32 * scale).floor() as i64).min(input as i64 - 1))
            .collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [output]), &device)
    };
    x.select(2, indices(height, size[0]))
        .select(3, indices(width, size[1]))
}

/// diffusers' `TimestepEmbedding`: `linear_2(SiLU(linear_1(features)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    pub fn load(vb: &Loader<B>, channels: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&vb.pp("linear_1"), channels, dim, true)?,
            linear_2: Linear::load(&vb.pp("linear_2"), dim, dim, true)?,
        })
    }

    pub fn forward<const D: usize>(&self, features: Tensor<B, D>) -> Tensor<B, D> {
        self.linear_2.forward(silu(self.linear_1.forward(features)))
    }
}
