//! The whole-image CPU benchmark, ella's side (`scripts/bench_image.py` is PyTorch's): an
//! ELLA user's full-size files with random weights (written by `bench_image.py write DIR`),
//! loaded and turned into one image of `GenerateRequest::default()`'s work (512×512, 25
//! DPM-Solver++ 2M steps, guidance 10, flexible token length), on the default CPU backend.
//!
//!     cargo bench -p ella-core --bench image -- DIR/f32 [load-only]
//!
//! Prints one `RESULT` JSON line: seconds to load (files to models, in F32), seconds for the
//! image (both prompts encoded, sampled, decoded) and the process's peak resident memory
//! (`VmHWM`, KiB). scripts/bench-cpu.sh runs each case in its own process; threads come from
//! `RAYON_NUM_THREADS` (every core by default).

use std::path::Path;
use std::time::Instant;

use burn::tensor::DType;
use ella_core::{DefaultBackend as B, GenerateRequest, ModelPaths, Pipeline};

/// The prompt of `scripts/bench_image.py`.
const PROMPT: &str = "a red book on a wooden table next to a cup of coffee, morning light \
    through a window, dust in the air, a cat asleep on a chair in the background";

/// The process's peak resident memory in KiB (Linux; 0 elsewhere).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn main() -> ella_core::Result<()> {
    // `cargo bench` passes `--bench`; positional arguments are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Some(root) = args.first().map(Path::new) else {
        println!("usage: image DIR [load-only]   (DIR from scripts/bench_image.py write)");
        return Ok(());
    };
    let load_only = args.get(1).map(String::as_str) == Some("load-only");

    let start = Instant::now();
    let paths = ModelPaths::ella(
        root.join("t5"),
        root.join("ella.safetensors"),
        root.join("sd"),
    );
    let pipeline = Pipeline::<B>::load(&paths, &Default::default(), DType::F32)?;
    let load = start.elapsed().as_secs_f64();
    let mut result = format!("{{\"load\": {load:.3}");
    if !load_only {
        let start = Instant::now();
        pipeline.generate(&GenerateRequest::new(PROMPT))?;
        result += &format!(", \"image\": {:.3}", start.elapsed().as_secs_f64());
    }
    println!("RESULT {result}, \"peak_rss_kib\": {}}}", peak_rss_kib());
    Ok(())
}
