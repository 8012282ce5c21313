//! ELLA's connector (TSC) against the PyTorch reference module written from the paper and the
//! official description (`scripts/ella_reference.py`). Tolerance: max abs error ≤ 1e-4 in f32.

use crate::common::{F32_TOLERANCE, Reference, assert_close, fixture};
use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::connector::timestep_features;
use ella_core::{Connector, ConnectorConfig, Error};

fn config(name: &str) -> ConnectorConfig {
    ConnectorConfig::from_file(&fixture(&format!("ella/{name}"))).unwrap()
}

fn connector<B: Backend>(file: &str, config_file: &str) -> Connector<B> {
    Connector::load(
        fixture(&format!("ella/{file}")),
        &config(config_file),
        &Default::default(),
        DType::F32,
    )
    .unwrap()
}

fn states<B: Backend>(reference: &Reference, name: &str) -> Tensor<B, 3> {
    Tensor::from_data(reference.data(name), &Default::default())
}

#[test]
fn sinusoidal_features_match_diffusers() {
    let reference = Reference::open("ella.safetensors");
    for t in [0.0f32, 1.0, 500.0, 999.0, 741.5] {
        let ours = timestep_features(&[t], 320, true, 0.0);
        let expected = reference.data(&format!("features320.t{t:?}"));
        assert_eq!(ours.shape, expected.shape);
        let err = ours
            .iter::<f32>()
            .zip(expected.iter::<f32>())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        // PyTorch's vectorised `exp` is 1 ulp off the correctly rounded frequency for a few
        // of the 160 frequencies (we match NumPy's f32 `exp`); times t ≤ 999 that moves the
        // argument by up to ~6e-5, so the features agree to 1e-4, not to f32 epsilon.
        assert!(err <= 1e-4, "t = {t}: max abs error {err:e}");
        // The cosine half comes first (flip_sin_to_cos).
        assert!((ours.iter::<f32>().next().unwrap() - t.cos()).abs() < 1e-6);
    }
}

/// One prompt (flexible mode) at the timesteps of a whole schedule's range.
fn single_prompt_timesteps<B: Backend>() {
    let reference = Reference::open("ella.safetensors");
    let t5 = Reference::open("t5.safetensors");
    let ella = connector::<B>("ella.safetensors", "config.json");
    for t in [0, 1, 500, 999] {
        let out = ella
            .forward(states(&t5, "short.hidden"), &[t as f32])
            .unwrap();
        assert_close(
            out,
            &reference.data(&format!("short.t{t}")),
            F32_TOLERANCE,
            &format!("t = {t}"),
        );
    }
    let out = ella.forward(states(&t5, "short.hidden"), &[741.5]).unwrap();
    assert_close(
        out,
        &reference.data("short.t741_5"),
        F32_TOLERANCE,
        "fractional t",
    );
}

/// Fixed mode: a padded batch of two (padding attended, as the reference does), with one
/// timestep per sample and with one timestep for the whole batch.
fn batch_timesteps<B: Backend>() {
    let reference = Reference::open("ella.safetensors");
    let t5 = Reference::open("t5.safetensors");
    let ella = connector::<B>("ella.safetensors", "config.json");
    let out = ella
        .forward(states(&t5, "fixed.hidden"), &[999.0, 500.0])
        .unwrap();
    assert_close(
        out,
        &reference.data("fixed.t999_500"),
        F32_TOLERANCE,
        "per-sample timesteps",
    );
    let out = ella.forward(states(&t5, "fixed.hidden"), &[250.0]).unwrap();
    assert_close(
        out,
        &reference.data("fixed.t250"),
        F32_TOLERANCE,
        "shared timestep",
    );
}

/// An all-F16 file (as the official one) and the optional output projection.
fn f16_file_and_proj_out<B: Backend>() {
    let reference = Reference::open("ella.safetensors");
    let t5 = Reference::open("t5.safetensors");
    let ella = connector::<B>("ella-f16.safetensors", "config.json");
    let out = ella.forward(states(&t5, "short.hidden"), &[500.0]).unwrap();
    assert_close(
        out,
        &reference.data("f16_file.short.t500"),
        F32_TOLERANCE,
        "f16 file",
    );
    let ella = connector::<B>("ella-proj-out.safetensors", "config-proj-out.json");
    let out = ella.forward(states(&t5, "short.hidden"), &[500.0]).unwrap();
    assert_eq!(out.dims(), [1, 8, 20]);
    assert_close(
        out,
        &reference.data("proj_out.short.t500"),
        F32_TOLERANCE,
        "proj_out",
    );
}

fn bad_inputs_are_typed_errors<B: Backend>() {
    let t5 = Reference::open("t5.safetensors");
    let ella = connector::<B>("ella.safetensors", "config.json");
    let fixed: Tensor<B, 3> = states(&t5, "fixed.hidden");
    let err = ella.forward(fixed.clone(), &[1.0, 2.0, 3.0]).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("3 timesteps for a batch of 2")),
        "{err}"
    );
    let err = ella.forward(fixed.clone(), &[]).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = ella.forward(fixed.clone(), &[f32::NAN]).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    let err = ella.forward(fixed.narrow(2, 0, 16), &[1.0]).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("input_dim")),
        "{err}"
    );
}

backend_tests! {
    single_prompt_timesteps => single_prompt_timesteps,
    batch_timesteps => batch_timesteps,
    f16_file_and_proj_out => f16_file_and_proj_out,
    bad_inputs_are_typed_errors => bad_inputs_are_typed_errors,
}
