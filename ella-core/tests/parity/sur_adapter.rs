//! A tiny SUR-adapter (`scripts/sur_fixtures.py`, the official module rebuilt in
//! `scripts/sur_reference.py`) on `[negative; positive]` CLIP states, in both modes.
//! Tolerance: 1e-4 in f32. The sampling with it is one of the pipeline runs.

use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::{Error, SurAdapter, SurMode};

use crate::common::{F32_TOLERANCE, Reference, assert_close, fixture};

fn both_modes<B: Backend>() {
    let device = Default::default();
    let adapter =
        SurAdapter::<B>::load(fixture("sur/adapter.safetensors"), 8, &device, DType::F32).unwrap();
    assert_eq!(
        (
            adapter.config.width,
            adapter.config.depth,
            adapter.config.feed_forward
        ),
        (32, 2, 64)
    );
    let reference = Reference::open("sur.safetensors");
    let features = Tensor::<B, 3>::from_data(reference.data("features"), &device);
    for (mode, key) in [
        (SurMode::Faithful, "faithful"),
        (SurMode::PerToken, "per_token"),
    ] {
        let out = adapter.forward(features.clone(), 0.3, mode).unwrap();
        assert_close(
            out,
            &reference.data(&format!("{key}.out")),
            F32_TOLERANCE,
            key,
        );
    }
    for weight in [-0.1, 1.5, f32::NAN] {
        let err = adapter
            .forward(features.clone(), weight, SurMode::Faithful)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{weight}: {err}");
    }
}

backend_tests! {
    both_modes => both_modes,
}
