//! diffusers' `Attention` (`to_q`, `to_k`, `to_v`, `to_out.0`), shared by the U-Net's
//! transformers and the VAE's mid block (diffusers' `attention_processor.py`).

use burn::module::Module;
use burn::tensor::Tensor;

use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{Linear, multi_head_attention};
use crate::weights::Loader;

/// diffusers' `Attention` as the U-Net and the VAE use it: `to_q`, `to_k`, `to_v` (no bias) and
/// `to_out.0`; self-attention when there is no context.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Linear<B>,
    #[module(skip)]
    pub heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `dims` = `[query width, context width]`; `bias` for the q/k/v projections.
    pub fn load(vb: &Loader<B>, dims: [usize; 2], heads: usize, bias: bool) -> Result<Self> {
        let [query, context] = dims;
        Ok(Self {
            to_q: Linear::load(&vb.pp("to_q"), query, query, bias)?,
            to_k: Linear::load(&vb.pp("to_k"), context, query, bias)?,
            to_v: Linear::load(&vb.pp("to_v"), context, query, bias)?,
            to_out: Linear::load(&vb.pp("to_out.0"), query, query, true)?,
            heads,
        })
    }

    pub fn forward(&self, x: Tensor<B, 3>, context: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let context = context.unwrap_or_else(|| x.clone());
        let out = multi_head_attention(
            self.to_q.forward(x),
            self.to_k.forward(context.clone()),
            self.to_v.forward(context),
            self.heads,
            None,
            None,
            None,
        );
        self.to_out.forward(out)
    }
}
