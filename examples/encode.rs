//! Prompt → ELLA condition tokens, on the CPU.
//!
//! With the tiny test models (no download):
//!     cargo run --example encode -- --t5 ella-core/tests/fixtures/t5 \
//!         --ella ella-core/tests/fixtures/ella/ella.safetensors \
//!         --ella-config ella-core/tests/fixtures/ella/config.json
//! With the official files (see docs/models.md):
//!     cargo run --release --example encode -- --t5 models--google--flan-t5-xl--text_encoder \
//!         --ella ella-sd1.5-tsc-t5xl.safetensors --prompt "a red book on a wooden table"

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use ella_core::burn::tensor::{DType, Tensor};
use ella_core::{Connector, ConnectorConfig, DefaultBackend as B, T5TextEncoder, TokenMode};

#[derive(Parser)]
#[command(about = "Encode a prompt into ELLA's timestep-dependent condition tokens")]
struct Args {
    /// T5 encoder folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    t5: PathBuf,
    /// ELLA connector weights (e.g. ella-sd1.5-tsc-t5xl.safetensors).
    #[arg(long)]
    ella: PathBuf,
    /// JSON file with the connector's sizes; default: the official SD1.5 connector.
    #[arg(long)]
    ella_config: Option<PathBuf>,
    #[arg(long, default_value = "a red book on a wooden table")]
    prompt: String,
    /// U-Net timesteps to make condition tokens for.
    #[arg(long, num_args = 1.., default_values_t = [999.0, 500.0, 0.0])]
    timestep: Vec<f32>,
    /// Pad/truncate to this many tokens (ELLA's training length is 128) instead of the
    /// prompt's own length.
    #[arg(long)]
    fixed: Option<usize>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> ella_core::Result<()> {
    let device = Default::default();
    let config = match &args.ella_config {
        Some(path) => ConnectorConfig::from_file(path)?,
        None => ConnectorConfig::default(),
    };

    let start = Instant::now();
    let t5 = T5TextEncoder::<B>::load(&args.t5, &device)?;
    let ella = Connector::<B>::load(&args.ella, &config, &device, DType::F32)?;
    println!("loaded T5 and connector in {:.2?}", start.elapsed());

    let mode = args.fixed.map_or(TokenMode::Flexible, TokenMode::Fixed);
    let start = Instant::now();
    let states = t5.encode(&args.prompt, mode)?;
    println!("T5 states {:?} in {:.2?}", states.dims(), start.elapsed());

    for &t in &args.timestep {
        let start = Instant::now();
        let tokens: Tensor<B, 3> = ella.forward(states.clone(), &[t])?;
        let dims = tokens.dims();
        let values: Vec<f32> = tokens.into_data().iter::<f32>().collect();
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let std =
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / values.len() as f32).sqrt();
        println!(
            "t = {t:>6}: condition tokens {dims:?}, mean {mean:+.4}, std {std:.4} ({:.2?})",
            start.elapsed()
        );
    }
    Ok(())
}
