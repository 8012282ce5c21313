//! ELLA's Timestep-Aware Semantic Connector (TSC): a perceiver resampler whose layer norms
//! are modulated by the diffusion timestep (paper section 3.2; official `model.py`).
//!
//! ```text
//! t ─ sinusoids ─ time_embedding ─ temb ───────────────┬──────────────┐
//! latents + time_aware_linear(SiLU(temb)) ─ block × N ─┴─ (proj_out) ─ tokens [B, 64, 768]
//! T5 states ─ proj_in ─────────────────────┘  (each block: AdaLN, attention to
//!                                               [latents; text], AdaLN, squared-ReLU MLP)
//! ```

use std::path::Path;

use crate::backend::Backend;
use crate::nn::Linear;
use burn::module::{Module, Param};
use burn::tensor::activation::{relu, silu};
use burn::tensor::{DType, Tensor};

use super::config::ConnectorConfig;
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, MultiheadAttention, TimestepEmbedding, layer_norm, timestep_features};
use crate::weights::{Checkpoint, Loader, check_config, load_checked};

/// LayerNorm without affine (eps 1e-6) modulated by the timestep embedding:
/// `norm(x) · (1 + scale) + shift`, with `[shift | scale] = linear(SiLU(temb))`.
#[derive(Module, Debug)]
pub struct AdaLayerNorm<B: Backend> {
    pub linear: Linear<B>,
}

/// One perceiver block: the latents attend to themselves and the text, then an MLP.
#[derive(Module, Debug)]
pub struct PerceiverAttentionBlock<B: Backend> {
    pub attn: MultiheadAttention<B>,
    pub c_fc: Linear<B>,
    pub c_proj: Linear<B>,
    pub ln_1: AdaLayerNorm<B>,
    pub ln_2: AdaLayerNorm<B>,
    pub ln_ff: AdaLayerNorm<B>,
}

/// The optional `proj_out`: Linear then LayerNorm (with affine, eps 1e-5).
#[derive(Module, Debug)]
pub struct ProjOut<B: Backend> {
    pub linear: Linear<B>,
    pub norm: LayerNorm<B>,
}

/// `connector.*`: the perceiver resampler.
#[derive(Module, Debug)]
pub struct PerceiverResampler<B: Backend> {
    /// The learned latents `[num_latents, width]`.
    pub latents: Param<Tensor<B, 2>>,
    pub time_aware_linear: Linear<B>,
    pub proj_in: Linear<B>,
    pub perceiver_blocks: Vec<PerceiverAttentionBlock<B>>,
    pub proj_out: Option<ProjOut<B>>,
}

/// ELLA's connector: T5 hidden states and a timestep in, condition tokens for the U-Net's
/// cross-attention out. Run it at every denoising step with the U-Net's timestep.
#[derive(Module, Debug)]
pub struct Connector<B: Backend> {
    pub time_embedding: TimestepEmbedding<B>,
    pub connector: PerceiverResampler<B>,
    #[module(skip)]
    pub config: ConnectorConfig,
}

impl<B: Backend> AdaLayerNorm<B> {
    /// `linear` from the timestep embedding (`time_embed_dim`) to shift and scale.
    fn load(vb: &Loader<B>, time_embed_dim: usize, width: usize) -> Result<Self> {
        Ok(Self {
            linear: Linear::load(&vb.pp("linear"), time_embed_dim, 2 * width, true)?,
        })
    }

    fn forward(&self, x: Tensor<B, 3>, temb: Tensor<B, 3>) -> Tensor<B, 3> {
        let width = x.dims()[2];
        let emb = self.linear.forward(silu(temb));
        let shift = emb.clone().narrow(2, 0, width);
        let scale = emb.narrow(2, width, width);
        layer_norm(x, 1e-6) * (scale + 1.0) + shift
    }
}

impl<B: Backend> PerceiverAttentionBlock<B> {
    fn load(vb: &Loader<B>, config: &ConnectorConfig) -> Result<Self> {
        let (w, t) = (config.width, config.time_embed_dim);
        Ok(Self {
            attn: MultiheadAttention::load(&vb.pp("attn"), w, config.heads)?,
            c_fc: Linear::load(&vb.pp("mlp.c_fc"), w, 4 * w, true)?,
            c_proj: Linear::load(&vb.pp("mlp.c_proj"), 4 * w, w, true)?,
            ln_1: AdaLayerNorm::load(&vb.pp("ln_1"), t, w)?,
            ln_2: AdaLayerNorm::load(&vb.pp("ln_2"), t, w)?,
            ln_ff: AdaLayerNorm::load(&vb.pp("ln_ff"), t, w)?,
        })
    }

    fn forward(
        &self,
        text: Tensor<B, 3>,
        latents: Tensor<B, 3>,
        temb: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let normed = self.ln_1.forward(latents.clone(), temb.clone());
        let kv = Tensor::cat(
            vec![normed.clone(), self.ln_2.forward(text, temb.clone())],
            1,
        );
        let latents = latents + self.attn.forward(normed, kv);
        let hidden = relu(self.c_fc.forward(self.ln_ff.forward(latents.clone(), temb)));
        latents + self.c_proj.forward(hidden.clone() * hidden)
    }
}

impl<B: Backend> PerceiverResampler<B> {
    fn load(vb: &Loader<B>, config: &ConnectorConfig) -> Result<Self> {
        let (w, t) = (config.width, config.time_embed_dim);
        Ok(Self {
            latents: Param::from_tensor(vb.tensor("latents", [config.num_latents, w])?),
            time_aware_linear: Linear::load(&vb.pp("time_aware_linear"), t, w, true)?,
            proj_in: Linear::load(&vb.pp("proj_in"), config.input_dim, w, true)?,
            perceiver_blocks: (0..config.layers)
                .map(|i| PerceiverAttentionBlock::load(&vb.pp("perceiver_blocks").pp(i), config))
                .collect::<Result<_>>()?,
            proj_out: match config.output_dim {
                Some(out) => Some(ProjOut {
                    linear: Linear::load(&vb.pp("proj_out.0"), w, out, true)?,
                    norm: LayerNorm::load(&vb.pp("proj_out.1"), out, 1e-5)?,
                }),
                None => None,
            },
        })
    }
}

impl<B: Backend> Connector<B> {
    /// Loads a connector file (e.g. `ella-sd1.5-tsc-t5xl.safetensors`, F16) into `dtype`.
    pub fn load(
        path: impl AsRef<Path>,
        config: &ConnectorConfig,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        let checkpoint = Checkpoint::open(path)?;
        Self::from_checkpoint(config, &checkpoint, device, dtype)
    }

    /// Builds the connector after checking every tensor against `config`; the file must
    /// hold exactly the config's tensors (as the official loader's strict load).
    pub fn from_checkpoint(
        config: &ConnectorConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        check_config(config.validate(), checkpoint.path())?;
        let build = |vb: &Loader<B>| Self::from_loader(vb, config);
        Ok(load_checked(checkpoint, device, dtype, |_| false, build)?.0)
    }

    /// Builds the connector of a validated `config` from `vb` (the official names).
    pub fn from_loader(vb: &Loader<B>, config: &ConnectorConfig) -> Result<Self> {
        Ok(Self {
            time_embedding: TimestepEmbedding::load(
                &vb.pp("time_embedding"),
                config.time_channel,
                config.time_embed_dim,
            )?,
            connector: PerceiverResampler::load(&vb.pp("connector"), config)?,
            config: config.clone(),
        })
    }

    /// Condition tokens `[batch, num_latents, output width]` for text states
    /// `[batch, seq, input_dim]` at the given U-Net timestep(s): one for the whole batch or
    /// one per sample. Timesteps may be fractional (sigma-based samplers).
    ///
    /// All `seq` positions are attended, padding included (as the reference does in fixed
    /// mode); in flexible mode pass each prompt unpadded.
    pub fn forward(&self, text_states: Tensor<B, 3>, timesteps: &[f32]) -> Result<Tensor<B, 3>> {
        let [batch, seq, input_dim] = text_states.dims();
        if batch == 0 || seq == 0 {
            return Err(Error::InvalidInput(format!(
                "text states of shape [{batch}, {seq}, {input_dim}] are empty"
            )));
        }
        if input_dim != self.config.input_dim {
            return Err(Error::InvalidInput(format!(
                "text states are {input_dim} wide but the connector expects {} (input_dim)",
                self.config.input_dim
            )));
        }
        if timesteps.len() != 1 && timesteps.len() != batch {
            return Err(Error::InvalidInput(format!(
                "{} timesteps for a batch of {batch}: pass one, or one per sample",
                timesteps.len()
            )));
        }
        if let Some(t) = timesteps.iter().find(|t| !t.is_finite()) {
            return Err(Error::InvalidInput(format!("timestep {t} is not finite")));
        }
        let device = text_states.device();
        // The connector computes in its own weights' dtype, whatever T5 ran in (the
        // official code runs T5 in f16 and casts its states to the pipeline's dtype).
        let dtype = self.connector.latents.val().dtype();
        let text_states = text_states.cast(dtype);
        let channels = self.config.time_channel;
        let features = Tensor::<B, 2>::from_data(
            timestep_features(timesteps, channels, true, 0.0),
            (&device, DType::F32),
        )
        .cast(dtype)
        .reshape([timesteps.len(), 1, channels])
        .expand([batch, 1, channels]);
        let temb = self.time_embedding.forward(features);

        let resampler = &self.connector;
        let [num_latents, width] = resampler.latents.dims();
        let mut latents =
            resampler
                .latents
                .val()
                .unsqueeze::<3>()
                .expand([batch, num_latents, width])
                + resampler.time_aware_linear.forward(silu(temb.clone()));
        let text = resampler.proj_in.forward(text_states);
        for block in &resampler.perceiver_blocks {
            latents = block.forward(text.clone(), latents, temb.clone());
        }
        Ok(match &resampler.proj_out {
            Some(proj) => proj.norm.forward(proj.linear.forward(latents)),
            None => latents,
        })
    }
}
