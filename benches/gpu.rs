//! The GPU benchmark of issue #5: whole 512×512, 20-step ELLA images with classifier-free
//! guidance at the real sizes (flan-t5-xl, the official connector, SD1.5's U-Net and VAE)
//! with random weights, on CUDA, in F16 or BF16.
//!
//! Prints seconds per image (T5 encoding of both prompts included), per U-Net step, and
//! the device's peak memory (read from `nvidia-smi` every 10 ms) with T5 resident and
//! after freeing it. `scripts/gpu-check.sh` runs it beside `scripts/bench_gpu.py`
//! (diffusers on the same configs); the figures are in `docs/performance.md`.
//!
//!     cargo build --release --features cuda --bench gpu
//!     target/release/deps/gpu-* [f16|bf16] [images]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use burn::tensor::DType;
use burn::tensor::backend::Backend;
use ella_core::Cuda;
use ella_core::{
    AutoencoderKL, Checkpoint, Connector, ConnectorConfig, GenerateRequest, Hooks, Pipeline,
    PipelineParts, SchedulerConfig, SchedulerKind, T5Config, T5Encoder, T5Precision, T5Tokenizer,
    TextEncoder, TokenMode, UNet2DConditionModel, UNetConfig, VaeConfig,
};

type B = Cuda;

const STEPS: usize = 20;

/// The largest `memory.used` (MiB) `nvidia-smi` reported since the last reset.
struct PeakMemory {
    peak: Arc<AtomicU64>,
    current: Arc<AtomicU64>,
    child: std::process::Child,
}

impl PeakMemory {
    fn start() -> Option<Self> {
        let mut child = Command::new("nvidia-smi")
            .args([
                "--query-gpu=memory.used",
                "--format=csv,noheader,nounits",
                "-lms",
                "10",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let peak = Arc::new(AtomicU64::new(0));
        let current = Arc::new(AtomicU64::new(0));
        let (p, c) = (peak.clone(), current.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Ok(mib) = line.trim().parse::<u64>() {
                    c.store(mib, Ordering::Relaxed);
                    p.fetch_max(mib, Ordering::Relaxed);
                }
            }
        });
        Some(Self {
            peak,
            current,
            child,
        })
    }

    /// Waits for two samples so that the peak covers everything up to now.
    fn settle(&self) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    fn reset(&self) {
        self.settle();
        self.peak
            .store(self.current.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn peak_gib(&self) -> f64 {
        self.settle();
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for PeakMemory {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn fixtures() -> PathBuf {
    std::env::var_os("ELLA_FIXTURES").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
        PathBuf::from,
    )
}

fn main() -> ella_core::Result<()> {
    // `cargo bench` passes `--bench`; positional arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dtype = match args.first().map(String::as_str) {
        None | Some("f16") => DType::F16,
        Some("bf16") => DType::BF16,
        Some(other) => panic!("unknown dtype {other}: f16 or bf16"),
    };
    let images: usize = args.get(1).map_or(3, |n| n.parse().expect("image count"));
    let device = Default::default();
    let memory = PeakMemory::start();

    // Random weights in the real shapes; the tokenizer of the tiny test T5 (its ids are
    // within flan-t5-xl's vocabulary), fixed 128 tokens as the official long-prompt mode.
    let load_start = Instant::now();
    let t5 = TextEncoder {
        tokenizer: T5Tokenizer::from_file(fixtures().join("t5/tokenizer.json"))?,
        encoder: T5Encoder::<B>::from_checkpoint(
            T5Config::flan_t5_xl(),
            &Checkpoint::random(1),
            &device,
            T5Precision::uniform(dtype)?,
        )?,
    };
    let mut pipeline = Pipeline::from_parts(PipelineParts {
        text_encoder: Some(t5),
        connector: Some(Connector::from_checkpoint(
            &ConnectorConfig::default(),
            &Checkpoint::random(2),
            &device,
            dtype,
        )?),
        clip: None,
        unet: UNet2DConditionModel::from_checkpoint(
            UNetConfig::sd15(),
            &Checkpoint::random(3),
            &device,
            dtype,
        )?,
        vae: AutoencoderKL::from_checkpoint(
            VaeConfig::sd15(),
            &Checkpoint::random(4),
            &device,
            dtype,
        )?,
        scheduler_config: SchedulerConfig::sd15(),
    })?;
    B::sync(&device).expect("sync");
    println!(
        "ella {dtype:?}: random weights generated and uploaded in {:.1} s",
        load_start.elapsed().as_secs_f64()
    );

    let request = GenerateRequest {
        steps: STEPS,
        guidance_scale: 7.5,
        token_mode: TokenMode::FIXED_128,
        scheduler: SchedulerKind::DpmSolverMultistep,
        ..GenerateRequest::new("a red book on a wooden table next to a cup of coffee")
    };
    // One mode: a warm-up image (autotune picks kernels), `images` timed images, then one
    // image that synchronises after every step to time the denoising steps alone.
    let time = |label: &str,
                run: &mut dyn FnMut(&mut Hooks) -> ella_core::Result<()>|
     -> ella_core::Result<()> {
        let start = Instant::now();
        run(&mut Hooks {
            progress: Some(Box::new(|step, total| {
                if step % 5 == 0 {
                    println!(
                        "  warm-up step {step}/{total} at {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            })),
            ..Hooks::default()
        })?;
        B::sync(&device).expect("sync");
        println!(
            "ella {dtype:?}: warm-up ({label}, autotune) {:.2} s",
            start.elapsed().as_secs_f64()
        );
        if let Some(m) = &memory {
            m.reset();
        }
        let mut seconds = Vec::new();
        for _ in 0..images {
            let start = Instant::now();
            run(&mut Hooks::default())?;
            B::sync(&device).expect("sync");
            seconds.push(start.elapsed().as_secs_f64());
        }
        seconds.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        let peak = memory.as_ref().map_or(f64::NAN, PeakMemory::peak_gib);
        let step_times = std::cell::RefCell::new(Vec::new());
        run(&mut Hooks {
            progress: Some(Box::new(|_, _| {
                B::sync(&device).expect("sync");
                step_times.borrow_mut().push(Instant::now());
            })),
            ..Hooks::default()
        })?;
        let steps = step_times.into_inner();
        let per_step = (steps[steps.len() - 1] - steps[0]).as_secs_f64() / (steps.len() - 1) as f64;
        println!(
            "RESULT ella {dtype:?} {label}: {median:.3} s/image, {:.1} ms/step, peak {peak:.2} GiB",
            per_step * 1e3
        );
        Ok(())
    };

    // T5 resident: every image encodes both prompts, then samples and decodes.
    time("T5 resident", &mut |hooks| {
        pipeline.generate_with(&request, None, hooks).map(drop)
    })?;

    // T5 freed: prompts encoded once, T5 dropped and its memory returned to the device.
    let states = pipeline.encode_prompts(
        &request.prompt,
        &request.negative_prompt,
        request.token_mode,
        request.conditioning,
    )?;
    pipeline.free_text_encoder();
    time("T5 freed", &mut |hooks| {
        pipeline
            .generate_with(&request, Some(&states), hooks)
            .map(drop)
    })?;
    Ok(())
}
