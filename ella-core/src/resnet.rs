//! diffusers' `ResnetBlock2D`, shared by the U-Net, the ControlNet and the VAE (diffusers'
//! `resnet.py`).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use crate::backend::Backend;
use crate::error::Result;
use crate::nn::{Conv2d, GroupNorm, Linear};
use crate::weights::Loader;

/// `ResnetBlock2D`: two GroupNorm-SiLU-conv layers, the timestep embedding added in
/// between (when there is one: the VAE has none), and a residual (1×1 conv when the width
/// changes), divided by `output_scale_factor`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: GroupNorm<B>,
    pub conv1: Conv2d<B>,
    pub time_emb_proj: Option<Linear<B>>,
    pub norm2: GroupNorm<B>,
    pub conv2: Conv2d<B>,
    pub conv_shortcut: Option<Conv2d<B>>,
    #[module(skip)]
    pub output_scale_factor: f64,
}

/// Sizes shared by the resnets of a model.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    /// Width of the timestep embedding, `None` for the VAE.
    pub temb_channels: Option<usize>,
    pub output_scale_factor: f64,
}

crate::nn::seamless_fields!(ResnetBlock2D {
    conv1,
    conv2,
    conv_shortcut
});

impl<B: Backend> ResnetBlock2D<B> {
    /// `channels` = `[in, out]`.
    pub fn load(vb: &Loader<B>, channels: [usize; 2], s: ResnetSettings) -> Result<Self> {
        let [c_in, c_out] = channels;
        Ok(Self {
            norm1: GroupNorm::load(&vb.pp("norm1"), s.groups, c_in, s.eps)?,
            conv1: Conv2d::load(&vb.pp("conv1"), [c_in, c_out], 3, 1, 1)?,
            time_emb_proj: match s.temb_channels {
                Some(t) => Some(Linear::load(&vb.pp("time_emb_proj"), t, c_out, true)?),
                None => None,
            },
            norm2: GroupNorm::load(&vb.pp("norm2"), s.groups, c_out, s.eps)?,
            conv2: Conv2d::load(&vb.pp("conv2"), [c_out, c_out], 3, 1, 1)?,
            conv_shortcut: match c_in != c_out {
                true => Some(Conv2d::load(
                    &vb.pp("conv_shortcut"),
                    [c_in, c_out],
                    1,
                    1,
                    0,
                )?),
                false => None,
            },
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `temb` is the SiLU-activated timestep embedding `[batch, temb_channels]`.
    pub fn forward(&self, x: Tensor<B, 4>, temb: Option<&Tensor<B, 2>>) -> Tensor<B, 4> {
        let h = self.conv1.forward(silu(self.norm1.forward(x.clone())));
        let h = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => h + proj.forward(temb.clone()).unsqueeze_dims::<4>(&[2, 3]),
            _ => h,
        };
        let h = self.conv2.forward(silu(self.norm2.forward(h)));
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 {
            out
        } else {
            out / self.output_scale_factor
        }
    }
}
