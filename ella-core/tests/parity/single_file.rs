//! An SD1.5 single-file checkpoint in the LDM layout (`scripts/single_file_fixtures.py`,
//! checked there against diffusers' own `from_single_file`): the U-Net, VAE and CLIP text
//! model read through `pipeline::ldm` compute what the diffusers-layout reference does.
//! Tolerances: as the U-Net/VAE (1e-3) and CLIP (1e-4) tests.

use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::pipeline::ldm;
use ella_core::{
    AutoencoderKL, Cancel, Checkpoint, ClipTextConfig, ClipTextModel, UNet2DConditionModel,
    UNetConfig, VaeConfig,
};

use crate::common::{F32_TOLERANCE, Reference, assert_close, fixture};

const TOLERANCE: f32 = 1e-3;

fn single_file() -> Checkpoint {
    let checkpoint = Checkpoint::open(fixture("sd-single-file.safetensors")).unwrap();
    ldm::check_sd1(&checkpoint).unwrap();
    checkpoint
}

fn vae_config() -> VaeConfig {
    VaeConfig::from_file(&fixture("sd/vae/config.json")).unwrap()
}

/// The checkpoint's U-Net on the U-Net test's input.
fn unet_forward<B: Backend>() {
    let config = UNetConfig::from_file(&fixture("sd/unet/config.json")).unwrap();
    let view = ldm::unet(&single_file(), &config);
    let device = Default::default();
    let unet =
        UNet2DConditionModel::<B>::from_checkpoint(config, &view, &device, DType::F32).unwrap();
    let reference = Reference::open("sd.safetensors");
    let sample = Tensor::<B, 4>::from_data(reference.data("unet.sample"), &device);
    let cond = Tensor::<B, 3>::from_data(reference.data("unet.cond"), &device);
    let out = unet.forward(sample, &[999.0, 250.0], cond).unwrap();
    assert_close(
        out,
        &reference.data("unet.out"),
        TOLERANCE,
        "single-file unet",
    );
}

/// The checkpoint's own VAE (another than `sd/vae`), and a standalone LDM VAE file (`sd/vae`).
fn vae_decode<B: Backend>() {
    let device = Default::default();
    let view = ldm::vae(&single_file(), vae_config().block_out_channels.len());
    let vae =
        AutoencoderKL::<B>::from_checkpoint(vae_config(), &view, &device, DType::F32).unwrap();
    let reference = Reference::open("single_file.safetensors");
    let latents = Tensor::<B, 4>::from_data(reference.data("latents"), &device);
    assert_close(
        vae.decode(latents, Cancel::NEVER).unwrap(),
        &reference.data("other_vae.decoded"),
        TOLERANCE,
        "single-file vae",
    );

    let standalone = Checkpoint::open(fixture("vae-ldm.safetensors")).unwrap();
    assert!(ldm::is_ldm_vae(&standalone));
    let view = ldm::vae(&standalone, vae_config().block_out_channels.len());
    let vae =
        AutoencoderKL::<B>::from_checkpoint(vae_config(), &view, &device, DType::F32).unwrap();
    let reference = Reference::open("sd.safetensors");
    let latents = Tensor::<B, 4>::from_data(reference.data("vae.latents"), &device);
    assert_close(
        vae.decode(latents, Cancel::NEVER).unwrap(),
        &reference.data("vae.decoded"),
        TOLERANCE,
        "standalone LDM vae",
    );
}

/// The checkpoint's CLIP text model (`cond_stage_model.transformer.*`).
fn clip_forward<B: Backend>() {
    let config = ClipTextConfig::from_file(&fixture("sd/text_encoder/config.json")).unwrap();
    let view = ldm::clip(&single_file());
    let device = Default::default();
    let model = ClipTextModel::<B>::from_checkpoint(config, &view, &device, DType::F32).unwrap();
    let reference = Reference::open("clip.safetensors");
    let ids = reference.int_tensor::<B>("input_ids", &device);
    assert_close(
        model.forward(ids).unwrap(),
        &reference.data("last_hidden_state"),
        F32_TOLERANCE,
        "single-file clip",
    );
}

backend_tests! {
    unet_forward => unet_forward,
    vae_decode => vae_decode,
    clip_forward => clip_forward,
}
