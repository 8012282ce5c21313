//! The SD1.5 VAE (diffusers' `AutoencoderKL`): the decoder turns latents into an image, the
//! encoder (for img2img) an image into latents. And TAESD (diffusers' `AutoencoderTiny`), a
//! small distilled VAE for the same latents.

mod config;
mod model;
mod tiny;
mod tiny_config;

pub use config::{DownBlockType, UpBlockType, VaeConfig};
pub use model::{
    AutoencoderKL, Decoder, DownEncoderBlock2D, Encoder, UNetMidBlock2D, UpDecoderBlock2D,
    VaeAttention, VaeDecode,
};
pub use tiny::{
    AutoencoderTiny, DecoderTiny, DecoderTinyLevel, EncoderTiny, EncoderTinyLevel, TinyBlock,
};
pub use tiny_config::{TinyConfig, TinyUpsample};
