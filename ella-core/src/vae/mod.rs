//! The SD1.5 VAE (diffusers' `AutoencoderKL`): the decoder turns latents into an image, the
//! encoder (for img2img) an image into latents.

mod config;
mod model;

pub use config::{DownBlockType, UpBlockType, VaeConfig};
pub use model::{
    AutoencoderKL, Decoder, DownEncoderBlock2D, Encoder, UNetMidBlock2D, UpDecoderBlock2D,
    VaeAttention, VaeDecode,
};
