//! `UNetConfig`: diffusers' `UNet2DConditionModel` `config.json` (SD1.5 family).

use std::path::Path;

use serde::Deserialize;

use crate::error::Result;
use crate::limits::{MAX_BLOCK_LAYERS, MAX_WIDTH};
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

/// The fields of a diffusers `UNet2DConditionModel` config that SD1.5-style U-Nets use.
/// Field names and defaults are diffusers'.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f32,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "mid_block")]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    pub layers_per_block: PerBlock,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    #[serde(default = "cross")]
    pub cross_attention_dim: PerBlock,
    #[serde(default = "one_per")]
    pub transformer_layers_per_block: PerBlock,
    /// For SD1.5 this is the number of heads (a diffusers naming quirk), unless
    /// `num_attention_heads` is given.
    #[serde(default = "heads")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "no_flag")]
    pub only_cross_attention: FlagPerBlock,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default = "one_f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default)]
    pub sample_size: Option<usize>,
}

fn four() -> usize {
    4
}
fn two() -> PerBlock {
    PerBlock::One(2)
}
fn one() -> usize {
    1
}
fn one_per() -> PerBlock {
    PerBlock::One(1)
}
fn three() -> usize {
    3
}
fn one_f() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn no_flag() -> FlagPerBlock {
    FlagPerBlock::One(false)
}
fn mid_block() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn silu() -> String {
    "silu".into()
}
fn groups() -> usize {
    32
}
fn eps() -> f64 {
    1e-5
}
fn cross() -> PerBlock {
    PerBlock::One(1280)
}
fn heads() -> PerBlock {
    PerBlock::One(8)
}
fn default_str() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}

/// The kind of a down or up block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// `CrossAttnDownBlock2D` / `CrossAttnUpBlock2D`: resnets each followed by a transformer.
    CrossAttention,
    /// `DownBlock2D` / `UpBlock2D`: resnets only.
    Plain,
}

impl UNetConfig {
    /// SD1.5's U-Net (`runwayml/stable-diffusion-v1-5/unet/config.json`).
    pub fn sd15() -> Self {
        let json = r#"{
            "block_out_channels": [320, 640, 1280, 1280],
            "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "attention_head_dim": 8, "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 64
        }"#;
        serde_json::from_str(json).expect("valid built-in config")
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
            self.down_block(i)?;
            self.up_block(i)?;
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
        if self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn") {
            return Err(format!(
                "`mid_block_type` {:?} is not supported",
                self.mid_block_type
            ));
        }
        let unsupported = [
            ("act_fn", self.act_fn != "silu"),
            (
                "resnet_time_scale_shift",
                self.resnet_time_scale_shift != "default",
            ),
            (
                "time_embedding_type",
                self.time_embedding_type != "positional",
            ),
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

    pub fn down_block(&self, i: usize) -> Result<BlockKind, String> {
        match self.down_block_types[i].as_str() {
            "CrossAttnDownBlock2D" => Ok(BlockKind::CrossAttention),
            "DownBlock2D" => Ok(BlockKind::Plain),
            other => Err(format!("down block type `{other}` is not supported")),
        }
    }

    pub fn up_block(&self, i: usize) -> Result<BlockKind, String> {
        match self.up_block_types[i].as_str() {
            "CrossAttnUpBlock2D" => Ok(BlockKind::CrossAttention),
            "UpBlock2D" => Ok(BlockKind::Plain),
            other => Err(format!("up block type `{other}` is not supported")),
        }
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
