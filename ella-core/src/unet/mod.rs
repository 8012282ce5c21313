//! The frozen Stable Diffusion 1.5 U-Net (diffusers' `UNet2DConditionModel`).

pub mod blocks;
mod config;
mod model;

pub use config::{BlockKind, FlagPerBlock, PerBlock, UNetConfig};
pub use model::UNet2DConditionModel;
