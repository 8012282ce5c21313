//! Fuzzing every parser a host's files reach (`tests/common/fuzz.rs` has the engine): the
//! safetensors headers and data through `Checkpoint` and a model's loader, every
//! `config.json` kind through its model's loader, sharded indexes, both tokenizers' files,
//! PNG input, weighted prompts, LoRA and ControlNet files. Each input must load or be refused with an error:
//! a panic, an allocation peak over 512 MB or a hang fails. CI runs a bounded pass;
//! `scripts/fuzz.sh` runs a long one.

mod common;

use std::path::Path;
use std::sync::Mutex;

use burn::backend::Flex as B;
use burn::tensor::{DType, Tensor};
use common::counting::Counting;
use common::fixture;
use common::fuzz::{Fuzzer, mutate_bytes, mutate_json, mutate_safetensors};
use ella_core::scheduler::{Scheduler, SchedulerConfig, SchedulerKind, TimestepSchedule};
use ella_core::{
    AutoencoderKL, Checkpoint, ClipTextModel, ClipTokenizer, Connector, ConnectorConfig,
    ControlNetModel, GenerateRequest, Image, Lora, ModelPaths, Pipeline, T5TextEncoder,
    T5Tokenizer, TokenMode, UNet2DConditionModel, prompt_syntax,
};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn seeds(files: &[&str]) -> Vec<Vec<u8>> {
    files
        .iter()
        .map(|f| std::fs::read(fixture(f)).unwrap())
        .collect()
}

/// A copy of the fixture folder `folder` whose `file` each input replaces.
struct Folder {
    dir: tempfile::TempDir,
    file: &'static str,
}

impl Folder {
    fn new(folder: &str, file: &'static str) -> Self {
        Self {
            dir: common::files::copied(folder),
            file,
        }
    }

    /// Writes `bytes` as the file and returns the folder.
    fn with(&self, bytes: &[u8]) -> &Path {
        std::fs::write(self.dir.path().join(self.file), bytes).unwrap();
        self.dir.path()
    }
}

#[test]
fn safetensors_files() {
    let seeds = seeds(&[
        "ella/ella.safetensors",
        "ella/ella-f16.safetensors",
        "lora/kohya.safetensors",
        "lora/peft.safetensors",
        "t5/model-mixed-f16.safetensors",
        "sd/vae/diffusion_pytorch_model.safetensors",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    Fuzzer::new("safetensors").run(&seeds, mutate_safetensors, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let Ok(checkpoint) = Checkpoint::open(&path) else {
            return false;
        };
        let names: Vec<String> = checkpoint.names().map(str::to_string).collect();
        names.iter().all(|name| checkpoint.data(name).is_ok())
    });
}

#[test]
fn connector_weights() {
    let config = ConnectorConfig::from_file(&fixture("ella/config.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ella.safetensors");
    let seeds = seeds(&["ella/ella.safetensors", "ella/ella-f16.safetensors"]);
    Fuzzer::new("connector-weights").run(&seeds, mutate_safetensors, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        Connector::<B>::load(&path, &config, &Default::default(), DType::F32).is_ok()
    });
}

#[test]
fn t5_config_and_tokenizer() {
    let folder = Folder::new("t5", "config.json");
    let device = Default::default();
    Fuzzer::new("t5-config").run(&seeds(&["t5/config.json"]), mutate_json, |bytes| {
        T5TextEncoder::<B>::load(folder.with(bytes), &device)
            .and_then(|t5| t5.encode("a red book", TokenMode::Flexible))
            .is_ok()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    Fuzzer::new("t5-tokenizer").run(&seeds(&["t5/tokenizer.json"]), mutate_json, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        T5Tokenizer::from_file(&path)
            .and_then(|t| {
                t.encode(&["a red book", ""], TokenMode::Flexible)?;
                t.encode(&["a red book on a wooden table"], TokenMode::Fixed(8))
            })
            .is_ok()
    });
}

#[test]
fn connector_config() {
    let weights = fixture("ella/ella.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let seeds = seeds(&["ella/config.json", "ella/config-proj-out.json"]);
    Fuzzer::new("connector-config").run(&seeds, mutate_json, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        ConnectorConfig::from_file(&path)
            .and_then(|config| {
                Connector::<B>::load(&weights, &config, &Default::default(), DType::F32)
            })
            .is_ok()
    });
}

#[test]
fn unet_vae_clip_and_controlnet_configs() {
    let device = Default::default();
    let unet = Folder::new("sd/unet", "config.json");
    Fuzzer::new("unet-config").run(&seeds(&["sd/unet/config.json"]), mutate_json, |bytes| {
        UNet2DConditionModel::<B>::load(unet.with(bytes), &device, DType::F32).is_ok()
    });
    let vae = Folder::new("sd/vae", "config.json");
    Fuzzer::new("vae-config").run(&seeds(&["sd/vae/config.json"]), mutate_json, |bytes| {
        AutoencoderKL::<B>::load(vae.with(bytes), &device, DType::F32).is_ok()
    });
    let clip = Folder::new("sd/text_encoder", "config.json");
    let seeds_clip = seeds(&["sd/text_encoder/config.json"]);
    Fuzzer::new("clip-config").run(&seeds_clip, mutate_json, |bytes| {
        ClipTextModel::<B>::load(clip.with(bytes), &device, DType::F32).is_ok()
    });
    let controlnet = Folder::new("controlnet", "config.json");
    let seeds_control = seeds(&["controlnet/config.json"]);
    Fuzzer::new("controlnet-config").run(&seeds_control, mutate_json, |bytes| {
        ControlNetModel::<B>::load(controlnet.with(bytes), &device, DType::F32).is_ok()
    });
}

#[test]
fn scheduler_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler_config.json");
    let seeds = seeds(&["sd/scheduler/scheduler_config.json"]);
    let device = Default::default();
    Fuzzer::new("scheduler-config").run(&seeds, mutate_json, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let Ok(config) = SchedulerConfig::from_file(&path) else {
            return false;
        };
        let mut accepted = false;
        for kind in SchedulerKind::ALL {
            for steps in [1, 4, 25, 1000] {
                let schedule = TimestepSchedule::Steps(steps);
                let Ok(mut scheduler) = Scheduler::<B>::new(kind, &config, &schedule) else {
                    continue;
                };
                accepted = true;
                // Every step of the schedule runs (on a tiny sample).
                let mut x = Tensor::<B, 4>::ones([1, 1, 2, 2], &device);
                for i in 0..scheduler.timesteps().len().min(30) {
                    let input = scheduler.scale_model_input(x.clone(), i);
                    let noise = scheduler.draws_noise(i).then(|| x.clone() * 0.1);
                    x = scheduler.step(input * 0.5, i, x, noise);
                }
            }
        }
        accepted
    });
}

#[test]
fn shard_indexes() {
    let folder = Folder::new("t5-sharded", "model.safetensors.index.json");
    let index = "t5-sharded/model.safetensors.index.json";
    Fuzzer::new("shard-index").run(&seeds(&[index]), mutate_json, |bytes| {
        Checkpoint::open(folder.with(bytes).join("model.safetensors.index.json")).is_ok()
    });
}

/// CLIP's `tokenizer.json`, and SD1.5's `vocab.json` + `merges.txt` pair (read when the
/// folder has no `tokenizer.json`).
#[test]
fn clip_tokenizer_files() {
    let json = Folder::new("sd/tokenizer", "tokenizer.json");
    let seeds_json = seeds(&["sd/tokenizer/tokenizer.json"]);
    Fuzzer::new("clip-tokenizer").run(&seeds_json, mutate_json, |bytes| {
        ClipTokenizer::from_file(json.with(bytes))
            .and_then(|t| t.encode(&["a red book", ""]))
            .is_ok()
    });
    let vocab = Folder::new("sd/tokenizer", "vocab.json");
    let merges = Folder::new("sd/tokenizer", "merges.txt");
    for folder in [&vocab, &merges] {
        std::fs::remove_file(folder.dir.path().join("tokenizer.json")).unwrap();
    }
    Fuzzer::new("clip-vocab").run(&seeds(&["sd/tokenizer/vocab.json"]), mutate_json, |bytes| {
        ClipTokenizer::from_file(vocab.with(bytes))
            .and_then(|t| t.encode(&["a red book", ""]))
            .is_ok()
    });
    let merges = Folder::new("sd/tokenizer", "merges.txt");
    Fuzzer::new("clip-merges").run(
        &seeds(&["sd/tokenizer/merges.txt"]),
        mutate_bytes,
        |bytes| {
            ClipTokenizer::from_file(merges.with(bytes))
                .and_then(|t| t.encode(&["a red book"]))
                .is_ok()
        },
    );
}

/// Prompts with A1111's weight syntax (the reference cases, mutated as bytes, read as UTF-8
/// with replacement): parsed, cut into CLIP chunks and stripped for T5, or refused.
#[test]
fn weighted_prompts() {
    let text = std::fs::read_to_string(fixture("reference/prompt_weighting.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let seeds: Vec<Vec<u8>> = json["cases"]
        .as_object()
        .unwrap()
        .values()
        .map(|case| case["prompt"].as_str().unwrap().as_bytes().to_vec())
        .collect();
    let tokenizer = ClipTokenizer::from_file(fixture("sd/tokenizer")).unwrap();
    Fuzzer::new("weighted-prompts").run(&seeds, mutate_bytes, |bytes| {
        let prompt = String::from_utf8_lossy(bytes);
        prompt_syntax::strip_for_t5(&prompt);
        prompt_syntax::parse(&prompt)
            .and_then(|parsed| tokenizer.chunks(&parsed))
            .is_ok()
    });
}

/// PNGs of every color type and depth; mutated as bytes, or with IHDR's width and height
/// set to interesting values and its CRC fixed (so the decoder reads the sizes).
#[test]
fn png_images() {
    let dir = tempfile::tempdir().unwrap();
    let mut seeds = Vec::new();
    for (i, (color, depth, channels)) in [
        (png::ColorType::Rgb, png::BitDepth::Eight, 3),
        (png::ColorType::Rgba, png::BitDepth::Eight, 4),
        (png::ColorType::Grayscale, png::BitDepth::Eight, 1),
        (png::ColorType::Rgb, png::BitDepth::Sixteen, 6),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("seed{i}.png"));
        let file = std::fs::File::create(&path).unwrap();
        let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 8, 6);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let data: Vec<u8> = (0..8 * 6 * channels).map(|v| (v * 7) as u8).collect();
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&data).unwrap();
        writer.finish().unwrap();
        seeds.push(std::fs::read(&path).unwrap());
    }
    let mutate = |u: &mut arbitrary::Unstructured, input: &[u8]| {
        if input.len() < 33 || !u.ratio(1, 2).unwrap_or(false) {
            return mutate_bytes(u, input);
        }
        // IHDR: length (8..12), "IHDR" (12..16), width, height (16..24), …, CRC (29..33).
        let mut out = input.to_vec();
        for at in [16, 20] {
            if u.ratio(1, 2).unwrap_or(false) {
                let value: u32 = *u
                    .choose(&[0, 1, 4097, 65535, 1 << 20, u32::MAX])
                    .unwrap_or(&0);
                out[at..at + 4].copy_from_slice(&value.to_be_bytes());
            }
        }
        let crc = crc32fast::hash(&out[12..29]);
        out[29..33].copy_from_slice(&crc.to_be_bytes());
        out
    };
    let path = dir.path().join("input.png");
    Fuzzer::new("png").run(&seeds, mutate, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        Image::load_png(&path).is_ok()
    });
}

/// LoRA files set on a loaded pipeline (CLIP too, so that text-encoder entries apply); the
/// pipeline still generates afterwards.
#[test]
fn lora_files() {
    let paths = ModelPaths {
        clip: true,
        ..common::tiny_paths()
    };
    let pipeline =
        Mutex::new(Pipeline::<B>::load(&paths, &Default::default(), DType::F32).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora.safetensors");
    let seeds = seeds(&[
        "lora/kohya.safetensors",
        "lora/peft.safetensors",
        "lora/kohya-ldm.safetensors",
        "lora/loha.safetensors",
        "lora/lokr.safetensors",
        "lora/locon-tucker.safetensors",
        "lora/peft-alpha-pattern.safetensors",
    ]);
    Fuzzer::new("lora").run(&seeds, mutate_safetensors, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let mut pipeline = pipeline.lock().unwrap();
        pipeline.set_loras(&[Lora::new(&path, 0.7)]).is_ok()
    });
    let request = GenerateRequest {
        width: 16,
        height: 16,
        schedule: TimestepSchedule::Steps(1),
        ..GenerateRequest::new("a red book")
    };
    pipeline.lock().unwrap().generate(&request).unwrap();
}

#[test]
fn controlnet_weights() {
    let folder = Folder::new("controlnet", "diffusion_pytorch_model.safetensors");
    let seeds = seeds(&["controlnet/diffusion_pytorch_model.safetensors"]);
    let device = Default::default();
    Fuzzer::new("controlnet-weights").run(&seeds, mutate_safetensors, |bytes| {
        ControlNetModel::<B>::load(folder.with(bytes), &device, DType::F32).is_ok()
    });
}
