//! `ClipTextModel`: token and position embeddings, pre-norm transformer layers with causal
//! self-attention and an MLP (QuickGELU for SD1.5), a final LayerNorm; `last_hidden_state`
//! out.

use std::path::Path;

use crate::backend::Backend;
use crate::nn::{Activation, Linear};
use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use super::config::ClipTextConfig;
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, multi_head_attention};
use crate::weights::{Checkpoint, Loader, WeightIndex, check_config, load_checked};

/// One encoder layer: `x + attn(ln1(x))`, then `x + fc2(act(fc1(ln2(x))))`.
#[derive(Module, Debug)]
pub struct ClipEncoderLayer<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub layer_norm2: LayerNorm<B>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    #[module(skip)]
    pub heads: usize,
    /// The MLP's activation (`hidden_act`).
    #[module(skip)]
    pub activation: Activation,
}

impl<B: Backend> ClipEncoderLayer<B> {
    fn load(vb: &Loader<B>, config: &ClipTextConfig) -> Result<Self> {
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        let attention = |proj: &str| Linear::load(&vb.pp("self_attn").pp(proj), d, d, true);
        Ok(Self {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), d, eps)?,
            q_proj: attention("q_proj")?,
            k_proj: attention("k_proj")?,
            v_proj: attention("v_proj")?,
            out_proj: attention("out_proj")?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), d, eps)?,
            fc1: Linear::load(&vb.pp("mlp.fc1"), d, config.intermediate_size, true)?,
            fc2: Linear::load(&vb.pp("mlp.fc2"), config.intermediate_size, d, true)?,
            heads: config.num_attention_heads,
            activation: config.hidden_act,
        })
    }

    fn forward(&self, x: Tensor<B, 3>, causal: Tensor<B, 4, Bool>) -> Tensor<B, 3> {
        let h = self.layer_norm1.forward(x.clone());
        let attended = multi_head_attention(
            self.q_proj.forward(h.clone()),
            self.k_proj.forward(h.clone()),
            self.v_proj.forward(h),
            self.heads,
            None,
            Some(causal),
            None,
        );
        let x = x + self.out_proj.forward(attended);
        let h = self.fc1.forward(self.layer_norm2.forward(x.clone()));
        x + self.fc2.forward(self.activation.apply(h))
    }
}

/// transformers' `CLIPTextModel` (no projection head).
#[derive(Module, Debug)]
pub struct ClipTextModel<B: Backend> {
    /// `text_model.embeddings.token_embedding.weight` `[vocab, hidden]`.
    pub token_embedding: Param<Tensor<B, 2>>,
    /// `text_model.embeddings.position_embedding.weight` `[positions, hidden]`.
    pub position_embedding: Param<Tensor<B, 2>>,
    pub layers: Vec<ClipEncoderLayer<B>>,
    pub final_layer_norm: LayerNorm<B>,
    #[module(skip)]
    pub config: ClipTextConfig,
    /// Where each linear weight came from (for LoRA).
    #[module(skip)]
    pub weights: WeightIndex,
}

impl<B: Backend> ClipTextModel<B> {
    /// Loads a `text_encoder/` folder (`config.json`, `model.safetensors`) in `dtype`.
    pub fn load(folder: impl AsRef<Path>, device: &B::Device, dtype: DType) -> Result<Self> {
        let folder = folder.as_ref();
        let config = ClipTextConfig::from_file(&folder.join("config.json"))?;
        Self::from_checkpoint(config, &Checkpoint::open(folder)?, device, dtype)
    }

    /// Builds the model after checking every tensor against `config`. Names with or without
    /// the `text_model.` prefix are read; the `position_ids` buffer older files carry is
    /// ignored.
    pub fn from_checkpoint(
        config: ClipTextConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self> {
        check_config(config.validate(), checkpoint.path())?;
        let prefix = match checkpoint.shape("embeddings.token_embedding.weight") {
            Some(_) => "",
            None => "text_model",
        };
        let position_ids = match prefix {
            "" => "embeddings.position_ids".to_string(),
            prefix => format!("{prefix}.embeddings.position_ids"),
        };
        let ignorable = |name: &str| name == position_ids;
        let build = |vb: &Loader<B>| Self::from_loader(&vb.pp(prefix), &config);
        let (mut model, weights) = load_checked(checkpoint, device, dtype, ignorable, build)?;
        model.weights = weights;
        Ok(model)
    }

    /// Builds the model of a validated `config` from `vb` (transformers' names below
    /// `text_model.`).
    pub fn from_loader(vb: &Loader<B>, config: &ClipTextConfig) -> Result<Self> {
        let d = config.hidden_size;
        let embeddings = vb.pp("embeddings");
        Ok(Self {
            token_embedding: Param::from_tensor(
                embeddings.tensor("token_embedding.weight", [config.vocab_size, d])?,
            ),
            position_embedding: Param::from_tensor(embeddings.tensor(
                "position_embedding.weight",
                [config.max_position_embeddings, d],
            )?),
            layers: (0..config.num_hidden_layers)
                .map(|i| ClipEncoderLayer::load(&vb.pp("encoder.layers").pp(i), config))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::load(
                &vb.pp("final_layer_norm"),
                d,
                config.layer_norm_eps,
            )?,
            config: config.clone(),
            weights: WeightIndex::default(),
        })
    }

    /// Appends `rows` `[n, hidden]` to the token-embedding table (a textual inversion's
    /// vectors, for the ids after the vocabulary's).
    pub fn add_token_embeddings(&mut self, rows: Tensor<B, 2>) {
        let n = rows.dims()[0];
        let table = self.token_embedding.val();
        let rows = rows.cast(table.dtype());
        self.token_embedding = Param::from_tensor(Tensor::cat(vec![table, rows], 0));
        self.config.vocab_size += n;
    }

    /// `last_hidden_state` `[batch, seq, hidden]` of token ids `[batch, seq]` (seq ≤ the
    /// position embeddings, 77): what SD's U-Net cross-attends to.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>> {
        self.forward_skip(input_ids, 0)
    }

    /// [`ClipTextModel::forward`] with the last `skip` layers skipped: the hidden state of an
    /// earlier layer through the final layer norm (diffusers' `clip_skip`; A1111's "Clip
    /// skip: 2" is `skip` 1).
    pub fn forward_skip(&self, input_ids: Tensor<B, 2, Int>, skip: usize) -> Result<Tensor<B, 3>> {
        let [batch, seq] = input_ids.dims();
        let positions = self.config.max_position_embeddings;
        if seq == 0 || seq > positions {
            return Err(Error::InvalidInput(format!(
                "{seq} CLIP tokens; the text encoder takes 1 to {positions}"
            )));
        }
        // diffusers allows skipping every layer: the embeddings through the final layer norm.
        let layers = self.layers.len();
        if skip > layers {
            return Err(Error::InvalidInput(format!(
                "CLIP skip {skip} is more than the text encoder's {layers} layers"
            )));
        }
        let device = input_ids.device();
        let h = embedding(self.token_embedding.val(), input_ids)
            + self
                .position_embedding
                .val()
                .narrow(0, 0, seq)
                .unsqueeze::<3>();
        // Causal: token q sees keys 0..=q (true = masked).
        let mask: Vec<bool> = (0..seq * seq).map(|i| i % seq > i / seq).collect();
        let causal = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [seq, seq]), &device)
            .reshape([1, 1, seq, seq])
            .expand([batch, self.config.num_attention_heads, seq, seq]);
        let h = self.layers[..layers - skip]
            .iter()
            .fold(h, |h, layer| layer.forward(h, causal.clone()));
        Ok(self.final_layer_norm.forward(h))
    }
}
