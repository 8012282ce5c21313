//! `UNetConfig`: diffusers' `UNet2DConditionModel` `config.json` (SD1.5 family).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_BLOCK_LAYERS, MAX_WIDTH};
use crate::nn::Activation;
use crate::weights::{check_levels, check_positive, check_sizes, read_config};

/// A config value given once for all blocks or once per block, as diffusers allows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value of down block `i` (of `n`).
    pub fn get(&self, i: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(values) => values[i],
        }
    }

    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Each(values) => values.len() == n,
        }
    }
}

/// `bool` given once or per block (`only_cross_attention`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum FlagPerBlock {
    One(bool),
    Each(Vec<bool>),
}

/// A down block's type (`down_block_types`): the two SD1.5's U-Net is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DownBlockType {
    /// Resnets each followed by a transformer.
    #[serde(rename = "CrossAttnDownBlock2D")]
    CrossAttention,
    /// Resnets only.
    #[serde(rename = "DownBlock2D")]
    Plain,
}

/// An up block's type (`up_block_types`), as [`DownBlockType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpBlockType {
    #[serde(rename = "CrossAttnUpBlock2D")]
    CrossAttention,
    #[serde(rename = "UpBlock2D")]
    Plain,
}

/// `mid_block_type`: SD1.5's, the only one built (diffusers' `null`, no mid block, is not).
/// `Option` so that a `null` is refused by [`UNetConfig::validate`] as unsupported, not by
/// serde as bad JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum MidBlockType {
    #[serde(rename = "UNetMidBlock2DCrossAttn")]
    CrossAttention,
}

/// `resnet_time_scale_shift`: the timestep embedding is added to the resnets' features
/// (`default`), not used as a scale and shift (`scale_shift`, not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ResnetTimeScaleShift {
    #[serde(rename = "default")]
    Default,
}

/// `time_embedding_type`: sinusoidal features (`positional`); Fourier features are not
/// supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TimeEmbeddingType {
    #[serde(rename = "positional")]
    Positional,
}

/// The fields of a diffusers `UNet2DConditionModel` config that SD1.5-style U-Nets use.
/// Field names and defaults (`Default`) are diffusers'; a value outside an enum's variants
/// is a config this module does not build.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub center_input_sample: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    pub down_block_types: Vec<DownBlockType>,
    pub up_block_types: Vec<UpBlockType>,
    pub mid_block_type: Option<MidBlockType>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: PerBlock,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub act_fn: Activation,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: PerBlock,
    pub transformer_layers_per_block: PerBlock,
    /// For SD1.5 this is the number of heads (a diffusers naming quirk), unless
    /// `num_attention_heads` is given.
    pub attention_head_dim: PerBlock,
    pub num_attention_heads: Option<PerBlock>,
    pub use_linear_projection: bool,
    pub only_cross_attention: FlagPerBlock,
    pub dual_cross_attention: bool,
    pub upcast_attention: bool,
    pub resnet_time_scale_shift: ResnetTimeScaleShift,
    pub time_embedding_type: TimeEmbeddingType,
    pub time_embedding_dim: Option<usize>,
    pub conv_in_kernel: usize,
    pub conv_out_kernel: usize,
    pub class_embed_type: Option<String>,
    pub num_class_embeds: Option<usize>,
    pub addition_embed_type: Option<String>,
    pub time_cond_proj_dim: Option<usize>,
    pub encoder_hid_dim: Option<usize>,
    pub timestep_post_act: Option<String>,
    pub time_embedding_act_fn: Option<String>,
    pub resnet_out_scale_factor: f64,
    pub sample_size: Option<usize>,
}

impl Default for UNetConfig {
    /// diffusers' defaults: SD1.5's U-Net but for a 1280-wide cross-attention.
    fn default() -> Self {
        use DownBlockType as Down;
        use UpBlockType as Up;
        Self {
            in_channels: 4,
            out_channels: 4,
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            down_block_types: vec![
                Down::CrossAttention,
                Down::CrossAttention,
                Down::CrossAttention,
                Down::Plain,
            ],
            up_block_types: vec![
                Up::Plain,
                Up::CrossAttention,
                Up::CrossAttention,
                Up::CrossAttention,
            ],
            mid_block_type: Some(MidBlockType::CrossAttention),
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: PerBlock::One(2),
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            act_fn: Activation::Silu,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: PerBlock::One(1280),
            transformer_layers_per_block: PerBlock::One(1),
            attention_head_dim: PerBlock::One(8),
            num_attention_heads: None,
            use_linear_projection: false,
            only_cross_attention: FlagPerBlock::One(false),
            dual_cross_attention: false,
            upcast_attention: false,
            resnet_time_scale_shift: ResnetTimeScaleShift::Default,
            time_embedding_type: TimeEmbeddingType::Positional,
            time_embedding_dim: None,
            conv_in_kernel: 3,
            conv_out_kernel: 3,
            class_embed_type: None,
            num_class_embeds: None,
            addition_embed_type: None,
            time_cond_proj_dim: None,
            encoder_hid_dim: None,
            timestep_post_act: None,
            time_embedding_act_fn: None,
            resnet_out_scale_factor: 1.0,
            sample_size: None,
        }
    }
}

impl UNetConfig {
    /// SD1.5's U-Net (`runwayml/stable-diffusion-v1-5/unet/config.json`).
    pub fn sd15() -> Self {
        Self {
            cross_attention_dim: PerBlock::One(768),
            sample_size: Some(64),
            ..Self::default()
        }
    }

    /// Reads and validates `unet/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        read_config(path, Self::validate)
    }

    /// Checks that the config describes a U-Net this module builds (SD1.5-style), and says
    /// which setting is not supported otherwise.
    pub fn validate(&self) -> Result<(), String> {
        let n = check_levels(
            &self.block_out_channels,
            &self.down_block_types,
            &self.up_block_types,
        )?;
        for (name, per_block) in [
            ("layers_per_block", &self.layers_per_block),
            ("cross_attention_dim", &self.cross_attention_dim),
            (
                "transformer_layers_per_block",
                &self.transformer_layers_per_block,
            ),
            ("attention_head_dim", &self.attention_head_dim),
            (
                "num_attention_heads",
                self.num_attention_heads
                    .as_ref()
                    .unwrap_or(&self.attention_head_dim),
            ),
        ] {
            if !per_block.len_ok(n) {
                return Err(format!("`{name}` must have one value per block"));
            }
        }
        check_sizes(&[
            ("in_channels", self.in_channels, MAX_WIDTH),
            ("out_channels", self.out_channels, MAX_WIDTH),
            ("norm_num_groups", self.norm_num_groups, MAX_WIDTH),
            ("downsample_padding", self.downsample_padding + 1, 8),
            ("time_embedding_dim", self.time_embed_dim(), MAX_WIDTH),
            ("conv_in_kernel", self.conv_in_kernel, 15),
            ("conv_out_kernel", self.conv_out_kernel, 15),
        ])?;
        check_positive("norm_eps", self.norm_eps)?;
        let finite = [
            ("freq_shift", f64::from(self.freq_shift)),
            ("mid_block_scale_factor", self.mid_block_scale_factor),
            ("resnet_out_scale_factor", self.resnet_out_scale_factor),
        ];
        if let Some((name, _)) = finite.iter().find(|(_, v)| !v.is_finite()) {
            return Err(format!("`{name}` must be a finite number"));
        }
        if self.resnet_out_scale_factor == 0.0 {
            return Err("`resnet_out_scale_factor` must not be 0".into());
        }
        for i in 0..n {
            let channels = self.block_out_channels[i];
            check_sizes(&[
                ("block_out_channels", channels, MAX_WIDTH),
                (
                    "layers_per_block",
                    self.layers_per_block.get(i),
                    MAX_BLOCK_LAYERS,
                ),
                (
                    "transformer_layers_per_block",
                    self.transformer_layers_per_block.get(i),
                    MAX_BLOCK_LAYERS,
                ),
                (
                    "cross_attention_dim",
                    self.cross_attention_dim.get(i),
                    MAX_WIDTH,
                ),
                ("attention heads", self.heads(i), channels),
            ])?;
            if !channels.is_multiple_of(self.norm_num_groups) {
                return Err(format!(
                    "block width {channels} is not divisible by `norm_num_groups` {}",
                    self.norm_num_groups
                ));
            }
            if !channels.is_multiple_of(self.heads(i)) {
                return Err(format!(
                    "block width {channels} is not divisible by its {} heads",
                    self.heads(i)
                ));
            }
        }
        let unsupported = [
            // diffusers' other activations would need every resnet and embedding to take one.
            ("act_fn", self.act_fn != Activation::Silu),
            ("mid_block_type", self.mid_block_type.is_none()),
            (
                "class_embed_type",
                self.class_embed_type.is_some() || self.num_class_embeds.is_some(),
            ),
            ("addition_embed_type", self.addition_embed_type.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("dual_cross_attention", self.dual_cross_attention),
            (
                "only_cross_attention",
                self.only_cross_attention != FlagPerBlock::One(false),
            ),
            ("conv_in_kernel", self.conv_in_kernel.is_multiple_of(2)),
            ("conv_out_kernel", self.conv_out_kernel.is_multiple_of(2)),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, bad)| *bad) {
            return Err(format!(
                "`{name}` has a value this U-Net does not support (SD1.5-style U-Nets only)"
            ));
        }
        Ok(())
    }

    /// Attention heads of down block `i` (diffusers: `num_attention_heads or attention_head_dim`).
    pub fn heads(&self, i: usize) -> usize {
        self.num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .get(i)
    }

    /// Width of the timestep embedding (4 × the first block's width).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or_else(|| {
            self.block_out_channels
                .first()
                .map_or(0, |c| c.saturating_mul(4))
        })
    }

    /// How much the U-Net downsamples: 2^(number of downsampling blocks).
    pub fn downsample_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
