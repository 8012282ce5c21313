//! What a careless or hostile host can send, as found by probing the library (issue #12):
//! absurd sizes in configs and requests are refused before anything is allocated, numbers
//! that go wrong are errors naming where, files changed on disk under a loaded model
//! cannot crash it, FIFOs do not block, shard indexes cannot reach outside their folder,
//! and a cancellation takes effect inside a step. Each test here was a crash, a hang or a
//! silent black image before.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use burn::backend::Flex as B;
use burn::tensor::DType;
use common::counting::{Counting, count};
use common::files::{Tensors, copied, edit_json, edited, read_tensors, write_tensors};
use common::{fixture, tiny_paths};
use ella_core::limits::{MAX_PROMPT_BYTES, MAX_T5_TOKENS};
use ella_core::{
    Checkpoint, Connector, ConnectorConfig, Error, GenerateRequest, Hooks, Image, Lora, ModelPaths,
    Pipeline, SchedulerKind, T5Text, T5TextEncoder, TimestepSchedule, TokenMode,
    UNet2DConditionModel, VaeDecode,
};
use safetensors::Dtype;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests here run one at a time: the allocation counters are process-wide.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `work` and asserts that it allocated at most `limit_mb` at its peak.
fn within_mb<T>(limit_mb: usize, what: &str, work: impl FnOnce() -> T) -> T {
    let (out, counted) = count(work);
    assert!(
        counted.peak_extra <= limit_mb << 20,
        "{what}: allocated {} MB at its peak, more than {limit_mb} MB",
        counted.peak_extra >> 20
    );
    out
}

fn small_request(prompt: &str) -> GenerateRequest {
    GenerateRequest {
        width: 32,
        height: 32,
        schedule: TimestepSchedule::Steps(2),
        ..GenerateRequest::new(prompt)
    }
}

fn load(paths: &ModelPaths) -> Pipeline<B> {
    Pipeline::load(paths, &Default::default(), DType::F32).unwrap()
}

fn invalid_input(err: Error, expected: &str, what: &str) {
    assert!(
        matches!(&err, Error::InvalidInput(m) if m.contains(expected)),
        "{what}: {err}"
    );
}

fn invalid_config(err: Error, expected: &str, what: &str) {
    assert!(
        matches!(&err, Error::InvalidConfig { reason, .. } if reason.contains(expected)),
        "{what}: {err}"
    );
}

/// A copy of the tiny model folder `name` with its `config.json` (or `file`) edited.
fn with_config(
    name: &str,
    file: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = copied(name);
    edit_json(&dir.path().join(file), edit);
    dir
}

/// Sizes that overflowed, divided by zero or allocated gigabytes before a tensor check
/// failed: each config is refused, naming the key, with next to nothing allocated.
#[test]
fn absurd_config_sizes_are_refused_before_anything_is_allocated() {
    let _alone = alone();
    let device = Default::default();
    let t5_cases: [(&str, serde_json::Value, &str); 5] = [
        ("num_layers", 1_000_000_000u64.into(), "num_layers"),
        ("num_heads", (1u64 << 40).into(), "num_heads"),
        ("d_model", 1_000_000_000_000u64.into(), "d_model"),
        ("layer_norm_epsilon", (-1.0).into(), "layer_norm_epsilon"),
        ("vocab_size", 0.into(), "vocab_size"),
    ];
    for (key, value, expected) in t5_cases {
        let dir = with_config("t5", "config.json", |c| c[key] = value);
        let err = within_mb(16, key, || {
            T5TextEncoder::<B>::load(dir.path(), &device).unwrap_err()
        });
        invalid_config(err, expected, key);
    }
    let connector_cases: [(&str, serde_json::Value); 4] = [
        ("layers", 1_000_000_000u64.into()),
        ("width", (usize::MAX / 2).into()),
        ("heads", 0.into()),
        ("num_latents", 1_000_000_000u64.into()),
    ];
    for (key, value) in connector_cases {
        let dir = with_config("ella", "config.json", |c| c[key] = value);
        let err = within_mb(16, key, || {
            ConnectorConfig::from_file(&dir.path().join("config.json")).unwrap_err()
        });
        invalid_config(err, key, key);
    }
    let unet_cases: [(&str, serde_json::Value); 4] = [
        ("layers_per_block", 1_000_000.into()),
        ("norm_num_groups", 0.into()),
        (
            "block_out_channels",
            serde_json::json!([1_000_000_000u64, 32]),
        ),
        ("attention_head_dim", 1_000_000.into()),
    ];
    for (key, value) in unet_cases {
        let dir = with_config("sd/unet", "config.json", |c| c[key] = value);
        let err = within_mb(16, key, || {
            UNet2DConditionModel::<B>::load(dir.path(), &device, DType::F32).unwrap_err()
        });
        assert!(matches!(err, Error::InvalidConfig { .. }), "{key}: {err}");
    }
    for (key, value) in [
        ("norm_num_groups", serde_json::json!(0)),
        ("block_out_channels", serde_json::json!(vec![8; 40])),
        ("layers_per_block", serde_json::json!(1_000_000_000u64)),
    ] {
        let dir = with_config("sd/vae", "config.json", |c| c[key] = value);
        let err = within_mb(16, key, || {
            ella_core::AutoencoderKL::<B>::load(dir.path(), &device, DType::F32).unwrap_err()
        });
        assert!(matches!(err, Error::InvalidConfig { .. }), "{key}: {err}");
    }
    for (key, value) in [
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ("layer_norm_eps", serde_json::json!(-1.0)),
    ] {
        let dir = with_config("sd/text_encoder", "config.json", |c| c[key] = value);
        let err = within_mb(16, key, || {
            ella_core::ClipTextModel::<B>::load(dir.path(), &device, DType::F32).unwrap_err()
        });
        invalid_config(err, key, key);
    }
    let dir = with_config("controlnet", "config.json", |c| {
        c["conditioning_embedding_out_channels"] = serde_json::json!(vec![16; 100])
    });
    let err = within_mb(16, "conditioning_embedding_out_channels", || {
        ella_core::ControlNetModel::<B>::load(dir.path(), &device, DType::F32).unwrap_err()
    });
    invalid_config(err, "conditioning_embedding_out_channels", "controlnet");
}

/// A scheduler config with 10⁹ or 10¹² training timesteps allocated gigabytes; one with
/// `beta_start` > `beta_end` made black images. Both are refused.
#[test]
fn absurd_scheduler_configs_are_refused() {
    let _alone = alone();
    for (key, value, expected) in [
        (
            "num_train_timesteps",
            serde_json::json!(1_000_000_000u64),
            "num_train_timesteps",
        ),
        (
            "num_train_timesteps",
            serde_json::json!(1_000_000_000_000u64),
            "num_train_timesteps",
        ),
        ("beta_start", serde_json::json!(0.5), "beta_start"),
        ("steps_offset", serde_json::json!(5000), "steps_offset"),
    ] {
        let sd = with_config("sd", "scheduler/scheduler_config.json", |c| c[key] = value);
        let paths = ModelPaths {
            sd: sd.path().to_path_buf(),
            ..tiny_paths()
        };
        let pipeline = load(&paths);
        for kind in SchedulerKind::ALL {
            let request = GenerateRequest {
                scheduler: kind,
                ..small_request("a red book")
            };
            let err = within_mb(16, key, || pipeline.generate(&request).unwrap_err());
            invalid_config(err, expected, &format!("{key} with {kind}"));
        }
    }
}

/// A 100,000-character prompt, a prompt repeated 4,000 times, a prompt over the byte
/// limit and fixed token lengths of 10⁶, 10⁹ and 2³² − 1 aborted the process (T5's
/// attention bias grows with the square of the length); each is an error now.
#[test]
fn long_prompts_and_token_lengths_are_refused() {
    let _alone = alone();
    let pipeline = load(&tiny_paths());
    let long = "a".repeat(100_000);
    let repeated = "a red book on a wooden table, ".repeat(4000);
    let huge = "b".repeat(MAX_PROMPT_BYTES + 1);
    for (what, prompt, expected) in [
        ("100,000 characters", &long, "T5 tokens"),
        ("repeated 4,000 times", &repeated, "T5 tokens"),
        ("over the byte limit", &huge, "bytes"),
    ] {
        let err = within_mb(256, what, || {
            pipeline
                .encode_prompt(prompt, TokenMode::Flexible)
                .unwrap_err()
        });
        invalid_input(err, expected, what);
        let err = pipeline.generate(&small_request(prompt)).unwrap_err();
        invalid_input(err, expected, what);
        let negative = GenerateRequest {
            negative_prompt: prompt.clone(),
            ..small_request("a red book")
        };
        invalid_input(pipeline.generate(&negative).unwrap_err(), expected, what);
    }
    for length in [
        MAX_T5_TOKENS + 1,
        1_000_000,
        1_000_000_000,
        u32::MAX as usize,
    ] {
        let what = format!("fixed length {length}");
        let err = within_mb(16, &what, || {
            pipeline
                .encode_prompt("a red book", TokenMode::Fixed(length))
                .unwrap_err()
        });
        invalid_input(err, "fixed token length", &what);
        let request = GenerateRequest {
            t5: T5Text {
                mode: TokenMode::Fixed(length),
                ..Default::default()
            },
            ..small_request("a red book")
        };
        invalid_input(
            pipeline.generate(&request).unwrap_err(),
            "fixed token length",
            &what,
        );
    }
    // The limit itself works.
    let states = pipeline
        .encode_prompt("a red book", TokenMode::Fixed(MAX_T5_TOKENS))
        .unwrap();
    assert_eq!(states.dims()[1], MAX_T5_TOKENS);
}

/// A request over the host's memory budget is refused with how much it needs, before any
/// work; T5's share is checked once the prompt's length is known.
#[test]
fn requests_over_the_memory_budget_are_refused() {
    let _alone = alone();
    let mut pipeline = load(&tiny_paths());
    let request = small_request("a red book");
    let needed = pipeline.working_memory(&request).unwrap().peak();
    pipeline.set_memory_budget(Some(needed - 1));
    let err = pipeline.generate(&request).unwrap_err();
    assert!(
        matches!(&err, Error::OutOfMemory { needed: n, budget, .. } if *n == needed && *budget == needed - 1),
        "{err}"
    );
    assert!(err.to_string().contains("MiB"), "{err}");
    pipeline.set_memory_budget(Some(needed));
    let t5_err = pipeline
        .encode_prompt(&"a red book ".repeat(300), TokenMode::Flexible)
        .unwrap_err();
    assert!(
        matches!(&t5_err, Error::OutOfMemory { what, .. } if what.contains("T5")),
        "{t5_err}"
    );
    pipeline.set_memory_budget(Some(needed.max(64 << 20)));
    pipeline.generate(&request).unwrap();
    // 4096² with guidance needs far more than any machine has free: refused, not aborted.
    pipeline.set_memory_budget(None);
    let huge = GenerateRequest {
        width: 4096,
        height: 4096,
        batch_size: 64,
        ..request
    };
    let err = within_mb(16, "4096² × 64", || pipeline.generate(&huge).unwrap_err());
    assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
}

/// Weight files full of NaN or infinity "succeeded" with all-black images: each model's
/// loader names the tensor now.
#[test]
fn weights_with_nan_or_infinity_are_refused_at_load() {
    let _alone = alone();
    let poison = |tensors: &mut Tensors, value: f32| {
        let (dtype, _, bytes) = tensors.values_mut().next().unwrap();
        assert_eq!(*dtype, Dtype::F32);
        bytes[..4].copy_from_slice(&value.to_le_bytes());
    };
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let (_dir, path) = edited("ella/ella.safetensors", |t| poison(t, value));
        let config = ConnectorConfig::from_file(&fixture("ella/config.json")).unwrap();
        let err =
            Connector::<B>::load(&path, &config, &Default::default(), DType::F32).unwrap_err();
        assert!(
            matches!(err, Error::NonFiniteWeights { count: 1, .. }),
            "{err}"
        );
    }
    for (folder, file) in [
        ("t5", "model.safetensors"),
        ("sd/unet", "diffusion_pytorch_model.safetensors"),
        ("sd/vae", "diffusion_pytorch_model.safetensors"),
    ] {
        let dir = copied(folder);
        let path = dir.path().join(file);
        let mut tensors = read_tensors(&path);
        for (dtype, _, bytes) in tensors.values_mut() {
            assert_eq!(*dtype, Dtype::F32);
            for value in bytes.chunks_exact_mut(4) {
                value.copy_from_slice(&f32::NAN.to_le_bytes());
            }
        }
        write_tensors(&path, &tensors);
        let device = Default::default();
        let err = match folder {
            "t5" => T5TextEncoder::<B>::load(dir.path(), &device).map(|_| ()),
            "sd/unet" => {
                UNet2DConditionModel::<B>::load(dir.path(), &device, DType::F32).map(|_| ())
            }
            _ => ella_core::AutoencoderKL::<B>::load(dir.path(), &device, DType::F32).map(|_| ()),
        }
        .unwrap_err();
        assert!(
            matches!(err, Error::NonFiniteWeights { .. }),
            "{folder}: {err}"
        );
    }
}

/// Guidance near f32's largest value turned the latents into infinities and the image
/// black; it is an error naming the step now. A LoRA scale near it is refused before any
/// weight changes.
#[test]
fn numbers_that_overflow_are_errors_not_black_images() {
    let _alone = alone();
    let mut pipeline = load(&tiny_paths());
    let request = GenerateRequest {
        guidance_scale: 3e38,
        ..small_request("a red book")
    };
    let err = pipeline.generate(&request).unwrap_err();
    assert!(
        matches!(&err, Error::NonFinite { what } if what.contains("after step 1 of 2")),
        "{err}"
    );
    let before = pipeline.generate(&small_request("a red book")).unwrap();
    let err = pipeline
        .set_loras(&[Lora::new(fixture("lora/kohya.safetensors"), 3e38)])
        .unwrap_err();
    invalid_input(err, "would overflow", "LoRA scale 3e38");
    assert_eq!(
        pipeline.generate(&small_request("a red book")).unwrap(),
        before
    );
}

/// 1000 DDIM steps (within the documented range) were refused as a broken model; diffusers
/// itself fails there (see `tests/scheduler.rs`). The request is refused as a bad argument
/// that says how many steps work, and 999 steps run.
#[test]
fn step_counts_the_schedule_cannot_make_are_bad_arguments() {
    let _alone = alone();
    let pipeline = load(&tiny_paths());
    for kind in [SchedulerKind::Ddim, SchedulerKind::DpmSolverMultistep] {
        let request = GenerateRequest {
            scheduler: kind,
            schedule: TimestepSchedule::Steps(1000),
            ..small_request("a red book")
        };
        invalid_input(
            pipeline.generate(&request).unwrap_err(),
            "at most 999 steps",
            kind.name(),
        );
    }
}

/// A U-Net weight file truncated (to half, to nothing) or rewritten in place after load
/// killed the host with SIGBUS at the next LoRA change (which re-reads the originals from a
/// memory map), or fed the new bytes in. The files are read, not mapped: the change is a
/// typed error, the model keeps its weights and goes on generating.
#[test]
fn weight_files_changed_on_disk_after_load_are_errors() {
    let _alone = alone();
    let sd = copied("sd");
    let paths = ModelPaths {
        sd: sd.path().to_path_buf(),
        ..tiny_paths()
    };
    let mut pipeline = load(&paths);
    let kohya = [Lora::new(fixture("lora/kohya.safetensors"), 1.0)];
    pipeline.set_loras(&kohya).unwrap();
    let with_lora = pipeline.generate(&small_request("a red book")).unwrap();
    let weights = sd.path().join("unet/diffusion_pytorch_model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap();
    for length in [original.len() as u64 / 2, 0] {
        file.set_len(length).unwrap();
        for loras in [&[][..], &kohya[..]] {
            let err = pipeline.set_loras(loras).unwrap_err();
            assert!(
                matches!(err, Error::Io { .. }),
                "truncated to {length}: {err}"
            );
            assert_eq!(
                pipeline.generate(&small_request("a red book")).unwrap(),
                with_lora,
                "the weights stayed as they were"
            );
        }
    }
    // Rewritten in place: the same length, other bytes after the header.
    let mut rewritten = original.clone();
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    for byte in &mut rewritten[header..] {
        *byte = byte.wrapping_add(1);
    }
    std::fs::write(&weights, &rewritten).unwrap();
    let err = pipeline.set_loras(&[]).unwrap_err();
    assert!(matches!(err, Error::FileChanged { .. }), "{err}");
    assert_eq!(
        pipeline.generate(&small_request("a red book")).unwrap(),
        with_lora
    );
    // Put back as it was: the originals read again, and the LoRA comes off.
    std::fs::write(&weights, &original).unwrap();
    pipeline.set_loras(&[]).unwrap();
    assert_ne!(
        pipeline.generate(&small_request("a red book")).unwrap(),
        with_lora
    );
}

/// A FIFO given as a weight, config, LoRA or image path blocked forever; it is refused at
/// once as not a regular file.
#[cfg(unix)]
#[test]
fn fifos_are_refused_without_blocking() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let name = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
    let not_regular = |err: Error, what: &str| {
        assert!(
            matches!(&err, Error::Io { source, .. } if source.to_string().contains("regular file")),
            "{what}: {err}"
        );
    };
    not_regular(Checkpoint::open(&fifo).unwrap_err(), "weights");
    not_regular(ConnectorConfig::from_file(&fifo).unwrap_err(), "config");
    not_regular(Image::load_png(&fifo).unwrap_err(), "PNG");
    let mut pipeline = load(&tiny_paths());
    not_regular(
        pipeline.set_loras(&[Lora::new(&fifo, 1.0)]).unwrap_err(),
        "LoRA",
    );
    let t5 = copied("t5");
    std::fs::remove_file(t5.path().join("tokenizer.json")).unwrap();
    std::os::unix::fs::symlink(&fifo, t5.path().join("tokenizer.json")).unwrap();
    not_regular(
        T5TextEncoder::<B>::load(t5.path(), &Default::default()).unwrap_err(),
        "tokenizer",
    );
}

/// A sharded index could name any file (`/etc/passwd`, `../x`); only files in its own
/// folder are opened now. A header naming a tensor twice (the last one silently won) is
/// refused.
#[test]
fn shard_paths_are_confined_and_duplicate_names_refused() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    for shard in [
        "/etc/passwd",
        "../model.safetensors",
        "a/../../b.safetensors",
        "",
    ] {
        let index = dir.path().join("model.safetensors.index.json");
        let json = serde_json::json!({"weight_map": {"shared.weight": shard}});
        std::fs::write(&index, json.to_string()).unwrap();
        let err = Checkpoint::open(&index).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidJson { reason, .. } if reason.contains("inside the index's folder")),
            "{shard}: {err}"
        );
    }
    let tensor = r#"{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
    let header = format!(r#"{{"w":{tensor},"w":{tensor}}}"#);
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend([0u8; 4]);
    let path = dir.path().join("twice.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let err = Checkpoint::open(&path).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidSafetensors { reason, .. } if reason.contains("named twice")),
        "{err}"
    );
}

/// `ella_context_cancel` took effect only between steps (102 s late at 256² on a CPU). The flag is
/// checked between the blocks of every model call: set inside a step (from the tensor hook
/// that sees the step's condition tokens, before the U-Net runs) or before the decode, the
/// call returns `Cancelled` without finishing the step or the image.
#[test]
fn cancellation_takes_effect_inside_a_step_and_the_decode() {
    let _alone = alone();
    let pipeline = load(&tiny_paths());
    for (trigger, decode) in [
        ("condition_cond_step0", VaeDecode::Whole),
        ("condition_uncond_step1", VaeDecode::Whole),
        ("final_latents", VaeDecode::Whole),
        ("final_latents", VaeDecode::Tiled),
        ("t5_hidden_uncond", VaeDecode::Whole),
    ] {
        let cancel = AtomicBool::new(false);
        let steps_done = AtomicUsize::new(0);
        let mut hooks = Hooks {
            cancel: Some(&cancel),
            progress: Some(Box::new(|done, _| steps_done.store(done, Ordering::SeqCst))),
            tensors: Some(Box::new(|name, _| {
                if name == trigger {
                    cancel.store(true, Ordering::SeqCst);
                }
            })),
            ..Hooks::default()
        };
        let request = GenerateRequest {
            vae_decode: decode,
            ..small_request("a red book")
        };
        let err = pipeline
            .generate_with(&request, None, &mut hooks)
            .unwrap_err();
        drop(hooks);
        assert!(matches!(err, Error::Cancelled), "{trigger}: {err}");
        let expected = match trigger {
            "condition_uncond_step1" => 1,
            "final_latents" => 2,
            _ => 0,
        };
        assert_eq!(steps_done.load(Ordering::SeqCst), expected, "{trigger}");
    }
    // The pipeline stays usable.
    pipeline.generate(&small_request("a red book")).unwrap();
}

/// Prompt states encoded in one token mode, used by a request of another (a prompt cache
/// with `max_tokens` 7), panicked while the states were dumped ("Can't concatenate tensors
/// with different shapes"); they are used as encoded.
#[test]
fn prompt_states_of_another_token_mode_are_used_as_encoded() {
    let _alone = alone();
    let pipeline = load(&tiny_paths());
    let request = small_request("a red book on a wooden table");
    let states = pipeline
        .encode_prompts(
            &request.prompt,
            "",
            T5Text::default(),
            request.conditioning,
            &request.clip,
        )
        .unwrap();
    let fixed = GenerateRequest {
        t5: T5Text {
            mode: TokenMode::Fixed(7),
            ..Default::default()
        },
        ..request.clone()
    };
    let dumped = Mutex::new(Vec::new());
    let mut hooks = Hooks {
        tensors: Some(Box::new(|name, _| {
            dumped.lock().unwrap().push(name.to_string())
        })),
        ..Hooks::default()
    };
    let images = pipeline
        .generate_with(&fixed, Some(&states), &mut hooks)
        .unwrap();
    drop(hooks);
    assert_eq!(
        images,
        pipeline
            .generate_with(&request, Some(&states), &mut Hooks::default())
            .unwrap()
    );
    assert!(
        dumped
            .lock()
            .unwrap()
            .contains(&"t5_hidden_cond".to_string())
    );
}

/// Paths that are folders or missing are named; nothing here may panic.
#[test]
fn odd_paths_are_errors() {
    let _alone = alone();
    let dir = tempfile::tempdir().unwrap();
    let folder: PathBuf = dir.path().to_path_buf();
    assert!(matches!(
        Checkpoint::open(folder.join("missing.safetensors")).unwrap_err(),
        Error::Io { .. }
    ));
    assert!(matches!(
        Image::load_png(&folder).unwrap_err(),
        Error::Io { .. }
    ));
    assert!(matches!(
        ConnectorConfig::from_file(Path::new(&folder)).unwrap_err(),
        Error::Io { .. }
    ));
}

/// Fuzzing found tokenizer files on which the `tokenizers` crate panics (a normalizer whose
/// `precompiled_charsmap` is null, here); the panic is a tokenizer error naming the file.
#[test]
fn tokenizer_files_the_tokenizers_crate_panics_on_are_errors() {
    let _alone = alone();
    let dir = copied("t5");
    let path = dir.path().join("tokenizer.json");
    edit_json(&path, |t| {
        t["normalizer"]["precompiled_charsmap"] = serde_json::Value::Null
    });
    let err = ella_core::T5Tokenizer::from_file(&path).unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer { path: p, reason } if p == &path && reason.contains("panicked")),
        "{err}"
    );
}
