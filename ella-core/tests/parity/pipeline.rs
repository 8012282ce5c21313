//! Whole ELLA samplings (tiny T5 + connector + U-Net + VAE, 4 steps with classifier-free
//! guidance, from given initial latents) against the reference pipeline: diffusers'
//! `StableDiffusionPipeline` with the official `ELLAProxyUNet` (`scripts/sd_fixtures.py`),
//! also with LCM and TCD, with and without guidance, given diffusers' step noise
//! (`scripts/few_step_fixtures.py`);
//! the same conditioned on CLIP alone (plain diffusers) and on ELLA's tokens followed by
//! CLIP's (ComfyUI-ELLA's concat mode), and from a single-file checkpoint.
//! Tolerances: connector tokens 1e-4, latents 1e-3 relative to their scale, the decoded
//! image within 1/255 on ≥ 99% of the pixel values.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use crate::common::{Reference, assert_close, backend_is, fixture, matmul_in_tf32, tiny_paths};
use burn::tensor::{DType, Tensor, TensorData};
use ella_core::Backend;
use ella_core::t5::TokenMode;
use ella_core::{
    AutoencoderKL, ClipText, Conditioning, Control, Error, GenerateRequest, Hooks, Image,
    InitImage, Mask, ModelPaths, Pipeline, PipelineParts, PreviewMethod, Previews, SchedulerConfig,
    Seamless, SurOptions, T5Text, TimestepSchedule, UNet2DConditionModel, VaeDecode,
};
use serde_json::Value;

/// The ControlNet fixtures the pipeline loads, in order.
const CONTROLNETS: [&str; 2] = ["controlnet", "controlnet-b"];

/// The tiny models with CLIP and two ControlNets: every conditioning.
fn paths() -> ModelPaths {
    ModelPaths {
        clip: true,
        controlnets: CONTROLNETS.map(fixture).to_vec(),
        sur_adapter: Some(fixture("sur/adapter.safetensors")),
        ..tiny_paths()
    }
}

fn pipeline<B: Backend>() -> Pipeline<B> {
    Pipeline::load(&paths(), &Default::default(), DType::F32).unwrap()
}

fn runs() -> BTreeMap<String, Value> {
    read_runs("reference/pipelines.json")
}

fn read_runs(path: &str) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(fixture(path)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn request_for(run: &Value, reference: &Reference) -> GenerateRequest {
    GenerateRequest {
        prompt: run["prompt"].as_str().unwrap().into(),
        negative_prompt: run["negative"].as_str().unwrap().into(),
        width: run["width"].as_u64().unwrap() as usize,
        height: run["height"].as_u64().unwrap() as usize,
        schedule: TimestepSchedule::Steps(run["steps"].as_u64().unwrap() as usize),
        guidance_scale: run["guidance"].as_f64().unwrap() as f32,
        t5: T5Text {
            mode: match run["mode"].as_str().unwrap() {
                "fixed" => TokenMode::FIXED_128,
                _ => TokenMode::Flexible,
            },
            ..Default::default()
        },
        scheduler: run["scheduler"].as_str().unwrap().parse().unwrap(),
        eta: run
            .get("eta")
            .map_or(0.0, |eta| eta.as_f64().unwrap() as f32),
        init_latents: Some(reference.data("init_latents")),
        step_noise: Some(
            (0..)
                .map(|i| format!("step_noise{i}"))
                .take_while(|key| reference.has(key))
                .map(|key| reference.data(&key))
                .collect(),
        ),
        conditioning: match run["conditioning"].as_str() {
            None | Some("ella") => Conditioning::Ella,
            Some("ella-clip") => Conditioning::EllaClip,
            Some("clip") => Conditioning::Clip,
            Some("clip-sur") => Conditioning::ClipSur(SurOptions {
                weight: run
                    .get("sur_weight")
                    .map_or(0.1, |w| w.as_f64().unwrap() as f32),
                ..SurOptions::default()
            }),
            Some(other) => panic!("unknown conditioning {other}"),
        },
        clip: ClipText {
            prompt: run.get("clip_prompt").map(|p| p.as_str().unwrap().into()),
            negative: run.get("clip_negative").map(|p| p.as_str().unwrap().into()),
            skip: run
                .get("clip_skip")
                .map_or(0, |k| k.as_u64().unwrap() as usize),
            ..ClipText::default()
        },
        seamless: match run.get("seamless").and_then(Value::as_str) {
            None => Seamless::Off,
            Some("x") => Seamless::X,
            Some("y") => Seamless::Y,
            Some("xy") => Seamless::XY,
            Some(other) => panic!("unknown seamless axes {other}"),
        },
        init_image: run.get("init_image").map(|_| InitImage {
            image: reference.image("init_image"),
            strength: run
                .get("strength")
                .map_or(0.8, |s| s.as_f64().unwrap() as f32),
            mask: run.get("mask").map(|_| {
                let (_, shape, pixels) = reference.raw("mask");
                Mask {
                    width: shape[1],
                    height: shape[0],
                    pixels,
                }
            }),
        }),
        controls: controls_of(run, reference),
        ..GenerateRequest::default()
    }
}

/// A run's ControlNet controls: one (`control_scale`, `control_image`, on the first
/// ControlNet), or a list (`controlnets`: each names its ControlNet's fixture folder, the
/// pipeline's [`CONTROLNETS`] in order, and its image).
fn controls_of(run: &Value, reference: &Reference) -> Vec<Control> {
    let number = |value: &Value| value.as_f64().unwrap() as f32;
    if let Some(scale) = run.get("control_scale") {
        return vec![Control {
            scale: number(scale),
            start: number(&run["control_start"]),
            end: number(&run["control_end"]),
            ..Control::new(reference.image("control_image"))
        }];
    }
    let Some(list) = run.get("controlnets") else {
        return Vec::new();
    };
    list.as_array()
        .unwrap()
        .iter()
        .map(|entry| Control {
            controlnet: CONTROLNETS
                .iter()
                .position(|folder| entry["folder"] == *folder)
                .unwrap(),
            image: reference.image(entry["image"].as_str().unwrap()),
            scale: number(&entry["scale"]),
            start: number(&entry["start"]),
            end: number(&entry["end"]),
        })
        .collect()
}

fn scale_of(data: &TensorData) -> f32 {
    data.iter::<f32>().map(f32::abs).fold(1.0, f32::max)
}

/// The runs wgpu checks: one per scheduler, token mode, conditioning, image-to-image and
/// ControlNet. In CI wgpu runs on lavapipe, where one tiny sampling takes a minute; the
/// others add no kernel these lack (they recombine the same ones), and the CPU backends and
/// CUDA check every run.
const WGPU_RUNS: [&str; 8] = [
    "dpm++2m_flexible",
    "dpm++2m_seamless-xy",
    "tcd_ella",
    "ddim_fixed",
    "euler_img2img",
    "dpm++2m_ella-clip",
    "dpm++2m_controlnet-ella",
    "dpm++2m_clip-sur",
];

/// The inpainting runs wgpu checks: one per U-Net kind (the 4-channel blend, the 9-channel
/// concatenation).
const WGPU_INPAINT_RUNS: [&str; 2] = ["dpm++2m_inpaint-ella", "dpm++2m_inpaint9-ella"];

/// Every intermediate tensor and the final image of each reference run.
fn samplings_match_the_reference<B: Backend>() {
    let pipeline = pipeline::<B>();
    let wgpu = backend_is::<B>("wgpu");
    let runs = runs();
    let mut checked = 0;
    for (name, run) in &runs {
        if !wgpu || WGPU_RUNS.contains(&name.as_str()) {
            check_run(&pipeline, name, run);
            checked += 1;
        }
    }
    assert_eq!(checked, if wgpu { WGPU_RUNS.len() } else { runs.len() });
}

/// The ELLA + CLIP run from an LDM single-file checkpoint (the tiny U-Net and CLIP, and a
/// *different* VAE) whose VAE is replaced by a standalone LDM-layout VAE file (the tiny VAE):
/// the same tensors and image as from the diffusers folders.
fn single_file_sampling_matches_the_reference<B: Backend>() {
    let paths = ModelPaths {
        sd: fixture("sd-single-file.safetensors"),
        sd_config: Some(fixture("sd")),
        vae: Some(fixture("vae-ldm.safetensors")),
        ..paths()
    };
    let pipeline = Pipeline::<B>::load(&paths, &Default::default(), DType::F32).unwrap();
    let name = "dpm++2m_ella-clip";
    check_run(&pipeline, name, &runs()[name]);
}

/// Compares one generation with reference run `name`, tensor by tensor.
fn check_run<B: Backend>(pipeline: &Pipeline<B>, name: &str, run: &Value) {
    let reference = Reference::open(&format!("pipeline_{name}.safetensors"));
    let request = request_for(run, &reference);
    let mut dumped = BTreeMap::new();
    let mut hooks = Hooks {
        tensors: Some(Box::new(|key: &str, data: TensorData| {
            dumped.insert(key.to_string(), data);
        })),
        ..Hooks::default()
    };
    let images = pipeline.generate_with(&request, None, &mut hooks).unwrap();
    drop(hooks);
    let device = Default::default();
    let check = |key: &str, tolerance: f32| {
        let expected = reference.data(key);
        let ours = dumped
            .get(key)
            .unwrap_or_else(|| panic!("{name}: no `{key}` dumped"));
        let tol = tolerance * scale_of(&expected);
        assert_close(
            Tensor::<B, 1>::from_data(flat(ours), &device),
            &flat(&expected),
            tol,
            &format!("{name}: {key}"),
        );
    };
    let t5_keys: &[&str] = match (request.conditioning.uses_t5(), &run["mode"]) {
        (false, _) => &[],
        (true, mode) if mode == "fixed" => &["t5_hidden"],
        (true, _) => &["t5_hidden_uncond", "t5_hidden_cond"],
    };
    for key in t5_keys {
        check(key, 1e-4);
    }
    // The steps the run took (image-to-image: the last ones of the schedule only).
    let steps = reference.data("timesteps").shape[0];
    assert!(
        !dumped.contains_key(&format!("latents_step{steps}")),
        "{name}: extra steps"
    );
    for i in 0..steps {
        check(&format!("condition_cond_step{i}"), 1e-4);
        // Without guidance (≤ 1) there is no negative branch.
        let uncond = format!("condition_uncond_step{i}");
        assert_eq!(
            dumped.contains_key(&uncond),
            reference.has(&uncond),
            "{name}: {uncond}"
        );
        if reference.has(&uncond) {
            check(&uncond, 1e-4);
        }
        check(&format!("latents_step{i}"), 1e-3);
    }
    check("final_latents", 1e-3);

    let (_, shape, expected) = reference.raw("image");
    let image = &images[0];
    assert_eq!(
        [image.height, image.width, 3],
        [shape[0], shape[1], shape[2]],
        "{name}: image size"
    );
    // TF32 matmuls (CUDA) move pixels by a few levels.
    let pixel_tolerance = if matmul_in_tf32::<B>() { 8 } else { 1 };
    let close = image
        .pixels
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a.abs_diff(**b) <= pixel_tolerance)
        .count();
    let fraction = close as f64 / expected.len() as f64;
    println!(
        "{name}: {:.2}% of pixel values within {pixel_tolerance}/255",
        fraction * 100.0
    );
    assert!(
        fraction >= 0.99,
        "{name}: only {:.2}% of pixel values within {pixel_tolerance}/255",
        fraction * 100.0
    );
    let spread = expected.iter().map(|&v| v as i32).max().unwrap()
        - expected.iter().map(|&v| v as i32).min().unwrap();
    assert!(
        spread > 100,
        "{name}: the reference image is nearly flat; the test would prove little"
    );
}

/// F16 and BF16 pipelines (where the backend has them) against the f32 reference image:
/// prints the pixel error (docs/performance.md) and bounds it.
fn half_precision_sampling<B: Backend>() {
    let device = Default::default();
    let name = "dpm++2m_flexible";
    let reference = Reference::open(&format!("pipeline_{name}.safetensors"));
    let request = request_for(&runs()[name], &reference);
    let (_, _, expected) = reference.raw("image");
    for (dtype, max_mean_error) in [(DType::F16, 2.0), (DType::BF16, 6.0)] {
        let loaded = Pipeline::<B>::load(&tiny_paths(), &device, dtype);
        if !B::supports_dtype(&device, dtype) {
            // A backend without this dtype refuses it by name instead of computing wrongly.
            assert!(
                matches!(loaded, Err(ella_core::Error::UnsupportedPrecision { .. })),
                "{dtype:?} on a backend without it"
            );
            continue;
        }
        let pipeline = loaded.unwrap();
        let image = &pipeline.generate(&request).unwrap()[0];
        let errors: Vec<u8> = image
            .pixels
            .iter()
            .zip(&expected)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = errors.iter().map(|&e| e as f64).sum::<f64>() / errors.len() as f64;
        let max = errors.iter().max().unwrap();
        println!("{dtype:?} pipeline vs f32 reference: mean |Δpixel| {mean:.2}, max {max}");
        assert!(
            mean <= max_mean_error,
            "{dtype:?}: mean pixel error {mean:.2} > {max_mean_error}"
        );
    }
}

fn flat(data: &TensorData) -> TensorData {
    let values: Vec<f32> = data.iter::<f32>().collect();
    let n = values.len();
    TensorData::new(values, [n])
}

/// TAESD as the final decoder (`VaeDecode::Tiny`): the reference run's latents through a
/// two-level TAESD (the tiny VAE's 2×) against diffusers' `AutoencoderTiny` and image
/// processor (`scripts/taesd_fixtures.py`); TAESD previews are the request's size.
fn tiny_decode_and_previews<B: Backend>() {
    let paths = ModelPaths {
        taesd: Some(fixture("taesd-x2")),
        ..paths()
    };
    let pipeline = Pipeline::<B>::load(&paths, &Default::default(), DType::F32).unwrap();
    let name = "dpm++2m_flexible";
    let reference = Reference::open(&format!("pipeline_{name}.safetensors"));
    let request = GenerateRequest {
        vae_decode: VaeDecode::Tiny,
        ..request_for(&runs()[name], &reference)
    };
    let mut previews = Vec::new();
    let mut hooks = Hooks {
        preview: Some(Previews {
            every: 1,
            method: PreviewMethod::Tiny,
            sink: Box::new(|preview| previews.push(preview)),
        }),
        ..Hooks::default()
    };
    let image = pipeline
        .generate_with(&request, None, &mut hooks)
        .unwrap()
        .remove(0);
    drop(hooks);
    let (_, shape, expected) = Reference::open("taesd_pipeline.safetensors").raw("image");
    assert_eq!(
        [image.height, image.width, 3],
        [shape[0], shape[1], shape[2]]
    );
    let tolerance = if matmul_in_tf32::<B>() { 8 } else { 1 };
    let close = image
        .pixels
        .iter()
        .zip(&expected)
        .filter(|(a, b)| a.abs_diff(**b) <= tolerance)
        .count();
    assert!(
        close as f64 >= 0.99 * expected.len() as f64,
        "TAESD decode: {close} of {} pixel values within {tolerance}",
        expected.len()
    );
    assert_eq!(previews.len(), request.schedule.steps() - 1);
    for preview in &previews {
        let tiny = &preview.images[0];
        assert_eq!([tiny.width, tiny.height], [request.width, request.height]);
    }
}

/// Inpainting and outpainting (`scripts/inpaint_fixtures.py`, docs/inpainting-reference.md)
/// against diffusers' `StableDiffusionInpaintPipeline` and
/// `StableDiffusionControlNetInpaintPipeline`: SD1.5's 4-channel U-Net (the kept region
/// re-noised and blended after every step) with ELLA, CLIP, both and a ControlNet, and an
/// outpainting canvas; a 9-channel inpainting U-Net from a diffusers folder and from a
/// single file. Every step's latents and tokens, and the image, as the other samplings.
fn inpainting_matches_the_reference<B: Backend>() {
    let device = Default::default();
    let sd = pipeline::<B>();
    let inpaint_paths = |sd: &str, sd_config: Option<&str>| ModelPaths {
        sd: fixture(sd),
        sd_config: sd_config.map(fixture),
        controlnets: Vec::new(),
        sur_adapter: None,
        ..paths()
    };
    let nine =
        Pipeline::<B>::load(&inpaint_paths("sd-inpaint", None), &device, DType::F32).unwrap();
    let wgpu = backend_is::<B>("wgpu");
    let runs = read_runs("reference/pipelines_inpaint.json");
    assert_eq!(runs.len(), 7);
    let mut checked = 0;
    for (name, run) in &runs {
        if wgpu && !WGPU_INPAINT_RUNS.contains(&name.as_str()) {
            continue;
        }
        let pipeline = match run["unet"].as_str() {
            Some("sd-inpaint") => &nine,
            _ => &sd,
        };
        check_run(pipeline, name, run);
        checked += 1;
    }
    assert_eq!(checked, if wgpu { WGPU_INPAINT_RUNS.len() } else { 7 });
    let single = Pipeline::<B>::load(
        &inpaint_paths("sd-inpaint-single-file.safetensors", Some("sd-inpaint")),
        &device,
        DType::F32,
    )
    .unwrap();
    assert_eq!(single.unet().config.in_channels, 9);
    let name = "dpm++2m_inpaint9-ella";
    check_run(&single, name, &runs[name]);
}

/// ELLA + CLIP with CLIP's own prompt, with and without its own negative prompt
/// (`scripts/community_fixtures.py`): CLIP's states of the other prompts appended to ELLA's
/// tokens at every step.
fn clip_prompts_match_the_reference<B: Backend>() {
    let pipeline = pipeline::<B>();
    let runs = read_runs("reference/pipelines_community.json");
    for name in ["dpm++2m_ella-clip-prompt", "dpm++2m_ella-clip-prompt-only"] {
        check_run(&pipeline, name, &runs[name]);
    }
}

/// Two ControlNets at once, each with its own image, scale and part of the run (on alone, on
/// together, off), on CLIP and on ELLA (`scripts/community_fixtures.py`): diffusers'
/// `MultiControlNetModel`, whose residuals add up.
fn several_controlnets_match_the_reference<B: Backend>() {
    let pipeline = pipeline::<B>();
    let runs = read_runs("reference/pipelines_community.json");
    for name in [
        "dpm++2m_multicontrolnet-clip",
        "dpm++2m_multicontrolnet-ella",
    ] {
        check_run(&pipeline, name, &runs[name]);
    }
}

/// A1111-weighted CLIP prompts of different chunk counts (a prompt of several 75-token
/// chunks, an empty negative of one) cannot share a U-Net batch; each branch runs on its own,
/// as in A1111. The first step's latents equal classifier-free guidance computed by hand from
/// two U-Net calls on the encoded states.
#[test]
fn clip_prompts_of_different_lengths_run_apart() {
    type B = ella_core::DefaultBackend;
    let paths = ModelPaths {
        clip: true,
        ..tiny_paths()
    };
    let pipeline = Pipeline::<B>::load(&paths, &Default::default(), DType::F32).unwrap();
    let request = GenerateRequest {
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(2),
        scheduler: ella_core::SchedulerKind::Euler,
        guidance_scale: 5.0,
        conditioning: Conditioning::Clip,
        ..GenerateRequest::new(["(red book:1.2), the other hat"; 12].join(", "))
    };
    let states = pipeline.encode_request(&request).unwrap();
    let clip = states.clip.as_ref().unwrap();
    assert_eq!(clip.uncond.dims()[1], 77);
    assert!(clip.cond.dims()[1] >= 2 * 77, "{:?}", clip.cond.dims());
    let dumped = std::sync::Mutex::new(None);
    let mut hooks = Hooks {
        tensors: Some(Box::new(|name, data| {
            if name == "latents_step0" {
                *dumped.lock().unwrap() = Some(data);
            }
        })),
        ..Default::default()
    };
    pipeline
        .generate_with(&request, Some(&states), &mut hooks)
        .unwrap();
    drop(hooks);

    let device = Default::default();
    let mut scheduler = ella_core::Scheduler::<B>::new(
        request.scheduler,
        pipeline.scheduler_config(),
        &request.schedule,
    )
    .unwrap();
    let vae = &pipeline.vae().config;
    let factor = vae.downscale_factor();
    let shape = [1, vae.latent_channels, 32 / factor, 32 / factor];
    let noise = ella_core::pipeline::noise::initial_noise(request.seed, shape);
    let latents = Tensor::<B, 4>::from_data(noise, &device) * scheduler.init_noise_sigma();
    let t = scheduler.timesteps()[0];
    let input = scheduler.scale_model_input(latents.clone(), 0);
    let unet = pipeline.unet();
    let uncond = unet
        .forward(input.clone(), &[t], clip.uncond.clone())
        .unwrap();
    let cond = unet.forward(input, &[t], clip.cond.clone()).unwrap();
    let guided = uncond.clone() + (cond - uncond) * request.guidance_scale;
    let expected = scheduler.step(guided, 0, latents, None);
    let dumped = dumped.into_inner().unwrap().expect("latents_step0 dumped");
    assert_close(expected, &dumped, 1e-5, "latents after step 1");
}

// The community runs use no kernel the other samplings do not.
backend_tests! {
    #[cpu]
    several_controlnets_match_the_reference => several_controlnets_match_the_reference,
    #[cpu]
    clip_prompts_match_the_reference => clip_prompts_match_the_reference,
    inpainting_matches_the_reference => inpainting_matches_the_reference,
    tiny_decode_and_previews => tiny_decode_and_previews,
    samplings_match_the_reference => samplings_match_the_reference,
    single_file_sampling_matches_the_reference => single_file_sampling_matches_the_reference,
    half_precision_sampling => half_precision_sampling,
}

/// `data` `[1, c, h, w]` rolled by `[dy, dx]` (NumPy's `roll`: value at `y` moves to `y + dy`).
fn roll(data: &TensorData, [dy, dx]: [usize; 2]) -> TensorData {
    let [c, h, w] = [data.shape[1], data.shape[2], data.shape[3]];
    let values: Vec<f32> = data.iter::<f32>().collect();
    let mut rolled = vec![0.0; values.len()];
    for (i, v) in values.iter().enumerate() {
        let (ch, y, x) = (i / (h * w), i / w % h, i % w);
        rolled[(ch * h + (y + dy) % h) * w + (x + dx) % w] = *v;
    }
    TensorData::new(rolled, [1, c, h, w])
}

/// A seamless image has no seam: where its copies meet is like any other place in it. The
/// U-Net, the VAE and the conditioning treat every position alike once the convolutions
/// wrap, so rolling the initial noise (by a multiple of the U-Net's downsampling) rolls the
/// image by as much: the edges meet exactly as interior rows and columns do. Along an axis
/// that does not wrap, the zero padding breaks this.
#[test]
fn seamless_images_wrap_around_without_a_seam() {
    let pipeline = pipeline::<burn::backend::Flex>();
    let noise = ella_core::pipeline::noise::initial_noise(5, [1, 4, 12, 16]);
    let request = |seamless, noise: TensorData| GenerateRequest {
        prompt: "a mossy stone wall texture".into(),
        width: 32,
        height: 24,
        schedule: TimestepSchedule::Steps(3),
        init_latents: Some(noise),
        seamless,
        ..GenerateRequest::default()
    };
    // Latent shifts of 4 rows and 6 columns: 8 and 12 pixels (the tiny VAE's factor is 2).
    let shift = [4, 6];
    let generate = |seamless, noise: &TensorData| {
        pipeline
            .generate(&request(seamless, noise.clone()))
            .unwrap()
            .remove(0)
    };
    // The fraction of pixel values of `rolled` within 2/255 of `image` shifted by `by` pixels.
    let agreement = |image: &Image, rolled: &Image, [dy, dx]: [usize; 2]| {
        let (h, w) = (image.height, image.width);
        let same = (0..h * w * 3)
            .filter(|&i| {
                let (y, x, c) = (i / (w * 3), i / 3 % w, i % 3);
                let moved = (((y + dy) % h) * w + (x + dx) % w) * 3 + c;
                image.pixels[i].abs_diff(rolled.pixels[moved]) <= 2
            })
            .count();
        same as f64 / (h * w * 3) as f64
    };
    let image = generate(Seamless::XY, &noise);
    let rolled = generate(Seamless::XY, &roll(&noise, shift));
    let both = agreement(&image, &rolled, [8, 12]);
    assert!(
        both > 0.999,
        "seamless XY: {:.2}% of pixels roll",
        both * 100.0
    );
    // Along x only: rolling columns commutes, rolling rows does not.
    let image = generate(Seamless::X, &noise);
    let columns = agreement(
        &image,
        &generate(Seamless::X, &roll(&noise, [0, 6])),
        [0, 12],
    );
    let rows = agreement(
        &image,
        &generate(Seamless::X, &roll(&noise, [4, 0])),
        [8, 0],
    );
    assert!(columns > 0.999, "seamless X, columns: {columns}");
    assert!(
        rows < 0.9,
        "seamless X, rows roll too ({rows}): the test proves nothing"
    );
    let image = generate(Seamless::Off, &noise);
    let plain = agreement(
        &image,
        &generate(Seamless::Off, &roll(&noise, shift)),
        [8, 12],
    );
    assert!(
        plain < 0.9,
        "a normal image rolls too ({plain}): the test proves nothing"
    );
    // Edge continuity: the step across the wrapped edge against the steps between
    // neighbouring interior columns (printed; equal in distribution by the above).
    let image = generate(Seamless::XY, &noise);
    let (h, w) = (image.height, image.width);
    let step = |a: usize, b: usize| {
        (0..h)
            .flat_map(|y| (0..3).map(move |c| (y, c)))
            .map(|(y, c)| {
                let at = |x: usize| image.pixels[(y * w + x) * 3 + c] as f64;
                (at(a) - at(b)).abs()
            })
            .sum::<f64>()
            / (h * 3) as f64
    };
    let interior = (0..w - 1).map(|x| step(x, x + 1)).sum::<f64>() / (w - 1) as f64;
    let edge = step(w - 1, 0);
    println!(
        "seamless XY: mean step across the edge {edge:.1}, between interior columns {interior:.1}"
    );
    assert!(edge <= 2.0 * interior, "edge {edge} vs interior {interior}");
}

/// Live previews: after every N-th step but the last, one image per sample, the linear
/// projection of the clean latents the step predicts (latent-sized); the final image is
/// unchanged by asking for them.
#[test]
fn previews_come_every_n_steps() {
    let pipeline = pipeline::<burn::backend::Flex>();
    let request = GenerateRequest {
        prompt: "a red book".into(),
        width: 32,
        height: 24,
        schedule: TimestepSchedule::Steps(5),
        batch_size: 2,
        ..GenerateRequest::default()
    };
    let mut previews = Vec::new();
    let mut hooks = Hooks {
        preview: Some(ella_core::Previews {
            every: 2,
            method: ella_core::PreviewMethod::Linear,
            sink: Box::new(|preview| previews.push(preview)),
        }),
        ..Hooks::default()
    };
    let images = pipeline.generate_with(&request, None, &mut hooks).unwrap();
    drop(hooks);
    let steps: Vec<_> = previews.iter().map(|p| (p.step, p.total)).collect();
    assert_eq!(steps, [(2, 5), (4, 5)]);
    for preview in &previews {
        assert_eq!(preview.images.len(), 2);
        for image in &preview.images {
            assert_eq!([image.width, image.height], [16, 12], "the latents' size");
            let first = &image.pixels[..3];
            assert!(image.pixels.chunks(3).any(|p| p != first), "a flat preview");
        }
    }
    assert_ne!(previews[0].images, previews[1].images);
    assert_eq!(images, pipeline.generate(&request).unwrap());
}

/// TAESD must match the VAE (SD's TAESD is 8×; the tiny VAE 2×), and what needs it is
/// refused without it.
#[test]
fn taesd_is_checked_and_required() {
    let device = Default::default();
    let paths = ModelPaths {
        taesd: Some(fixture("taesd")),
        ..paths()
    };
    let err = Pipeline::<burn::backend::Flex>::load(&paths, &device, DType::F32).unwrap_err();
    assert!(matches!(err, Error::IncompatibleModels(_)), "{err}");
    let pipeline = pipeline::<burn::backend::Flex>();
    let request = GenerateRequest {
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(2),
        ..GenerateRequest::new("a red book")
    };
    let tiny = GenerateRequest {
        vae_decode: VaeDecode::Tiny,
        ..request.clone()
    };
    let err = pipeline.generate(&tiny).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("TAESD")),
        "{err}"
    );
    let mut hooks = Hooks {
        preview: Some(Previews {
            every: 1,
            method: PreviewMethod::Tiny,
            sink: Box::new(|_| {}),
        }),
        ..Hooks::default()
    };
    let err = pipeline
        .generate_with(&request, None, &mut hooks)
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("TAESD")),
        "{err}"
    );
}

/// The outpainting helper makes the reference's canvas (edges replicated) and mask (the new
/// area and 4 pixels of overlap), and an inpainting U-Net refuses a request without a mask.
#[test]
fn outpainting_canvas_and_inpainting_requests() {
    let runs = read_runs("reference/pipelines_inpaint.json");
    let name = "dpm++2m_outpaint-ella";
    let reference = Reference::open(&format!("pipeline_{name}.safetensors"));
    let outpaint: ella_core::Outpaint = {
        let o = &runs[name]["outpaint"];
        let n = |k: &str| o[k].as_u64().unwrap() as usize;
        assert_eq!(o["fill"], "edge");
        ella_core::Outpaint {
            left: n("left"),
            top: n("top"),
            right: n("right"),
            bottom: n("bottom"),
            overlap: n("overlap"),
        }
    };
    let (canvas, mask) = outpaint.canvas(&reference.image("original_image")).unwrap();
    assert_eq!(canvas, reference.image("init_image"));
    assert_eq!(mask.pixels, reference.raw("mask").2);
    assert!(
        ella_core::Outpaint {
            right: 9000,
            ..outpaint
        }
        .canvas(&canvas)
        .is_err()
    );
    // The luma of a color mask, as PIL's convert("L").
    let color = Image {
        width: 2,
        height: 1,
        pixels: vec![255, 0, 0, 10, 200, 30],
    };
    assert_eq!(Mask::from_image(&color).pixels, [76, 124]);

    let device = Default::default();
    let paths = ModelPaths {
        sd: fixture("sd-inpaint"),
        controlnets: Vec::new(),
        sur_adapter: None,
        ..paths()
    };
    let nine = Pipeline::<burn::backend::Flex>::load(&paths, &device, DType::F32).unwrap();
    let err = nine
        .generate(&GenerateRequest {
            width: 32,
            height: 32,
            schedule: TimestepSchedule::Steps(2),
            ..GenerateRequest::new("a red book")
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("mask")),
        "{err}"
    );
}

#[test]
fn seeds_are_reproducible_and_per_sample() {
    let pipeline = pipeline::<burn::backend::Flex>();
    let request = GenerateRequest {
        prompt: "a red book".into(),
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(2),
        seed: 7,
        batch_size: 2,
        ..GenerateRequest::default()
    };
    let a = pipeline.generate(&request).unwrap();
    let b = pipeline.generate(&request).unwrap();
    assert_eq!(a, b, "the same seed gives the same images");
    assert_ne!(a[0], a[1], "samples in a batch get different seeds");
    // Sample 1 of seed 7 is sample 0 of seed 8.
    let single = pipeline
        .generate(&GenerateRequest {
            seed: 8,
            batch_size: 1,
            ..request.clone()
        })
        .unwrap();
    assert_eq!(single[0], a[1]);
}

#[test]
fn progress_cancel_and_unloaded_text_encoder() {
    let mut pipeline = pipeline::<burn::backend::Flex>();
    let request = GenerateRequest {
        prompt: "a red book".into(),
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(3),
        ..GenerateRequest::default()
    };
    let mut seen = Vec::new();
    let mut hooks = Hooks {
        progress: Some(Box::new(|step, total| seen.push((step, total)))),
        ..Hooks::default()
    };
    let with_t5 = pipeline.generate_with(&request, None, &mut hooks).unwrap();
    drop(hooks);
    assert_eq!(seen, vec![(1, 3), (2, 3), (3, 3)]);

    let cancel = AtomicBool::new(true);
    let mut hooks = Hooks {
        cancel: Some(&cancel),
        ..Hooks::default()
    };
    assert!(matches!(
        pipeline.generate_with(&request, None, &mut hooks),
        Err(Error::Cancelled)
    ));
    // Still usable after a cancel; and with T5 unloaded, from states encoded before.
    let states = pipeline
        .encode_prompts(
            "a red book",
            "",
            T5Text::default(),
            Conditioning::Ella,
            &Default::default(),
        )
        .unwrap();
    assert!(pipeline.unload_t5().is_some());
    assert!(matches!(
        pipeline.generate(&request),
        Err(Error::InvalidInput(_))
    ));
    let without_t5 = pipeline
        .generate_with(&request, Some(&states), &mut Hooks::default())
        .unwrap();
    assert_eq!(with_t5, without_t5);
}

#[test]
fn bad_requests_are_typed_errors() {
    let pipeline = pipeline::<burn::backend::Flex>();
    let gray = Image {
        width: 32,
        height: 32,
        pixels: vec![128; 32 * 32 * 3],
    };
    let ok = GenerateRequest {
        prompt: "x".into(),
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(1),
        ..GenerateRequest::default()
    };
    let bad = [
        GenerateRequest {
            width: 0,
            ..ok.clone()
        },
        GenerateRequest {
            height: 33,
            ..ok.clone()
        },
        GenerateRequest {
            width: 1 << 20,
            ..ok.clone()
        },
        GenerateRequest {
            schedule: TimestepSchedule::Steps(0),
            ..ok.clone()
        },
        GenerateRequest {
            guidance_scale: f32::NAN,
            ..ok.clone()
        },
        GenerateRequest {
            batch_size: 0,
            ..ok.clone()
        },
        GenerateRequest {
            t5: T5Text {
                mode: TokenMode::Fixed(0),
                ..Default::default()
            },
            ..ok.clone()
        },
        GenerateRequest {
            schedule: TimestepSchedule::Custom(vec![]),
            ..ok.clone()
        },
        GenerateRequest {
            init_latents: Some(TensorData::new(vec![0f32; 16], [1, 4, 2, 2])),
            ..ok.clone()
        },
        // Image-to-image: an init image of another size, a strength outside (0, 1], and one
        // too small to leave a step.
        GenerateRequest {
            init_image: Some(InitImage::new(Image {
                width: 16,
                height: 32,
                pixels: vec![0; 16 * 32 * 3],
            })),
            ..ok.clone()
        },
        GenerateRequest {
            init_image: Some(InitImage::new(Image {
                width: 32,
                height: 32,
                pixels: vec![0; 10],
            })),
            ..ok.clone()
        },
        GenerateRequest {
            init_image: Some(InitImage {
                image: gray.clone(),
                strength: 0.0,
                mask: None,
            }),
            ..ok.clone()
        },
        GenerateRequest {
            init_image: Some(InitImage {
                image: gray.clone(),
                strength: 1.5,
                mask: None,
            }),
            ..ok.clone()
        },
        GenerateRequest {
            init_image: Some(InitImage {
                image: gray.clone(),
                strength: f32::NAN,
                mask: None,
            }),
            ..ok.clone()
        },
        GenerateRequest {
            init_image: Some(InitImage {
                image: gray.clone(),
                strength: 0.5,
                mask: Some(Mask {
                    width: 8,
                    height: 8,
                    pixels: vec![255; 64],
                }),
            }),
            ..ok.clone()
        },
        GenerateRequest {
            init_image: Some(InitImage {
                image: gray.clone(),
                strength: 0.4,
                mask: None,
            }),
            schedule: TimestepSchedule::Steps(2),
            ..ok.clone()
        },
        // ControlNet: a control image of another size, a range that is not one.
        GenerateRequest {
            controls: vec![Control::new(Image {
                width: 64,
                height: 32,
                pixels: vec![0; 64 * 32 * 3],
            })],
            ..ok.clone()
        },
        GenerateRequest {
            controls: vec![Control {
                start: 0.8,
                end: 0.2,
                ..Control::new(gray.clone())
            }],
            ..ok.clone()
        },
        GenerateRequest {
            controls: vec![Control {
                scale: f32::INFINITY,
                ..Control::new(gray.clone())
            }],
            ..ok.clone()
        },
        GenerateRequest {
            controls: vec![Control::new(gray.clone()); 17],
            ..ok.clone()
        },
    ];
    for request in bad {
        let err = pipeline.generate(&request).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{request:?}: {err}");
    }
    assert!(pipeline.generate(&ok).is_ok());
    let controlled = GenerateRequest {
        controls: vec![Control::new(gray.clone())],
        ..ok.clone()
    };
    assert!(pipeline.generate(&controlled).is_ok());
    // A control naming a ControlNet the pipeline lacks.
    let third = GenerateRequest {
        controls: vec![Control {
            controlnet: 2,
            ..Control::new(gray.clone())
        }],
        ..ok.clone()
    };
    let err = pipeline.generate(&third).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("ControlNet 2") && m.contains("has 2")),
        "{err}"
    );
    let mut without = pipeline;
    without.set_controlnets(Vec::new()).unwrap();
    let err = without.generate(&controlled).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains("has 0")),
        "{err}"
    );
    let pipeline = without;
    let img2img = GenerateRequest {
        init_image: Some(InitImage {
            image: gray,
            strength: 0.5,
            mask: None,
        }),
        schedule: TimestepSchedule::Steps(2),
        ..ok
    };
    assert!(pipeline.generate(&img2img).is_ok());
}

#[test]
fn mismatched_models_are_refused() {
    let device = Default::default();
    type B = burn::backend::Flex;
    // A connector of another width than the U-Net's cross-attention.
    let config =
        ella_core::ConnectorConfig::from_file(&fixture("ella/config-proj-out.json")).unwrap();
    let connector = ella_core::Connector::<B>::load(
        fixture("ella/ella-proj-out.safetensors"),
        &config,
        &device,
        DType::F32,
    )
    .unwrap();
    let err = Pipeline::from_parts(PipelineParts {
        t5: None,
        connector: Some(connector),
        clip: None,
        unet: UNet2DConditionModel::load(fixture("sd/unet"), &device, DType::F32).unwrap(),
        vae: AutoencoderKL::load(fixture("sd/vae"), &device, DType::F32).unwrap(),
        scheduler_config: SchedulerConfig::from_file(&fixture(
            "sd/scheduler/scheduler_config.json",
        ))
        .unwrap(),
    })
    .unwrap_err();
    assert!(
        matches!(&err, Error::IncompatibleModels(m) if m.contains("cross-attention")),
        "{err}"
    );
}
