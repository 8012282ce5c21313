//! The SD1.5-style U-Net and the VAE against diffusers 0.42.1 (`scripts/sd_fixtures.py`).
//! Tolerance: max abs error ≤ 1e-3 in f32.

use crate::common::{Reference, assert_close, fixture};
use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::{Cancel, Seamless, SetSeamless, UNet2DConditionModel, VaeDecode};

const TOLERANCE: f32 = 1e-3;

fn unet<B: Backend>() -> UNet2DConditionModel<B> {
    UNet2DConditionModel::load(fixture("sd/unet"), &Default::default(), DType::F32).unwrap()
}

/// A CFG-style batch of two with one timestep each and 8 condition tokens.
fn unet_forward<B: Backend>() {
    let reference = Reference::open("sd.safetensors");
    let device = Default::default();
    let sample = Tensor::<B, 4>::from_data(reference.data("unet.sample"), &device);
    let cond = Tensor::<B, 3>::from_data(reference.data("unet.cond"), &device);
    let out = unet::<B>().forward(sample, &[999.0, 250.0], cond).unwrap();
    assert_close(out, &reference.data("unet.out"), TOLERANCE, "unet");
}

/// 13 condition tokens, a fractional timestep, and a 9×7 latent that the U-Net's 2×
/// downsampling does not divide (the up path resizes to the skip connections).
fn unet_odd_sizes<B: Backend>() {
    let reference = Reference::open("sd.safetensors");
    let device = Default::default();
    let sample = Tensor::<B, 4>::from_data(reference.data("unet_odd.sample"), &device);
    let cond = Tensor::<B, 3>::from_data(reference.data("unet_odd.cond"), &device);
    let out = unet::<B>().forward(sample, &[741.5], cond).unwrap();
    assert_close(out, &reference.data("unet_odd.out"), TOLERANCE, "unet odd");
}

fn vae<B: Backend>() -> ella_core::AutoencoderKL<B> {
    ella_core::AutoencoderKL::load(fixture("sd/vae"), &Default::default(), DType::F32).unwrap()
}

/// Decoding (post_quant_conv, decoder) and encoding (encoder, quant_conv, latent mean).
fn vae_decode_and_encode<B: Backend>() {
    let reference = Reference::open("sd.safetensors");
    let device = Default::default();
    let vae = vae::<B>();
    let latents = Tensor::<B, 4>::from_data(reference.data("vae.latents"), &device);
    assert_close(
        vae.decode(latents, Cancel::NEVER).unwrap(),
        &reference.data("vae.decoded"),
        TOLERANCE,
        "vae decode",
    );
    let image = Tensor::<B, 4>::from_data(reference.data("vae.image"), &device);
    assert_close(
        vae.encode_mean(image, Cancel::NEVER).unwrap(),
        &reference.data("vae.encoded_mean"),
        TOLERANCE,
        "vae encode",
    );
}

/// diffusers' tiled decode (`enable_tiling`) of latents larger than a tile, the whole
/// decode of the same latents, and sliced decoding (one image at a time, same pixels).
fn vae_tiled_and_sliced_decode<B: Backend>() {
    let reference = Reference::open("vae_tiling.safetensors");
    let device = Default::default();
    let vae = vae::<B>();
    let latents = Tensor::<B, 4>::from_data(reference.data("latents"), &device);
    let tiled = vae
        .decode_with(latents.clone(), VaeDecode::Tiled, Cancel::NEVER)
        .unwrap();
    assert_close(tiled, &reference.data("tiled"), TOLERANCE, "tiled decode");
    let sliced = vae
        .decode_with(latents.clone(), VaeDecode::Sliced, Cancel::NEVER)
        .unwrap();
    assert_close(sliced, &reference.data("whole"), TOLERANCE, "sliced decode");
    let whole = vae
        .decode_with(latents, VaeDecode::Whole, Cancel::NEVER)
        .unwrap();
    assert_close(whole, &reference.data("whole"), TOLERANCE, "whole decode");
}

/// Seamless decoding (`scripts/seamless_fixtures.py`): diffusers with every Conv2d
/// `padding_mode="circular"`, whole and tiled (each tile wraps within itself, as diffusers'
/// `enable_tiling` then does), and wrapping along x only.
fn vae_seamless_decode<B: Backend>() {
    let reference = Reference::open("seamless_vae.safetensors");
    let device = Default::default();
    let mut vae = vae::<B>();
    let latents = Tensor::<B, 4>::from_data(reference.data("latents"), &device);
    vae.set_seamless(Seamless::XY);
    for (mode, key) in [(VaeDecode::Whole, "whole"), (VaeDecode::Tiled, "tiled")] {
        let decoded = vae
            .decode_with(latents.clone(), mode, Cancel::NEVER)
            .unwrap();
        assert_close(decoded, &reference.data(key), TOLERANCE, key);
    }
    vae.set_seamless(Seamless::X);
    let decoded = vae.decode(latents, Cancel::NEVER).unwrap();
    assert_close(decoded, &reference.data("whole_x"), TOLERANCE, "whole_x");
}

backend_tests! {
    vae_seamless_decode => vae_seamless_decode,
    unet_forward => unet_forward,
    unet_odd_sizes => unet_odd_sizes,
    vae_decode_and_encode => vae_decode_and_encode,
    vae_tiled_and_sliced_decode => vae_tiled_and_sliced_decode,
}
