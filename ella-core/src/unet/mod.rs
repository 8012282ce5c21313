//! The frozen Stable Diffusion 1.5 U-Net (diffusers' `UNet2DConditionModel`).

pub(crate) mod blocks;
mod config;
pub(crate) mod ldm_names;
mod model;

pub use config::{
    DownBlockType, FlagPerBlock, MidBlockType, PerBlock, ResnetTimeScaleShift, TimeEmbeddingType,
    UNetConfig, UpBlockType,
};
pub use model::{ControlResiduals, UNet2DConditionModel};
pub(crate) use model::{check_inputs, embed_time, load_down_path, run_down_path};
