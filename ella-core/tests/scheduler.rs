//! Schedulers against diffusers 0.42.1 (`scripts/sd_fixtures.py`): timesteps exactly, sigmas
//! and init-noise sigma to f32 rounding, and six steps with fixed model outputs to 1e-5
//! relative (the diffusers code computes its coefficients in f32 too).

mod common;

use burn::backend::Flex as B;
use burn::tensor::Tensor;
use common::{Reference, fixture};
use ella_core::Error;
use ella_core::scheduler::{Scheduler, SchedulerConfig, SchedulerKind, TimestepSchedule};
use serde_json::Value;

fn sd15_config_with(overrides: &Value) -> SchedulerConfig {
    let path = fixture("sd/scheduler/scheduler_config.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for (k, v) in overrides.as_object().unwrap() {
        json[k] = v.clone();
    }
    serde_json::from_value(json).unwrap()
}

fn cases() -> serde_json::Map<String, Value> {
    let text = std::fs::read_to_string(fixture("reference/schedulers.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn assert_rel(actual: f32, expected: f32, rel: f32, what: &str) {
    assert!(
        (actual - expected).abs() <= rel * expected.abs().max(1.0),
        "{what}: {actual} vs {expected}"
    );
}

#[test]
fn timesteps_sigmas_and_init_noise_match_diffusers() {
    for (key, case) in cases() {
        let kind: SchedulerKind = case["scheduler"].as_str().unwrap().parse().unwrap();
        let config = sd15_config_with(&case["overrides"]);
        for (steps, expected) in case["steps"].as_object().unwrap() {
            let schedule = if key.ends_with("/ays") {
                TimestepSchedule::align_your_steps()
            } else {
                TimestepSchedule::Steps(steps.parse().unwrap())
            };
            let scheduler = Scheduler::<B>::new(kind, &config, &schedule).unwrap();
            let what = format!("{key}, {steps} steps");
            let timesteps = floats(&expected["timesteps"]);
            if key.starts_with("euler/use_karras_sigmas") {
                // Fractional timesteps from log-sigma interpolation: the f32 logs of the
                // training sigmas may differ by an ulp between NumPy and Rust.
                for (a, e) in scheduler.timesteps().iter().zip(&timesteps) {
                    assert!((a - e).abs() <= 1e-4, "{what}: timestep {a} vs {e}");
                }
                assert_eq!(scheduler.timesteps().len(), timesteps.len(), "{what}");
            } else {
                assert_eq!(
                    scheduler.timesteps(),
                    timesteps.as_slice(),
                    "{what}: timesteps"
                );
            }
            if let Some(sigmas) = expected.get("sigmas") {
                let sigmas = floats(sigmas);
                let ours = scheduler.sigmas().unwrap();
                assert_eq!(ours.len(), sigmas.len(), "{what}: sigma count");
                for (a, e) in ours.iter().zip(&sigmas) {
                    assert_rel(*a, *e, 1e-6, &format!("{what}: sigma"));
                }
            }
            let init = expected["init_noise_sigma"].as_f64().unwrap() as f32;
            assert_rel(
                scheduler.init_noise_sigma(),
                init,
                1e-6,
                &format!("{what}: init_noise_sigma"),
            );
        }
    }
}

#[test]
fn six_steps_with_fixed_model_outputs_match_diffusers() {
    let reference = Reference::open("scheduler_steps.safetensors");
    let device = Default::default();
    let tensor = |name: &str| Tensor::<B, 4>::from_data(reference.data(name), &device);
    let mut checked = 0;
    for (key, case) in cases() {
        if key.ends_with("/ays") {
            continue;
        }
        let kind: SchedulerKind = case["scheduler"].as_str().unwrap().parse().unwrap();
        let config = sd15_config_with(&case["overrides"]);
        let mut scheduler =
            Scheduler::<B>::new(kind, &config, &TimestepSchedule::Steps(6)).unwrap();
        let mut x = tensor("step.sample") * scheduler.init_noise_sigma();
        for i in 0..6 {
            let scaled = scheduler.scale_model_input(x.clone(), i);
            common::assert_close(
                scaled,
                &reference.data(&format!("{key}.scaled{i}")),
                1e-5,
                &format!("{key} scaled {i}"),
            );
            x = scheduler.step(tensor(&format!("step.model_output{i}")), i, x, None);
            let expected = reference.data(&format!("{key}.prev{i}"));
            let scale = expected.iter::<f32>().map(f32::abs).fold(1.0, f32::max);
            common::assert_close(
                x.clone(),
                &expected,
                1e-5 * scale,
                &format!("{key} step {i}"),
            );
            checked += 1;
        }
    }
    assert!(checked >= 6 * 13, "only {checked} steps checked");
}

/// LCM and TCD (`scripts/few_step_fixtures.py`): timesteps exactly for several step counts
/// and configs, and four steps with fixed model outputs and diffusers' recorded noise to 1e-5
/// relative; the noise is drawn exactly where diffusers draws it.
#[test]
fn consistency_schedulers_match_diffusers() {
    let text = std::fs::read_to_string(fixture("reference/schedulers_consistency.json")).unwrap();
    let cases: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    let reference = Reference::open("schedulers_consistency.safetensors");
    let device = Default::default();
    let tensor = |name: &str| Tensor::<B, 4>::from_data(reference.data(name), &device);
    assert_eq!(cases.len(), 9);
    for (key, case) in cases {
        let kind: SchedulerKind = case["scheduler"].as_str().unwrap().parse().unwrap();
        let config = sd15_config_with(&case["overrides"]);
        let build = |steps: usize| {
            let mut scheduler =
                Scheduler::<B>::new(kind, &config, &TimestepSchedule::Steps(steps)).unwrap();
            if let Some(eta) = case["eta"].as_f64() {
                scheduler.set_eta(eta as f32).unwrap();
            }
            scheduler
        };
        for (steps, expected) in case["steps"].as_object().unwrap() {
            let scheduler = build(steps.parse().unwrap());
            assert_eq!(
                scheduler.timesteps(),
                floats(expected).as_slice(),
                "{key}, {steps} steps"
            );
        }
        let mut scheduler = build(4);
        let mut x = tensor("step.sample");
        let mut draws = 0;
        for i in 0..4 {
            let noise = scheduler.draws_noise(i).then(|| {
                draws += 1;
                tensor(&format!("{key}.noise{}", draws - 1))
            });
            x = scheduler.step(tensor(&format!("step.model_output{i}")), i, x, noise);
            let expected = reference.data(&format!("{key}.prev{i}"));
            let scale = expected.iter::<f32>().map(f32::abs).fold(1.0, f32::max);
            common::assert_close(
                x.clone(),
                &expected,
                1e-5 * scale,
                &format!("{key} step {i}"),
            );
        }
        assert_eq!(
            draws,
            case["noise_draws"].as_u64().unwrap(),
            "{key}: noise draws"
        );
    }
}

/// The clean sample each scheduler predicts (what live previews show) against diffusers'
/// `pred_original_sample` (DDIM, Euler) and `convert_model_output` (DPM-Solver++), and
/// the linear latent→RGB preview against ComfyUI's formula (`scripts/preview_fixtures.py`).
#[test]
fn predicted_clean_samples_and_linear_previews_match_the_reference() {
    let steps = Reference::open("scheduler_steps.safetensors");
    let reference = Reference::open("previews.safetensors");
    let device = Default::default();
    let tensor = |name: &str| Tensor::<B, 4>::from_data(steps.data(name), &device);
    let config = sd15_config_with(&Value::Object(Default::default()));
    for kind in [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::DpmSolverMultistepKarras,
    ] {
        let mut scheduler =
            Scheduler::<B>::new(kind, &config, &TimestepSchedule::Steps(6)).unwrap();
        let mut x = tensor("step.sample") * scheduler.init_noise_sigma();
        for i in 0..6 {
            let output = tensor(&format!("step.model_output{i}"));
            let x0 = scheduler.predicted_original(output.clone(), i, x.clone());
            let expected = reference.data(&format!("{kind}.x0_{i}"));
            let scale = expected.iter::<f32>().map(f32::abs).fold(1.0, f32::max);
            common::assert_close(x0, &expected, 1e-5 * scale, &format!("{kind} x0 {i}"));
            x = scheduler.step(output, i, x, None);
        }
    }
    let images = ella_core::pipeline::preview::linear_preview(&reference.data("linear.latents"));
    let (_, shape, expected) = reference.raw("linear.image");
    assert_eq!(images.len(), shape[0]);
    let per_image = shape[1] * shape[2] * 3;
    for (i, image) in images.iter().enumerate() {
        assert_eq!([image.height, image.width], [shape[1], shape[2]]);
        let want = &expected[i * per_image..(i + 1) * per_image];
        // Rounding of values on a .5 boundary may differ by one level.
        assert!(
            image
                .pixels
                .iter()
                .zip(want)
                .all(|(a, b)| a.abs_diff(*b) <= 1),
            "linear preview {i}"
        );
    }
}

#[test]
fn bad_scheduler_inputs_are_typed_errors() {
    let config = sd15_config_with(&Value::Object(Default::default()));
    let err = "heun".parse::<SchedulerKind>().unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("dpm++2m-karras")),
        "{err}"
    );
    for kind in SchedulerKind::ALL {
        let err = Scheduler::<B>::new(kind, &config, &TimestepSchedule::Steps(0)).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{kind}: {err}");
        let err = Scheduler::<B>::new(kind, &config, &TimestepSchedule::Steps(1001)).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("training timesteps")),
            "{kind}: {err}"
        );
    }
    let err = Scheduler::<B>::new(
        SchedulerKind::Ddim,
        &config,
        &TimestepSchedule::align_your_steps(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    let err = Scheduler::<B>::new(
        SchedulerKind::DpmSolverMultistepKarras,
        &config,
        &TimestepSchedule::align_your_steps(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    for kind in [SchedulerKind::Lcm, SchedulerKind::Tcd] {
        // Beyond the distillation schedule's 50 timesteps, and custom lists.
        let err = Scheduler::<B>::new(kind, &config, &TimestepSchedule::Steps(51)).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("original_inference_steps")),
            "{kind}: {err}"
        );
        let err =
            Scheduler::<B>::new(kind, &config, &TimestepSchedule::align_your_steps()).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{kind}: {err}");
        let zero = sd15_config_with(&serde_json::json!({"original_inference_steps": 0}));
        let err = Scheduler::<B>::new(kind, &zero, &TimestepSchedule::Steps(4)).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{kind}: {err}");
    }
    let mut tcd =
        Scheduler::<B>::new(SchedulerKind::Tcd, &config, &TimestepSchedule::Steps(4)).unwrap();
    for eta in [-0.1, 1.5, f32::NAN] {
        assert!(
            matches!(tcd.set_eta(eta), Err(Error::InvalidInput(_))),
            "eta {eta}"
        );
    }
    let unsupported = sd15_config_with(&serde_json::json!({"beta_schedule": "cubic"}));
    let err = Scheduler::<B>::new(
        SchedulerKind::Euler,
        &unsupported,
        &TimestepSchedule::Steps(4),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains("cubic")),
        "{err}"
    );
    let unsupported = sd15_config_with(&serde_json::json!({"algorithm_type": "sde-dpmsolver++"}));
    let err = Scheduler::<B>::new(
        SchedulerKind::DpmSolverMultistep,
        &unsupported,
        &TimestepSchedule::Steps(4),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
}

/// The largest step counts against diffusers (`scheduler_limits.json`): where diffusers runs
/// all the steps to a finite sample, the timesteps are its own; where it fails (DDIM at 1000
/// indexes past the training timesteps, DPM-Solver++ at 1000 spaces timestep 500 twice and
/// ends in infinities), the request is refused up front, naming the largest count that works.
#[test]
fn largest_step_counts_match_diffusers_or_are_refused_where_it_fails() {
    let config = sd15_config_with(&Value::Object(Default::default()));
    let text = std::fs::read_to_string(fixture("reference/scheduler_limits.json")).unwrap();
    let cases: serde_json::Map<String, Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 8);
    for (key, case) in cases {
        let (name, steps) = key.split_once('/').unwrap();
        let kind: SchedulerKind = name.parse().unwrap();
        let steps: usize = steps.parse().unwrap();
        let built = Scheduler::<B>::new(kind, &config, &TimestepSchedule::Steps(steps));
        match case["runs"].as_bool().unwrap() {
            true => assert_eq!(
                built.unwrap().timesteps(),
                floats(&case["timesteps"]).as_slice(),
                "{key}"
            ),
            false => {
                let err = built.unwrap_err();
                assert!(
                    matches!(&err, Error::InvalidInput(m) if m.contains("at most 999 steps")),
                    "{key} ({}): {err}",
                    case["failure"]
                );
            }
        }
    }
}
