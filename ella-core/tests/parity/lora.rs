//! LoRAs in kohya's and in diffusers' PEFT format (`scripts/lora_fixtures.py`) applied to the
//! tiny U-Net and CLIP: one U-Net forward and one CLIP forward against the reference with the
//! same LoRAs (kohya's merge formula, diffusers' `fuse_lora` and `set_adapters`), swapped at
//! run time; an LCM-LoRA (kohya) and a TCD-LoRA (PEFT) over every module they train; and
//! every LoRA kind of docs/lora-kinds-reference.md (`scripts/lora_kinds_fixtures.py`: kohya
//! on LDM names, LoHa, LoKr, LoCon with Tucker cores, PEFT `alpha_pattern`), merged weight by
//! merged weight. Tolerances: as the U-Net (1e-3) and CLIP (1e-4) tests; merged weights
//! 1e-6 (the reference rounds an f64 sum once to f32; the formulas evaluated in f32 stay
//! within 4e-7 of it).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::{DType, Tensor, TensorData};
use ella_core::Backend;
use ella_core::{Checkpoint, Lora, ModelPaths, Pipeline};

use crate::common::{F32_TOLERANCE, Reference, assert_close, fixture, tiny_paths};

const UNET_TOLERANCE: f32 = 1e-3;
const WEIGHT_TOLERANCE: f32 = 1e-6;

fn paths() -> ModelPaths {
    ModelPaths {
        clip: true,
        ..tiny_paths()
    }
}

/// The U-Net on the U-Net test's input.
fn unet_out<B: Backend>(pipeline: &Pipeline<B>) -> Tensor<B, 4> {
    let device = Default::default();
    let inputs = Reference::open("sd.safetensors");
    let sample = Tensor::<B, 4>::from_data(inputs.data("unet.sample"), &device);
    let cond = Tensor::<B, 3>::from_data(inputs.data("unet.cond"), &device);
    pipeline
        .unet()
        .forward(sample, &[999.0, 250.0], cond)
        .unwrap()
}

/// The U-Net and CLIP outputs against `{run}.unet` and `{run}.clip` of `reference`.
fn check<B: Backend>(pipeline: &Pipeline<B>, reference: &Reference, run: &str) {
    let device = Default::default();
    let unet = unet_out(pipeline);
    let clip_inputs = Reference::open("clip.safetensors");
    let ids = clip_inputs.int_tensor::<B>("input_ids", &device);
    let clip = pipeline.clip().unwrap().model.forward(ids).unwrap();
    let (unet_key, clip_key) = (format!("{run}.unet"), format!("{run}.clip"));
    assert_close(unet, &reference.data(&unet_key), UNET_TOLERANCE, &unet_key);
    assert_close(clip, &reference.data(&clip_key), F32_TOLERANCE, &clip_key);
}

fn loras_match_the_reference<B: Backend>() {
    let mut pipeline = Pipeline::<B>::load(&paths(), &Default::default(), DType::F32).unwrap();
    let reference = Reference::open("lora.safetensors");
    let kohya = Lora::new(fixture("lora/kohya.safetensors"), 0.7);
    let peft = Lora::new(fixture("lora/peft.safetensors"), 1.3);

    let report = pipeline.set_loras(std::slice::from_ref(&kohya)).unwrap();
    assert_eq!(
        (report.updated, report.unmatched.len()),
        (8, 0),
        "{report:?}"
    );
    check(&pipeline, &reference, "kohya");
    // Swapped at run time: kohya's changes are undone first.
    pipeline.set_loras(std::slice::from_ref(&peft)).unwrap();
    check(&pipeline, &reference, "peft");
    let report = pipeline.set_loras(&[kohya, peft]).unwrap();
    assert_eq!(report.skipped_clip, 0);
    check(&pipeline, &reference, "both");
    // None: the original weights again.
    pipeline.set_loras(&[]).unwrap();
    let base = Reference::open("sd.safetensors");
    let device = Default::default();
    let sample = Tensor::<B, 4>::from_data(base.data("unet.sample"), &device);
    let cond = Tensor::<B, 3>::from_data(base.data("unet.cond"), &device);
    let out = pipeline
        .unet()
        .forward(sample, &[999.0, 250.0], cond)
        .unwrap();
    assert_close(out, &base.data("unet.out"), UNET_TOLERANCE, "no LoRA");
}

/// `ModelPaths::loras`: merged while loading.
fn loras_merged_at_load<B: Backend>() {
    let paths = ModelPaths {
        loras: vec![Lora::new(fixture("lora/kohya.safetensors"), 0.7)],
        ..paths()
    };
    let pipeline = Pipeline::<B>::load(&paths, &Default::default(), DType::F32).unwrap();
    check(&pipeline, &Reference::open("lora.safetensors"), "kohya");
}

/// An LCM-LoRA in kohya's format and a TCD-LoRA in PEFT's (`scripts/few_step_fixtures.py`),
/// over every module the distillation trains (attention, feed-forward, projections, resnet
/// and resampler convolutions, time projections), through the same LoRA path.
fn few_step_loras_match_the_reference<B: Backend>() {
    let mut pipeline = Pipeline::<B>::load(&paths(), &Default::default(), DType::F32).unwrap();
    let reference = Reference::open("lora_few_step.safetensors");
    for (file, run) in [
        ("lora/lcm-lora-kohya.safetensors", "lcm-kohya"),
        ("lora/tcd-lora-peft.safetensors", "tcd-peft"),
    ] {
        let report = pipeline
            .set_loras(&[Lora::new(fixture(file), 1.0)])
            .unwrap();
        assert!(
            report.updated > 40 && report.unmatched.is_empty(),
            "{run}: {report:?}"
        );
        let key = format!("{run}.unet");
        assert_close(
            unet_out(&pipeline),
            &reference.data(&key),
            UNET_TOLERANCE,
            &key,
        );
    }
}

/// Finds a parameter's value by its id.
struct FindParam {
    id: ParamId,
    value: Option<TensorData>,
}

impl<B: Backend> ModuleVisitor<B> for FindParam {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if param.id == self.id {
            // Burn's `Linear` keeps its weight as `[in, out]`, PyTorch's transposed; every 2-D
            // weight a model indexes is a linear one (convolution kernels are 4-D).
            let value = param.val();
            let value = if D == 2 { value.transpose() } else { value };
            self.value = Some(value.into_data());
        }
    }
}

/// The value of the parameter `id` of `model`, in PyTorch's layout.
fn param_value<B: Backend, M: Module<B>>(model: &M, id: ParamId) -> TensorData {
    let mut find = FindParam { id, value: None };
    model.visit(&mut find);
    find.value.expect("the weight's parameter is in the model")
}

/// Asserts that `actual` is `expected` within [`WEIGHT_TOLERANCE`].
fn assert_weight_close<B: Backend>(actual: TensorData, expected: &TensorData, what: &str) {
    assert_eq!(actual.shape, expected.shape, "{what}: shape");
    let flat = |data: &TensorData| {
        TensorData::new(
            data.iter::<f32>().collect::<Vec<f32>>(),
            [data.num_elements()],
        )
    };
    let actual = Tensor::<B, 1>::from_data(flat(&actual), &Default::default());
    assert_close(actual, &flat(expected), WEIGHT_TOLERANCE, what);
}

/// Each file of `scripts/lora_kinds_fixtures.py` alone at its scale (`{run}.scale`): every
/// weight it changes equals `{run}.unet.{weight}` / `{run}.text_encoder.{weight}`, it changes
/// no other (as many weights as the reference has), and the U-Net and CLIP outputs equal
/// `{run}.unet` and `{run}.clip`. One pipeline, the files swapped in turn.
fn lora_kinds_match_the_reference<B: Backend>() {
    let mut pipeline = Pipeline::<B>::load(&paths(), &Default::default(), DType::F32).unwrap();
    let reference = Reference::open("lora_kinds.safetensors");
    let names = Checkpoint::open(fixture("reference/lora_kinds.safetensors")).unwrap();
    for run in [
        "kohya-ldm",
        "loha",
        "lokr",
        "locon-tucker",
        "peft-alpha-pattern",
    ] {
        let scale = reference
            .data(&format!("{run}.scale"))
            .iter::<f32>()
            .next()
            .unwrap();
        let lora = Lora::new(fixture(&format!("lora/{run}.safetensors")), scale);
        let report = pipeline.set_loras(&[lora]).unwrap();
        let (unet_prefix, clip_prefix) = (format!("{run}.unet."), format!("{run}.text_encoder."));
        let mut merged = 0;
        for key in names.names().filter(|k| k.ends_with(".weight")) {
            let actual = if let Some(weight) = key.strip_prefix(&unet_prefix) {
                let unet = pipeline.unet();
                param_value(unet, unet.weights.weights[weight].param)
            } else if let Some(weight) = key.strip_prefix(&clip_prefix) {
                let clip = &pipeline.clip().unwrap().model;
                param_value(clip, clip.weights.weights[weight].param)
            } else {
                continue;
            };
            assert_weight_close::<B>(actual, &reference.data(key), key);
            merged += 1;
        }
        assert!(merged > 0, "{run}: no merged weight in the reference");
        assert_eq!(
            (report.updated, report.unmatched.len(), report.skipped_clip),
            (merged, 0, 0),
            "{run}: {report:?}"
        );
        check(&pipeline, &reference, run);
    }
}

backend_tests! {
    loras_match_the_reference => loras_match_the_reference,
    loras_merged_at_load => loras_merged_at_load,
    few_step_loras_match_the_reference => few_step_loras_match_the_reference,
    // Merged on the host; the merged models' kernels run in the tests above on every backend.
    #[cpu]
    lora_kinds_match_the_reference => lora_kinds_match_the_reference,
}
