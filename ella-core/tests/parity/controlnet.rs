//! A tiny ControlNet (diffusers `ControlNetModel`, `scripts/controlnet_fixtures.py`): its
//! residuals, and the U-Net with them added, against diffusers. Tolerance: as the U-Net (1e-3).

use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::{Cancel, ControlNetModel, UNet2DConditionModel};

use crate::common::{Reference, assert_close, fixture};

const TOLERANCE: f32 = 1e-3;

fn residuals_and_unet<B: Backend>() {
    let device = Default::default();
    let controlnet =
        ControlNetModel::<B>::load(fixture("controlnet"), &device, DType::F32).unwrap();
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
        assert_close(down.clone(), &reference.data(&key), TOLERANCE, &key);
    }
    assert_close(
        residuals.mid.clone(),
        &reference.data("mid"),
        TOLERANCE,
        "mid",
    );
    let out = unet
        .forward_with(sample, &timesteps, cond, Some(residuals), Cancel::NEVER)
        .unwrap();
    assert_close(out, &reference.data("unet"), TOLERANCE, "unet + residuals");
}

backend_tests! {
    residuals_and_unet => residuals_and_unet,
}
