//! GPU benchmarks, on CUDA or wgpu (fused, autotuned), with random weights in the real
//! shapes. `scripts/gpu-check.sh` runs them on a GPU host beside `scripts/bench_gpu.py`
//! (diffusers on the same work); `docs/performance.md` has the figures.
//!
//! `image BACKEND DTYPE [IMAGES]`: whole 512×512, 20-step ELLA images with classifier-free
//! guidance (flan-t5-xl, the official connector, SD1.5's U-Net and VAE, DPM-Solver++ 2M)
//! in F16 or BF16: seconds per image (T5 encoding of both prompts included), per U-Net
//! step, and the device's peak memory (`nvidia-smi` every 10 ms) with T5 resident and
//! after freeing it.
//!
//! `start BACKEND WORK KERNEL_CACHE_DIR`: seconds from nothing to the first result, and the
//! kernels compiled and operations autotuned on the way (entries added to the kernel
//! cache). Run it twice on one empty directory for the cold and the warm start. WORK is
//! `tiny` (a 64×64, 8-step image from the tiny test models, F32), `mid-unet` (one U-Net
//! step of SD1.5 at half width, 32×32 latents, CFG batch 2, F32) or `sd15` (the first
//! 512×512, 20-step image of `image`, F16).
//!
//!     cargo build --release --features ella-core/cuda,ella-core/wgpu --bench gpu
//!     target/release/deps/gpu-* image cuda f16 3
//!     target/release/deps/gpu-* start wgpu tiny /tmp/kernels

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use burn::tensor::{DType, Tensor, TensorData};
use ella_core::Backend;
use ella_core::gpu::{KernelCacheStats, set_kernel_cache_dir};
use ella_core::{
    AutoencoderKL, Checkpoint, Connector, ConnectorConfig, GenerateRequest, Hooks, ModelPaths,
    Pipeline, PipelineParts, SchedulerConfig, SchedulerKind, T5Config, T5Encoder, T5Precision,
    T5Text, T5TextEncoder, T5Tokenizer, TimestepSchedule, TokenMode, UNet2DConditionModel,
    UNetConfig, VaeConfig,
};

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
            .stderr(Stdio::null())
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

/// The real-size pipeline with random weights; the tokenizer of the tiny test T5 (its ids
/// are within flan-t5-xl's vocabulary).
fn sd15_pipeline<B: Backend>(device: &B::Device, dtype: DType) -> ella_core::Result<Pipeline<B>> {
    let t5 = T5TextEncoder {
        tokenizer: T5Tokenizer::from_file(fixtures().join("t5/tokenizer.json"))?,
        encoder: T5Encoder::<B>::from_checkpoint(
            T5Config::flan_t5_xl(),
            &Checkpoint::random(1),
            device,
            T5Precision::uniform(dtype)?,
        )?,
    };
    Pipeline::from_parts(PipelineParts {
        t5: Some(t5),
        connector: Some(Connector::from_checkpoint(
            &ConnectorConfig::default(),
            &Checkpoint::random(2),
            device,
            dtype,
        )?),
        clip: None,
        unet: UNet2DConditionModel::from_checkpoint(
            UNetConfig::sd15(),
            &Checkpoint::random(3),
            device,
            dtype,
        )?,
        vae: AutoencoderKL::from_checkpoint(
            VaeConfig::sd15(),
            &Checkpoint::random(4),
            device,
            dtype,
        )?,
        scheduler_config: SchedulerConfig::sd15(),
    })
}

/// The benchmark's request: fixed 128 tokens (the official long-prompt mode), guidance 7.5.
fn sd15_request() -> GenerateRequest {
    GenerateRequest {
        schedule: TimestepSchedule::Steps(STEPS),
        guidance_scale: 7.5,
        t5: T5Text {
            mode: TokenMode::FIXED_128,
            ..Default::default()
        },
        scheduler: SchedulerKind::DpmSolverMultistep,
        ..GenerateRequest::new("a red book on a wooden table next to a cup of coffee")
    }
}

/// `image`: seconds per image, per step and peak memory, T5 resident and freed.
fn image<B: Backend>(name: &str, dtype: DType, images: usize) -> ella_core::Result<()> {
    let device = Default::default();
    let memory = PeakMemory::start();
    let load_start = Instant::now();
    let mut pipeline = sd15_pipeline::<B>(&device, dtype)?;
    B::sync(&device).expect("sync");
    println!(
        "ella {name} {dtype:?}: random weights generated and uploaded in {:.1} s",
        load_start.elapsed().as_secs_f64()
    );
    let request = sd15_request();
    // One mode: a warm-up image (autotune picks kernels), `images` timed images, then one
    // image that synchronises after every step to time the denoising steps alone.
    let time = |label: &str,
                run: &mut dyn FnMut(&mut Hooks) -> ella_core::Result<()>|
     -> ella_core::Result<()> {
        let start = Instant::now();
        run(&mut Hooks::default())?;
        B::sync(&device).expect("sync");
        println!(
            "ella {name} {dtype:?}: warm-up ({label}) {:.2} s",
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
            "RESULT ella {name} {dtype:?} {label}: {median:.3} s/image, {:.1} ms/step, peak {peak:.2} GiB",
            per_step * 1e3
        );
        Ok(())
    };

    // T5 resident: every image encodes both prompts, then samples and decodes.
    time("T5 resident", &mut |hooks| {
        pipeline.generate_with(&request, None, hooks).map(drop)
    })?;

    // T5 freed: prompts encoded once, T5 dropped and its memory returned to the device.
    let states = pipeline.encode_request(&request)?;
    pipeline.free_t5();
    time("T5 freed", &mut |hooks| {
        pipeline
            .generate_with(&request, Some(&states), hooks)
            .map(drop)
    })?;
    Ok(())
}

/// SD1.5's U-Net with half the widths (as `benches/sd.rs`).
fn mid_unet() -> UNetConfig {
    UNetConfig {
        block_out_channels: vec![160, 320, 640, 640],
        ..UNetConfig::sd15()
    }
}

/// `start`: from an empty process to the first result, with the kernel cache in `dir`; then
/// the same work again in the same process (steady state: nothing left to compile).
fn start<B: Backend>(name: &str, work: &str, dir: &Path) -> ella_core::Result<()> {
    set_kernel_cache_dir(dir)?;
    let before = KernelCacheStats::read(dir)?;
    let device = Default::default();
    let start = Instant::now();
    let mut run: Box<dyn FnMut() -> ella_core::Result<()>> = match work {
        "tiny" => {
            let fixture = |p: &str| fixtures().join(p);
            let paths = ModelPaths {
                ella: Some(ella_core::EllaPaths {
                    t5: fixture("t5"),
                    connector: fixture("ella/ella.safetensors"),
                    config: Some(fixture("ella/config.json")),
                }),
                ..ModelPaths::ella("", "", fixture("sd"))
            };
            let pipeline = Pipeline::<B>::load(&paths, &device, DType::F32)?;
            let request = GenerateRequest {
                width: 64,
                height: 64,
                schedule: TimestepSchedule::Steps(8),
                ..GenerateRequest::new("a red book on a wooden table")
            };
            Box::new(move || pipeline.generate(&request).map(drop))
        }
        "mid-unet" => {
            let unet = UNet2DConditionModel::<B>::from_checkpoint(
                mid_unet(),
                &Checkpoint::random(3),
                &device,
                DType::F32,
            )?;
            let filled = |n: usize, shape: Vec<usize>| {
                let values = (0..n).map(|i| ((i % 89) as f32 - 44.0) / 44.0);
                TensorData::new(values.collect::<Vec<_>>(), shape)
            };
            let latents =
                Tensor::<B, 4>::from_data(filled(2 * 4 * 32 * 32, vec![2, 4, 32, 32]), &device);
            let context =
                Tensor::<B, 3>::from_data(filled(2 * 64 * 768, vec![2, 64, 768]), &device);
            Box::new(move || {
                unet.forward(latents.clone(), &[500.0], context.clone())?
                    .into_data();
                Ok(())
            })
        }
        "sd15" => {
            let pipeline = sd15_pipeline::<B>(&device, DType::F16)?;
            let request = sd15_request();
            Box::new(move || pipeline.generate(&request).map(drop))
        }
        other => panic!("unknown work {other}: tiny, mid-unet or sd15"),
    };
    B::sync(&device).expect("sync");
    let loaded = start.elapsed().as_secs_f64();
    run()?;
    B::sync(&device).expect("sync");
    let seconds = start.elapsed().as_secs_f64();
    let after = KernelCacheStats::read(dir)?;
    let again = Instant::now();
    run()?;
    B::sync(&device).expect("sync");
    println!(
        "RESULT start {name} {work}: first result in {seconds:.1} s (weights ready in \
         {loaded:.1} s; {} kernels compiled, {} operations autotuned; {} kernels and {} results \
         in the cache before), the same work again in {:.1} s",
        after.kernels - before.kernels,
        after.autotune_results - before.autotune_results,
        before.kernels,
        before.autotune_results,
        again.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn main() -> ella_core::Result<()> {
    // `cargo bench` passes `--bench`; positional arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    macro_rules! on_backend {
        ($f:ident($($a:expr),*)) => {
            match arg(1) {
                Some("wgpu") => $f::<ella_core::Wgpu>("wgpu", $($a),*),
                #[cfg(feature = "cuda")]
                Some("cuda") => $f::<ella_core::Cuda>("cuda", $($a),*),
                other => panic!("unknown backend {other:?}: wgpu, or cuda in builds with it"),
            }
        };
    }
    match arg(0) {
        Some("image") => {
            let dtype = match arg(2) {
                None | Some("f16") => DType::F16,
                Some("bf16") => DType::BF16,
                Some(other) => panic!("unknown dtype {other}: f16 or bf16"),
            };
            let images = arg(3).map_or(3, |n| n.parse().expect("image count"));
            on_backend!(image(dtype, images))
        }
        Some("start") => {
            let work = arg(2).expect("work: tiny, mid-unet or sd15");
            let dir = Path::new(arg(3).expect("kernel cache directory"));
            on_backend!(start(work, dir))
        }
        _ => {
            println!("usage: gpu image BACKEND [f16|bf16] [IMAGES] | gpu start BACKEND WORK DIR");
            Ok(())
        }
    }
}
