//! A tiny TAESD (diffusers `AutoencoderTiny`, `scripts/taesd_fixtures.py`) against diffusers:
//! `decode(latents).sample` and `encode(image).latents`, each on a batch of two and on sizes
//! the 2× levels do not divide. Tolerance: 1e-4 of the reference's scale (at least 1e-4), in
//! f32; the decoder's outputs reach ±8, so 8e-4 there.

use burn::tensor::{DType, Tensor};
use ella_core::Backend;
use ella_core::{AutoencoderTiny, Cancel, Error};

use crate::common::{F32_TOLERANCE, Reference, assert_close, fixture};

fn taesd<B: Backend>() -> AutoencoderTiny<B> {
    AutoencoderTiny::load(fixture("taesd"), &Default::default(), DType::F32).unwrap()
}

/// [`F32_TOLERANCE`] relative to the largest reference value (when above 1).
fn tolerance(reference: &Reference, key: &str) -> f32 {
    let scale = reference
        .data(key)
        .iter::<f32>()
        .map(f32::abs)
        .fold(1.0f32, f32::max);
    F32_TOLERANCE * scale
}

/// Latents `[2, 4, 3, 3]` → `[2, 3, 24, 24]`, and a 6×5 latent → 48×40.
fn decode<B: Backend>() {
    let reference = Reference::open("taesd.safetensors");
    let device = Default::default();
    let taesd = taesd::<B>();
    assert_eq!(taesd.config.upscale_factor(), 8);
    for (input, output) in [("latents", "decoded"), ("latents_odd", "decoded_odd")] {
        let latents = Tensor::<B, 4>::from_data(reference.data(input), &device);
        let image = taesd.decode(latents, Cancel::NEVER).unwrap();
        assert_close(
            image,
            &reference.data(output),
            tolerance(&reference, output),
            output,
        );
    }
}

/// Images `[2, 3, 16, 16]` → `[2, 4, 2, 2]`, and 20×18 → 3×3 (stride-2 convolutions
/// padded by 1 round up).
fn encode<B: Backend>() {
    let reference = Reference::open("taesd.safetensors");
    let device = Default::default();
    let taesd = taesd::<B>();
    assert_eq!(taesd.config.downscale_factor(), 8);
    for (input, output) in [("image", "encoded"), ("image_odd", "encoded_odd")] {
        let image = Tensor::<B, 4>::from_data(reference.data(input), &device);
        let latents = taesd.encode(image, Cancel::NEVER).unwrap();
        assert_close(
            latents,
            &reference.data(output),
            tolerance(&reference, output),
            output,
        );
    }
}

/// Inputs of the wrong width are typed errors, and a set cancel flag stops both calls.
fn bad_inputs_and_cancel<B: Backend>() {
    let device = Default::default();
    let taesd = taesd::<B>();
    let wrong = Tensor::<B, 4>::zeros([1, 3, 4, 4], &device);
    let err = taesd.decode(wrong, Cancel::NEVER).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("latents")),
        "{err}"
    );
    let wrong = Tensor::<B, 4>::zeros([1, 4, 16, 16], &device);
    let err = taesd.encode(wrong, Cancel::NEVER).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("image")),
        "{err}"
    );
    let flag = std::sync::atomic::AtomicBool::new(true);
    let latents = Tensor::<B, 4>::zeros([1, 4, 2, 2], &device);
    let err = taesd.decode(latents, Cancel::new(&flag)).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    let image = Tensor::<B, 4>::zeros([1, 3, 16, 16], &device);
    let err = taesd.encode(image, Cancel::new(&flag)).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
}

backend_tests! {
    decode => decode,
    encode => encode,
    bad_inputs_and_cancel => bad_inputs_and_cancel,
}
