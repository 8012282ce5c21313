//! Prompt → image with ELLA on SD1.5, on the CPU (default) or a GPU (`--backend wgpu|cuda`
//! in builds with those features).
//!
//! With the tiny test models in the repository (no download):
//!     cargo run --example generate -- --t5 ella-core/tests/fixtures/t5 \
//!         --ella ella-core/tests/fixtures/ella/ella.safetensors \
//!         --ella-config ella-core/tests/fixtures/ella/config.json \
//!         --sd ella-core/tests/fixtures/sd --width 64 --height 64 --steps 8 --out tiny.png
//! A community single-file checkpoint (LDM layout), ELLA's tokens followed by CLIP's:
//!     cargo run --release --example generate -- --checkpoint dreamshaper_8.safetensors \
//!         --sd-config stable-diffusion-v1-5 --clip-concat --prompt "..."
//! With the official weights (docs/models.md), found in the Hugging Face cache or downloaded
//! when a weight flag is left out:
//!     cargo run --release --example generate -- --prompt "a red book on a wooden table" --out book.png

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use clap::{Parser, ValueEnum};
use ella_core::Backend;
use ella_core::burn::tensor::{DType, TensorData};
use ella_core::t5::TokenMode;
use ella_core::{
    Checkpoint, ClipText, Conditioning, Control, EllaPaths, GenerateRequest, Hooks, Image,
    InitImage, Lora, Mask, ModelPaths, Outpaint, Pipeline, Precision, Preview, PreviewMethod,
    Previews, PromptSyntax, SchedulerKind, Seamless, SurMode, SurOptions, T5Precision, T5Text,
    Threads, TimestepSchedule, VaeDecode,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Flexible,
    Fixed,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BackendName {
    Cpu,
    Wgpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum)]
enum Float {
    /// F32 on the CPU, F16 (the official setting) on GPUs.
    Auto,
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum T5Float {
    /// The same as --precision, the whole encoder (the official code's F16 on GPUs).
    Auto,
    F32,
    F16,
    /// F16 with the feed-forward output projections in F32.
    F16WoF32,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum Decode {
    Whole,
    Sliced,
    Tiled,
    /// TAESD (--taesd): fast, softer.
    Tiny,
}

/// How a live preview turns latents into pixels.
#[derive(Clone, Copy, ValueEnum)]
enum PreviewKind {
    /// A linear latent→RGB projection, 1/8 of the image's size, nearly free.
    Linear,
    /// TAESD (--taesd), the image's size.
    Tiny,
}

/// How a text encoder reads A1111's weight syntax: `(word:1.3)`, `(word)`, `[word]`, `BREAK`.
#[derive(Clone, Copy, ValueEnum)]
enum Syntax {
    /// CLIP: weights applied, long prompts in 75-token chunks; T5: the syntax removed.
    A1111,
    /// The text as written (CLIP truncated to 77 tokens).
    Literal,
}

impl Syntax {
    fn to_core(self) -> PromptSyntax {
        match self {
            Syntax::A1111 => PromptSyntax::A1111,
            Syntax::Literal => PromptSyntax::Literal,
        }
    }
}

/// The axes a seamless texture wraps around.
#[derive(Clone, Copy, ValueEnum)]
enum Tile {
    X,
    Y,
    Xy,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Cond {
    /// ELLA's tokens (T5 + connector), the official way.
    Ella,
    /// ELLA's tokens followed by CLIP's (ComfyUI-ELLA's concat mode; keeps LoRA trigger words).
    EllaClip,
    /// SD1.5's own CLIP conditioning (plain SD; loads no T5).
    Clip,
    /// CLIP rewritten by a SUR-adapter (--sur-adapter).
    ClipSur,
}

#[derive(Clone, Copy, ValueEnum)]
enum SurModeName {
    /// As the official pipeline (negative and positive prompt attend to each other).
    Faithful,
    /// As the adapter was trained (each prompt alone).
    PerToken,
}

#[derive(Clone, Copy, ValueEnum)]
enum Timesteps {
    /// SD1.5's 10-step Align Your Steps schedule (overrides --steps).
    Ays,
}

#[derive(Parser)]
#[command(
    about = "Generate an image with ELLA (T5 + timestep-aware connector) on Stable Diffusion 1.5"
)]
struct Args {
    #[arg(
        long,
        default_value = "a red book on a wooden table, morning light, photograph"
    )]
    prompt: String,
    #[arg(long, default_value = "")]
    negative: String,
    /// CLIP's own prompt (CLIP and ELLA + CLIP conditioning): with ELLA + CLIP, tags, names
    /// and LoRA trigger words for CLIP while T5 reads --prompt (default: --prompt).
    #[arg(long)]
    clip_prompt: Option<String>,
    /// CLIP's own negative prompt (default: --negative).
    #[arg(long)]
    clip_negative: Option<String>,
    /// CLIP layers skipped from the end (diffusers' clip_skip; A1111's "Clip skip: 2" and
    /// ComfyUI's "CLIP Set Last Layer: -2" are 1).
    #[arg(long, default_value_t = 0)]
    clip_skip: usize,
    /// How CLIP reads `(word:1.3)`, `[word]`, `BREAK` and prompts over 75 tokens.
    #[arg(long, value_enum, default_value = "a1111")]
    clip_syntax: Syntax,
    /// How T5 reads them: a1111 removes the syntax (ComfyUI-ELLA), literal keeps the text.
    #[arg(long, value_enum, default_value = "a1111")]
    t5_syntax: Syntax,
    #[arg(long, default_value_t = 25)]
    steps: usize,
    #[arg(long, default_value_t = 10.0)]
    guidance: f32,
    #[arg(long, default_value_t = 1000)]
    seed: u64,
    /// Default 512, or the init image's width.
    #[arg(long)]
    width: Option<usize>,
    /// Default 512, or the init image's height.
    #[arg(long)]
    height: Option<usize>,
    /// Image-to-image: start from this PNG instead of pure noise.
    #[arg(long)]
    init_image: Option<PathBuf>,
    /// With --init-image: the part of the schedule to run, in (0, 1] (1 ignores the image).
    #[arg(long, default_value_t = 0.8, requires = "init_image")]
    strength: f32,
    /// Inpainting: with --init-image, repaint where this PNG mask is white (≥ 128), keep where
    /// it is black. Any SD1.5 model, or an inpainting model (9 input channels).
    #[arg(long, requires = "init_image", conflicts_with = "outpaint")]
    mask: Option<PathBuf>,
    /// Outpainting: extend --init-image by LEFT,TOP,RIGHT,BOTTOM pixels (edges repeated) and
    /// inpaint the new area (and --outpaint-overlap pixels of the image next to it).
    #[arg(long, requires = "init_image", value_parser = parse_outpaint)]
    outpaint: Option<[usize; 4]>,
    #[arg(long, default_value_t = 8, requires = "outpaint")]
    outpaint_overlap: usize,
    /// Images per prompt (sample i uses seed + i).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// ddim, euler, dpm++2m, dpm++2m-karras, or for LCM/TCD-LoRAs at 2–8 steps lcm or tcd;
    /// other settings come from the SD folder's scheduler/scheduler_config.json.
    #[arg(long, default_value = "dpm++2m")]
    scheduler: String,
    /// TCD's eta ("gamma") in [0, 1]: how much of each step is re-noised (0: deterministic).
    #[arg(long, default_value_t = 0.3)]
    eta: f32,
    #[arg(long, value_enum)]
    timesteps: Option<Timesteps>,
    #[arg(long, value_enum, default_value = "flexible")]
    token_mode: Mode,
    /// Token length in fixed mode.
    #[arg(long, default_value_t = 128)]
    max_length: usize,
    /// ELLA connector file (default: QQGYLab/ELLA's ella-sd1.5-tsc-t5xl.safetensors).
    #[arg(long)]
    ella: Option<PathBuf>,
    /// JSON with the connector's sizes (for connectors other than the official one).
    #[arg(long)]
    ella_config: Option<PathBuf>,
    /// T5 encoder folder (default: QQGYLab/ELLA's models--google--flan-t5-xl--text_encoder).
    #[arg(long)]
    t5: Option<PathBuf>,
    /// SD1.5 folder in the diffusers layout (default: stable-diffusion-v1-5/stable-diffusion-v1-5).
    #[arg(long, conflicts_with = "checkpoint")]
    sd: Option<PathBuf>,
    /// SD1.5 single-file checkpoint (.safetensors in the LDM layout, as from CivitAI)
    /// instead of --sd; SD2.x and SDXL files are refused.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// With --checkpoint: a diffusers-layout folder with its configs and CLIP tokenizer
    /// (default: SD1.5's built-in configs; CLIP then needs this folder).
    #[arg(long, requires = "checkpoint")]
    sd_config: Option<PathBuf>,
    /// A VAE replacing SD's: a diffusers vae/ folder or a .safetensors file (diffusers or
    /// LDM layout, e.g. vae-ft-mse-840000-ema-pruned.safetensors).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A LoRA to merge, as FILE or FILE:SCALE (default scale 1; a path may contain `:`, as
    /// `C:\loras\x.safetensors`); repeat for several. kohya / A1111 and diffusers (PEFT) files.
    #[arg(long, value_parser = parse_lora)]
    lora: Vec<Lora>,
    /// A textual-inversion embedding (.safetensors: A1111's, e.g. EasyNegative, named by its
    /// file name; diffusers' learned_embeds, by its token), usable in CLIP's prompts and
    /// negative prompts; repeat for several. Needs CLIP (--conditioning clip or ella-clip).
    #[arg(long)]
    embedding: Vec<PathBuf>,
    /// A ControlNet: a diffusers folder, its .safetensors with config.json beside it, or a
    /// single file in the original layout as ComfyUI and A1111 use (control_v11p_sd15_*).
    /// Repeat for several at once: the i-th --control-image (and --control-scale, -start,
    /// -end when given) goes with the i-th --controlnet.
    #[arg(long, requires = "control_image")]
    controlnet: Vec<PathBuf>,
    /// A ControlNet's conditioning image (PNG of the output size: edges, depth, …).
    #[arg(long, requires = "controlnet")]
    control_image: Vec<PathBuf>,
    /// A ControlNet's conditioning scale (default 1).
    #[arg(long)]
    control_scale: Vec<f32>,
    /// The fraction of the steps where a ControlNet starts and stops acting (default 0, 1).
    #[arg(long)]
    control_start: Vec<f32>,
    #[arg(long)]
    control_end: Vec<f32>,
    /// What the U-Net is conditioned on (default: ella, or clip-sur with --sur-adapter).
    #[arg(long, value_enum)]
    conditioning: Option<Cond>,
    /// A SUR-adapter .safetensors (scripts/sur_adapter_to_safetensors.py converts the official .pt).
    #[arg(long)]
    sur_adapter: Option<PathBuf>,
    /// TAESD, a tiny autoencoder (a diffusers AutoencoderTiny folder, e.g. madebyollin/taesd),
    /// for --preview tiny and --vae-decode tiny.
    #[arg(long)]
    taesd: Option<PathBuf>,
    /// The SUR-adapter weight in [0, 1].
    #[arg(long, default_value_t = 0.1)]
    sur_weight: f32,
    #[arg(long, value_enum, default_value = "faithful")]
    sur_mode: SurModeName,
    /// Shorthand for --conditioning ella-clip.
    #[arg(long, conflicts_with = "conditioning")]
    clip_concat: bool,
    #[arg(long, default_value = "image.png")]
    out: PathBuf,
    /// safetensors file with a tensor `latents`: unit-variance initial noise [batch, 4, h/8, w/8].
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Write the intermediate tensors here as safetensors, to compare with a PyTorch run.
    #[arg(long)]
    dump_dir: Option<PathBuf>,
    /// Live previews: after every N-th step, the image the run is heading to, saved in
    /// --preview-dir as step-NNN.png.
    #[arg(long, requires = "preview_dir")]
    preview_every: Option<usize>,
    #[arg(long, requires = "preview_every")]
    preview_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "linear")]
    preview: PreviewKind,
    /// Never download: use the paths given or the Hugging Face cache only.
    #[arg(long)]
    offline: bool,
    /// cpu, or wgpu / cuda in builds with those cargo features.
    #[arg(long, value_enum, default_value = "cpu")]
    backend: BackendName,
    /// Float type of the connector, U-Net and VAE.
    #[arg(long, value_enum, default_value = "auto")]
    precision: Float,
    #[arg(long, value_enum, default_value = "auto")]
    t5_precision: T5Float,
    /// VAE decoding: sliced (one image at a time), tiled (bounded memory for big images) or
    /// tiny (TAESD, --taesd).
    #[arg(long, value_enum, default_value = "whole")]
    vae_decode: Decode,
    /// A seamless texture: the image wraps around along x, y or both (copies of it tile).
    #[arg(long, value_enum)]
    tile: Option<Tile>,
    /// Encode the prompts, free T5, then sample (less memory while sampling).
    #[arg(long)]
    free_t5: bool,
    /// Refuse requests that need more working memory than this many MiB (default: the
    /// memory the machine has free).
    #[arg(long)]
    memory_budget_mib: Option<u64>,
    /// GPU backends: keep compiled kernels and autotune results in this directory, so the
    /// next run starts without compiling (default: ~/.cache/ella/kernels or the platform's).
    #[arg(long)]
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
    kernel_cache: Option<PathBuf>,
    /// CPU backend: run on this many threads (default: every core); leave the others to
    /// the rest of the machine.
    #[arg(long)]
    threads: Option<usize>,
}

const ELLA_REPO: &str = "QQGYLab/ELLA";
const SD_REPO: &str = "stable-diffusion-v1-5/stable-diffusion-v1-5";
/// The connector: (file, size).
const ELLA_FILE: (&str, &str) = ("ella-sd1.5-tsc-t5xl.safetensors", "134 MB");
/// The T5 encoder's folder in the ELLA repository.
const T5_DIR: &str = "models--google--flan-t5-xl--text_encoder";
const T5_FILES: [(&str, &str); 3] = [
    ("config.json", "1 kB"),
    ("tokenizer.json", "2.4 MB"),
    ("model.safetensors", "2.95 GB"),
];
const SD_FILES: [(&str, &str); 5] = [
    ("unet/config.json", "1 kB"),
    ("unet/diffusion_pytorch_model.safetensors", "3.44 GB"),
    ("vae/config.json", "1 kB"),
    ("vae/diffusion_pytorch_model.safetensors", "335 MB"),
    ("scheduler/scheduler_config.json", "1 kB"),
];
/// What CLIP conditioning needs besides SD_FILES.
const SD_CLIP_FILES: [(&str, &str); 4] = [
    ("text_encoder/config.json", "1 kB"),
    ("text_encoder/model.safetensors", "492 MB"),
    ("tokenizer/vocab.json", "1.1 MB"),
    ("tokenizer/merges.txt", "525 kB"),
];

/// One file of the official weights that a run needs because no path was given for it.
struct Needed {
    repo: &'static str,
    file: String,
    size: &'static str,
    /// The flag that takes it (or its folder) instead.
    flag: &'static str,
}

impl Needed {
    fn list(
        repo: &'static str,
        folder: &str,
        files: &[(&str, &'static str)],
        flag: &'static str,
    ) -> Vec<Self> {
        files
            .iter()
            .map(|&(file, size)| Self {
                repo,
                file: match folder {
                    "" => file.to_string(),
                    folder => format!("{folder}/{file}"),
                },
                size,
                flag,
            })
            .collect()
    }
}

/// `FILE` or `FILE:SCALE`: what follows the last `:` is the scale when it is a number, so a
/// path with `:` in it (a Windows drive) stays whole.
fn parse_lora(text: &str) -> Result<Lora, String> {
    match text.rsplit_once(':') {
        Some((path, scale)) if !path.is_empty() => match scale.parse::<f32>() {
            Ok(scale) if scale.is_finite() => Ok(Lora::new(path, scale)),
            Ok(_) => Err(format!("`{scale}` in `{text}` is not a finite LoRA scale")),
            Err(_) => Ok(Lora::new(text, 1.0)),
        },
        _ => Ok(Lora::new(text, 1.0)),
    }
}

/// Fails now, not after a long generation, when `path` cannot be written: creates it (and
/// removes it again if it did not exist before).
fn check_writable(path: &Path) -> Result<(), String> {
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if !existed {
        std::fs::remove_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The --controlnet groups: the i-th image, scale, start and end with the i-th ControlNet.
fn controls(args: &Args) -> Result<Vec<Control>, String> {
    let n = args.controlnet.len();
    let per_controlnet = |flag: &str, count: usize, optional: bool| match count {
        0 if optional => Ok(()),
        _ if count == n => Ok(()),
        _ => Err(format!(
            "{count} --{flag} for {n} --controlnet: give one per ControlNet{}",
            if optional { " or none" } else { "" }
        )),
    };
    per_controlnet("control-image", args.control_image.len(), false)?;
    per_controlnet("control-scale", args.control_scale.len(), true)?;
    per_controlnet("control-start", args.control_start.len(), true)?;
    per_controlnet("control-end", args.control_end.len(), true)?;
    let defaults = Control::new(Image {
        width: 0,
        height: 0,
        pixels: Vec::new(),
    });
    (0..n)
        .map(|i| {
            Ok(Control {
                controlnet: i,
                image: Image::load_png(&args.control_image[i]).map_err(|e| e.to_string())?,
                scale: args.control_scale.get(i).copied().unwrap_or(defaults.scale),
                start: args.control_start.get(i).copied().unwrap_or(defaults.start),
                end: args.control_end.get(i).copied().unwrap_or(defaults.end),
            })
        })
        .collect()
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    for i in 0..args.batch {
        check_writable(&numbered(&args.out, i, args.batch))?;
    }
    if let Some(dir) = &args.dump_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
        check_writable(&dir.join("image.safetensors"))?;
    }
    if let Some(dir) = &args.preview_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
        check_writable(&dir.join("step-000.png"))?;
    }
    let default = match args.sur_adapter {
        Some(_) => Cond::ClipSur,
        None => Cond::Ella,
    };
    let conditioning = match (args.clip_concat, args.conditioning.unwrap_or(default)) {
        (true, _) | (false, Cond::EllaClip) => Conditioning::EllaClip,
        (false, Cond::Ella) => Conditioning::Ella,
        (false, Cond::Clip) => Conditioning::Clip,
        (false, Cond::ClipSur) => Conditioning::ClipSur(SurOptions {
            weight: args.sur_weight,
            mode: match args.sur_mode {
                SurModeName::Faithful => SurMode::Faithful,
                SurModeName::PerToken => SurMode::PerToken,
            },
        }),
    };
    // Every official file the run needs, found (or fetched) together, so that a missing
    // download names all of them at once.
    let mut needed = Vec::new();
    if conditioning.uses_t5() && args.ella.is_none() {
        needed.extend(Needed::list(ELLA_REPO, "", &[ELLA_FILE], "--ella FILE"));
    }
    if conditioning.uses_t5() && args.t5.is_none() {
        needed.extend(Needed::list(ELLA_REPO, T5_DIR, &T5_FILES, "--t5 FOLDER"));
    }
    if args.checkpoint.is_none() && args.sd.is_none() {
        needed.extend(Needed::list(SD_REPO, "", &SD_FILES, "--sd FOLDER"));
        if conditioning.uses_clip() {
            needed.extend(Needed::list(SD_REPO, "", &SD_CLIP_FILES, "--sd FOLDER"));
        }
    }
    let found = locate(&needed, args.offline)?;
    let official = |file: &str| found[file].clone();
    let ella = match conditioning.uses_t5() {
        false => None,
        true => Some(EllaPaths {
            connector: args.ella.clone().unwrap_or_else(|| official(ELLA_FILE.0)),
            t5: match &args.t5 {
                Some(path) => path.clone(),
                None => folder_of(official(&format!("{T5_DIR}/{}", T5_FILES[0].0))),
            },
            config: args.ella_config.clone(),
        }),
    };
    let paths = ModelPaths {
        sd: match (&args.checkpoint, &args.sd) {
            (Some(path), _) | (None, Some(path)) => path.clone(),
            (None, None) => folder_of(folder_of(official(SD_FILES[0].0))),
        },
        sd_config: args.sd_config.clone(),
        vae: args.vae.clone(),
        ella,
        clip: conditioning.uses_clip(),
        loras: Vec::new(), // applied after loading, to print the report
        embeddings: args.embedding.clone(),
        controlnets: args.controlnet.clone(),
        sur_adapter: args.sur_adapter.clone(),
        taesd: args.taesd.clone(),
    };
    let init_image = match &args.init_image {
        Some(path) => Some(Image::load_png(path).map_err(|e| e.to_string())?),
        None => None,
    };
    // Inpainting: the image and its mask; outpainting: the extended canvas and its mask.
    let (init_image, mask) = match (init_image, &args.mask, args.outpaint) {
        (Some(image), _, Some([left, top, right, bottom])) => {
            let outpaint = Outpaint {
                left,
                top,
                right,
                bottom,
                overlap: args.outpaint_overlap,
            };
            let (canvas, mask) = outpaint.canvas(&image).map_err(|e| e.to_string())?;
            (Some(canvas), Some(mask))
        }
        (image, Some(path), _) => (
            image,
            Some(Mask::load_png(path).map_err(|e| e.to_string())?),
        ),
        (image, None, _) => (image, None),
    };
    let init_latents = match &args.init_latents {
        Some(path) => Some(
            Checkpoint::open(path)
                .and_then(|c| c.data("latents"))
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative.clone(),
        width: args
            .width
            .or(init_image.as_ref().map(|i| i.width))
            .unwrap_or(512),
        height: args
            .height
            .or(init_image.as_ref().map(|i| i.height))
            .unwrap_or(512),
        schedule: match args.timesteps {
            Some(Timesteps::Ays) => TimestepSchedule::align_your_steps(),
            None => TimestepSchedule::Steps(args.steps),
        },
        guidance_scale: args.guidance,
        seed: args.seed,
        batch_size: args.batch,
        t5: T5Text {
            mode: match args.token_mode {
                Mode::Flexible => TokenMode::Flexible,
                Mode::Fixed => TokenMode::Fixed(args.max_length),
            },
            syntax: args.t5_syntax.to_core(),
        },
        scheduler: args
            .scheduler
            .parse::<SchedulerKind>()
            .map_err(|e| e.to_string())?,
        eta: args.eta,
        init_latents,
        step_noise: None,
        vae_decode: match args.vae_decode {
            Decode::Whole => VaeDecode::Whole,
            Decode::Sliced => VaeDecode::Sliced,
            Decode::Tiled => VaeDecode::Tiled,
            Decode::Tiny => VaeDecode::Tiny,
        },
        conditioning,
        clip: ClipText {
            prompt: args.clip_prompt.clone(),
            negative: args.clip_negative.clone(),
            skip: args.clip_skip,
            syntax: args.clip_syntax.to_core(),
        },
        seamless: match args.tile {
            None => Seamless::Off,
            Some(Tile::X) => Seamless::X,
            Some(Tile::Y) => Seamless::Y,
            Some(Tile::Xy) => Seamless::XY,
        },
        init_image: init_image.map(|image| InitImage {
            image,
            strength: args.strength,
            mask,
        }),
        controls: controls(&args)?,
    };
    let dtype = match args.precision {
        Float::Auto => match args.backend {
            BackendName::Cpu => DType::F32,
            BackendName::Wgpu | BackendName::Cuda => DType::F16,
        },
        Float::F32 => DType::F32,
        Float::F16 => DType::F16,
        Float::Bf16 => DType::BF16,
    };
    let precision = Precision {
        t5: match args.t5_precision {
            T5Float::Auto => T5Precision::uniform(dtype).map_err(|e| e.to_string())?,
            T5Float::F32 => T5Precision::F32,
            T5Float::F16 => T5Precision::F16,
            T5Float::F16WoF32 => T5Precision::F16WoF32,
            T5Float::Bf16 => T5Precision::BF16,
        },
        diffusion: dtype,
    };
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(dir) = &args.kernel_cache
        && args.backend != BackendName::Cpu
    {
        ella_core::gpu::set_kernel_cache_dir(dir).map_err(|e| e.to_string())?;
    }
    let images = match args.backend {
        BackendName::Cpu => generate::<ella_core::DefaultBackend>(&args, &paths, precision, &request)?,
        #[cfg(feature = "wgpu")]
        BackendName::Wgpu => generate::<ella_core::Wgpu>(&args, &paths, precision, &request)?,
        #[cfg(feature = "cuda")]
        BackendName::Cuda => generate::<ella_core::Cuda>(&args, &paths, precision, &request)?,
        #[allow(unreachable_patterns)]
        _ => return Err("this backend is not compiled in: build with `--features ella-core/wgpu` or `ella-core/cuda`".into()),
    };
    for (i, image) in images.iter().enumerate() {
        let path = numbered(&args.out, i, images.len());
        image.save_png(&path).map_err(|e| e.to_string())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Loads the pipeline on backend `B` and runs the request with a progress bar.
fn generate<B: Backend>(
    args: &Args,
    paths: &ModelPaths,
    precision: Precision,
    request: &GenerateRequest,
) -> Result<Vec<Image>, String> {
    let device = Default::default();
    let start = std::time::Instant::now();
    let threads = match args.threads {
        Some(count) => Threads::new(count).map_err(|e| e.to_string())?,
        None => Threads::all_cores(),
    };
    let mut pipeline = threads
        .install(|| Pipeline::<B>::load_with_precision(paths, &device, precision))
        .map_err(|e| e.to_string())?;
    pipeline.set_threads(threads);
    pipeline.set_memory_budget(
        args.memory_budget_mib
            .map(|mib| mib.saturating_mul(1 << 20)),
    );
    eprintln!("loaded the models in {:.1?}", start.elapsed());
    if !args.lora.is_empty() {
        let merging = std::time::Instant::now();
        let report = pipeline.set_loras(&args.lora).map_err(|e| e.to_string())?;
        eprintln!(
            "LoRAs change {} weights (merged in {:.1?})",
            report.updated,
            merging.elapsed()
        );
        for entry in &report.unmatched {
            eprintln!("warning: LoRA entry matches no weight: {entry}");
        }
        if report.skipped_clip > 0 {
            eprintln!(
                "warning: {} LoRA text-encoder entries skipped (CLIP is not loaded; see --conditioning)",
                report.skipped_clip
            );
        }
    }
    let states = match args.free_t5 {
        true => {
            let states = pipeline
                .encode_request(request)
                .map_err(|e| e.to_string())?;
            pipeline.free_t5();
            Some(states)
        }
        false => None,
    };

    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise} (eta {eta})")
            .expect("valid template"),
    );
    let dumped: Mutex<Vec<(String, TensorData)>> = Mutex::new(Vec::new());
    let mut hooks = Hooks {
        progress: Some(Box::new(|step, total| {
            bar.set_length(total as u64);
            bar.set_position(step as u64);
        })),
        tensors: args.dump_dir.as_ref().map(|_| {
            Box::new(|name: &str, data: TensorData| {
                dumped
                    .lock()
                    .expect("not poisoned")
                    .push((name.to_string(), data))
            }) as Box<dyn FnMut(&str, TensorData)>
        }),
        preview: match (args.preview_every, &args.preview_dir) {
            (Some(every), Some(dir)) => Some(Previews {
                every,
                method: match args.preview {
                    PreviewKind::Linear => PreviewMethod::Linear,
                    PreviewKind::Tiny => PreviewMethod::Tiny,
                },
                sink: Box::new(move |preview: Preview| {
                    let count = preview.images.len();
                    for (i, image) in preview.images.iter().enumerate() {
                        let name =
                            numbered(&dir.join(format!("step-{:03}.png", preview.step)), i, count);
                        if let Err(e) = image.save_png(&name) {
                            eprintln!("warning: preview not saved: {e}");
                        }
                    }
                }),
            }),
            _ => None,
        },
        ..Hooks::default()
    };
    let start = std::time::Instant::now();
    let images = pipeline
        .generate_with(request, states.as_ref(), &mut hooks)
        .map_err(|e| e.to_string())?;
    drop(hooks);
    bar.finish();
    eprintln!(
        "generated {} image(s) in {:.1?}",
        images.len(),
        start.elapsed()
    );
    if let Some(dir) = &args.dump_dir {
        write_dump(dir, dumped.into_inner().expect("not poisoned"))?;
    }
    Ok(images)
}

/// `--outpaint LEFT,TOP,RIGHT,BOTTOM`.
fn parse_outpaint(text: &str) -> Result<[usize; 4], String> {
    let sides: Vec<usize> = text
        .split(',')
        .map(|n| n.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text}: {e}"))?;
    sides
        .try_into()
        .map_err(|_| format!("{text}: give four numbers, LEFT,TOP,RIGHT,BOTTOM"))
}

/// `image.png`, or `image-0.png`, `image-1.png`, … for a batch.
fn numbered(path: &Path, i: usize, count: usize) -> PathBuf {
    if count == 1 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map_or("image".into(), |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or("png".into(), |s| s.to_string_lossy().into_owned());
    path.with_file_name(format!("{stem}-{i}.{ext}"))
}

/// One safetensors file per tensor, `DIR/NAME.safetensors` holding the tensor `NAME`.
fn write_dump(dir: &Path, tensors: Vec<(String, TensorData)>) -> Result<(), String> {
    for (name, data) in tensors {
        let dtype = if name == "image" {
            safetensors::Dtype::U8
        } else {
            safetensors::Dtype::F32
        };
        let view =
            safetensors::tensor::TensorView::new(dtype, data.shape.to_vec(), data.as_bytes())
                .map_err(|e| e.to_string())?;
        let path = dir.join(format!("{name}.safetensors"));
        safetensors::serialize_to_file([(name.as_str(), view)], None, &path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    eprintln!("wrote the intermediate tensors to {}", dir.display());
    Ok(())
}

fn folder_of(path: PathBuf) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or(path)
}

/// The official files a run needs, from the Hugging Face cache or downloaded there, by
/// their names in `needed`. When some are neither cached nor downloadable, the error lists
/// every one still missing, with its size, where to get it and the flag that takes it.
fn locate(needed: &[Needed], offline: bool) -> Result<HashMap<String, PathBuf>, String> {
    let cache = hf_hub::Cache::from_env();
    let mut found = HashMap::new();
    let mut missing = Vec::new();
    for need in needed {
        match cache.model(need.repo.to_string()).get(&need.file) {
            Some(path) => {
                found.insert(need.file.clone(), path);
            }
            None => missing.push(need),
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    let mut failure = String::from("offline (--offline)");
    if !offline {
        match hf_hub::api::sync::ApiBuilder::from_env()
            .with_progress(true)
            .build()
        {
            Err(e) => failure = e.to_string(),
            Ok(api) => {
                missing.retain(
                    |need| match api.model(need.repo.to_string()).get(&need.file) {
                        Ok(path) => {
                            found.insert(need.file.clone(), path);
                            false
                        }
                        Err(e) => {
                            failure = e.to_string();
                            true
                        }
                    },
                );
            }
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    let list: Vec<String> = missing
        .iter()
        .map(|need| {
            format!(
                "  {:>7}  https://huggingface.co/{}/resolve/main/{}  (or pass {})",
                need.size, need.repo, need.file, need.flag
            )
        })
        .collect();
    Err(format!(
        "{} of the {} weight files this run needs are not in the Hugging Face cache and could \
         not be downloaded ({failure}). Get these files, keeping the folders they are in, and \
         pass them with the flag named (see docs/models.md):\n{}",
        missing.len(),
        needed.len(),
        list.join("\n")
    ))
}
