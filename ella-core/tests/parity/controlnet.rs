//! A tiny ControlNet (diffusers `ControlNetModel`, `scripts/controlnet_fixtures.py`): its
//! residuals, and the U-Net with them added, against diffusers. Tolerance: as the U-Net (1e-3).
//! The same ControlNet as single files in the original layout
//! (`scripts/controlnet_ldm_fixtures.py`): every tensor as diffusers' `from_single_file` reads
//! it, and the same residuals.

use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::pipeline::ldm;
use ella_core::{
    Cancel, Checkpoint, ControlNetConfig, ControlNetModel, UNet2DConditionModel, UNetConfig,
    load_controlnet,
};

use crate::common::{Reference, assert_close, fixture};

const TOLERANCE: f32 = 1e-3;

fn residuals_and_unet<B: Backend>() {
    let device = Default::default();
    let controlnet =
        ControlNetModel::<B>::load(fixture("controlnet"), &device, DType::F32).unwrap();
    check_residuals_and_unet(&controlnet, TOLERANCE);
}

fn check_residuals_and_unet<B: Backend>(controlnet: &ControlNetModel<B>, tolerance: f32) {
    let device = Default::default();
    let unet = UNet2DConditionModel::<B>::load(fixture("sd/unet"), &device, DType::F32).unwrap();
    let inputs = Reference::open("sd.safetensors");
    let reference = Reference::open("controlnet.safetensors");
    let sample = Tensor::<B, 4>::from_data(inputs.data("unet.sample"), &device);
    let cond = Tensor::<B, 3>::from_data(inputs.data("unet.cond"), &device);
    let image = Tensor::<B, 4>::from_data(reference.data("image"), &device);
    let timesteps = [999.0, 250.0];
    let residuals = controlnet
        .forward(
            sample.clone(),
            &timesteps,
            cond.clone(),
            image,
            0.8,
            Cancel::NEVER,
        )
        .unwrap();
    assert_eq!(residuals.down.len(), 6);
    for (i, down) in residuals.down.iter().enumerate() {
        let key = format!("down{i}");
        assert_close(down.clone(), &reference.data(&key), tolerance, &key);
    }
    assert_close(
        residuals.mid.clone(),
        &reference.data("mid"),
        tolerance,
        "mid",
    );
    let out = unet
        .forward_with(sample, &timesteps, cond, Some(residuals), Cancel::NEVER)
        .unwrap();
    assert_close(out, &reference.data("unet"), tolerance, "unet + residuals");
}

/// The original-layout files (`control_model.*` in F32, the fp16 conversion's layout in F16)
/// read as the folder: the config derived from the U-Net's and the hint encoder's shapes is
/// the folder's, every tensor comes back equal (F16: the folder's rounded), and the
/// ControlNet loaded from each gives the folder's residuals.
fn original_layout_files<B: Backend>() {
    let device = Default::default();
    let unet = UNetConfig::from_file(&fixture("sd/unet/config.json")).unwrap();
    let expected_config = ControlNetConfig::from_file(&fixture("controlnet/config.json")).unwrap();
    let folder = Checkpoint::open(fixture("controlnet")).unwrap();
    for (file, half) in [
        ("controlnet-ldm.safetensors", false),
        ("controlnet-ldm-fp16.safetensors", true),
    ] {
        let checkpoint = Checkpoint::open(fixture(file)).unwrap();
        assert!(ldm::is_ldm_controlnet(&checkpoint), "{file}");
        let config = ldm::controlnet_config(&checkpoint, &unet).unwrap();
        // What the weights define (the rest of the config is the U-Net's, not the folder's).
        let defining = |c: &ControlNetConfig| {
            (
                c.conditioning_channels,
                c.conditioning_embedding_out_channels.clone(),
                c.unet.block_out_channels.clone(),
                c.unet.down_block_types.clone(),
                c.unet.in_channels,
            )
        };
        assert_eq!(defining(&config), defining(&expected_config), "{file}");
        let view = ldm::controlnet(&checkpoint, &config);
        let names: Vec<&str> = view.names().collect();
        assert_eq!(names, folder.names().collect::<Vec<_>>(), "{file}");
        for name in names {
            let ours = view.data(name).unwrap();
            let mut theirs = folder.data(name).unwrap();
            if half {
                theirs = theirs.convert::<half::f16>();
            }
            assert_eq!(ours.dtype, theirs.dtype, "{file}: {name}");
            assert_eq!(ours.bytes, theirs.bytes, "{file}: {name}");
        }
        let controlnet = load_controlnet::<B>(&fixture(file), &unet, &device, DType::F32).unwrap();
        // F16 weights: the rounding of every weight shows in the residuals.
        check_residuals_and_unet(&controlnet, if half { 2e-2 } else { TOLERANCE });
    }
}

backend_tests! {
    residuals_and_unet => residuals_and_unet,
    // The same tensors as the folder's, which `residuals_and_unet` runs on every backend.
    #[cpu]
    original_layout_files => original_layout_files,
}
