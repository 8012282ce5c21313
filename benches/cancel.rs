//! Cancellation latency: how long a generation takes to return `Cancelled` after the host
//! sets the flag, at 256×256 with SD1.5's real U-Net, VAE and CLIP (random weights) on the
//! CPU. The flag is set from another thread at spread-out moments of the denoising steps and
//! of the VAE decode; the latency is bounded by the longest block between two checks.
//!
//!     cargo bench --bench cancel

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use burn::tensor::DType;
use ella_core::{
    AutoencoderKL, Checkpoint, ClipTextConfig, ClipTextEncoder, ClipTextModel, ClipTokenizer,
    Conditioning, DefaultBackend as B, Error, GenerateRequest, Hooks, Pipeline, PipelineParts,
    SchedulerConfig, TimestepSchedule, UNet2DConditionModel, UNetConfig, VaeConfig,
};

fn main() {
    let device = Default::default();
    let tokenizer = ClipTokenizer::from_file(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd/tokenizer"),
    )
    .unwrap();
    let clip = ClipTextModel::<B>::from_checkpoint(
        ClipTextConfig::sd15(),
        &Checkpoint::random(1),
        &device,
        DType::F32,
    )
    .unwrap();
    let pipeline = Pipeline::from_parts(PipelineParts {
        t5: None,
        connector: None,
        clip: Some(ClipTextEncoder {
            tokenizer,
            model: clip,
        }),
        unet: UNet2DConditionModel::from_checkpoint(
            UNetConfig::sd15(),
            &Checkpoint::random(2),
            &device,
            DType::F32,
        )
        .unwrap(),
        vae: AutoencoderKL::from_checkpoint(
            VaeConfig::sd15(),
            &Checkpoint::random(3),
            &device,
            DType::F32,
        )
        .unwrap(),
        scheduler_config: SchedulerConfig::sd15(),
    })
    .unwrap();
    let request = GenerateRequest {
        width: 256,
        height: 256,
        schedule: TimestepSchedule::Steps(2),
        conditioning: Conditioning::Clip,
        ..GenerateRequest::new("a red book on a wooden table")
    };
    let start = Instant::now();
    pipeline.generate(&request).unwrap();
    let whole = start.elapsed();
    println!("one uninterrupted generation (2 steps with guidance, decode): {whole:.2?}");
    let mut latencies = Vec::new();
    for i in 1..=12 {
        let after = whole.mul_f64(f64::from(i) / 13.0);
        let cancel = AtomicBool::new(false);
        let set_at = std::sync::Mutex::new(None);
        let result = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(after);
                *set_at.lock().unwrap() = Some(Instant::now());
                cancel.store(true, Ordering::SeqCst);
            });
            let mut hooks = Hooks {
                cancel: Some(&cancel),
                ..Hooks::default()
            };
            pipeline.generate_with(&request, None, &mut hooks)
        });
        let returned = Instant::now();
        match (result, *set_at.lock().unwrap()) {
            (Err(Error::Cancelled), Some(set)) => {
                let latency = returned - set;
                println!("cancel at {after:.2?}: returned {latency:.2?} later");
                latencies.push(latency);
            }
            (other, _) => println!("cancel at {after:.2?}: {:?}", other.map(|_| "finished")),
        }
    }
    latencies.sort();
    let max = latencies.last().copied().unwrap_or(Duration::ZERO);
    let median = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or(Duration::ZERO);
    println!(
        "cancel latency over {} cancels: median {median:.2?}, max {max:.2?} (a whole generation \
         takes {whole:.2?})",
        latencies.len()
    );
}
