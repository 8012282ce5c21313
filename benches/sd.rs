//! One U-Net step (classifier-free guidance: batch 2, 64 condition tokens; and without, batch
//! 1, as LCM and TCD sample) and one VAE decode, at 256×256 (32×32 latents), on a mid-size
//! random config and on SD1.5's real config with random weights; and what a live preview
//! costs: the linear latent→RGB projection and a TAESD decode (its real config).
//! `scripts/bench_torch.py` times the same in PyTorch.
//!
//!     cargo bench --bench sd

use burn::tensor::{DType, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use ella_core::pipeline::preview::linear_preview;
use ella_core::{
    AutoencoderKL, AutoencoderTiny, Cancel, Checkpoint, DefaultBackend as B, TinyConfig,
    UNet2DConditionModel, UNetConfig, VaeConfig,
};

/// SD1.5's U-Net with half the widths.
fn mid_unet() -> UNetConfig {
    UNetConfig {
        block_out_channels: vec![160, 320, 640, 640],
        ..UNetConfig::sd15()
    }
}

/// SD1.5's VAE with half the widths.
fn mid_vae() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![64, 128, 256, 256],
        ..VaeConfig::sd15()
    }
}

fn filled(shape: [usize; 4], seed: usize) -> TensorData {
    let n: usize = shape.iter().product();
    TensorData::new(
        (0..n)
            .map(|i| (((i * 7919 + seed) % 101) as f32 - 50.0) / 50.0)
            .collect::<Vec<_>>(),
        shape,
    )
}

fn benches(c: &mut Criterion) {
    let device = Default::default();
    let mut group = c.benchmark_group("sd");
    group.sample_size(10);
    let latents = Tensor::<B, 4>::from_data(filled([2, 4, 32, 32], 1), &device);
    let context = Tensor::<B, 3>::from_data(
        TensorData::new(
            (0..2 * 64 * 768)
                .map(|i| ((i % 89) as f32 - 44.0) / 44.0)
                .collect::<Vec<_>>(),
            [2, 64, 768],
        ),
        &device,
    );
    for (name, config) in [("mid-size", mid_unet()), ("sd15", UNetConfig::sd15())] {
        let unet = UNet2DConditionModel::<B>::from_checkpoint(
            config,
            &Checkpoint::random(3),
            &device,
            DType::F32,
        )
        .unwrap();
        group.bench_function(format!("unet step/{name}/256x256 cfg"), |b| {
            b.iter(|| {
                unet.forward(latents.clone(), &[500.0], context.clone())
                    .unwrap()
                    .into_data()
            })
        });
        if name == "sd15" {
            let one = |t: &Tensor<B, 4>| t.clone().narrow(0, 0, 1);
            let context = context.clone().narrow(0, 0, 1);
            group.bench_function("unet step/sd15/256x256 no cfg", |b| {
                b.iter(|| {
                    unet.forward(one(&latents), &[500.0], context.clone())
                        .unwrap()
                        .into_data()
                })
            });
        }
    }
    let z = Tensor::<B, 4>::from_data(filled([1, 4, 32, 32], 2), &device);
    for (name, config) in [("mid-size", mid_vae()), ("sd15", VaeConfig::sd15())] {
        let vae = AutoencoderKL::<B>::from_checkpoint(
            config,
            &Checkpoint::random(4),
            &device,
            DType::F32,
        )
        .unwrap();
        group.bench_function(format!("vae decode/{name}/256x256"), |b| {
            b.iter(|| vae.decode(z.clone(), Cancel::NEVER).unwrap().into_data())
        });
    }
    let taesd = AutoencoderTiny::<B>::from_checkpoint(
        TinyConfig::default(),
        &Checkpoint::random(5),
        &device,
        DType::F32,
    )
    .unwrap();
    group.bench_function("preview/taesd/256x256", |b| {
        b.iter(|| taesd.decode(z.clone(), Cancel::NEVER).unwrap().into_data())
    });
    group.bench_function("preview/linear/256x256", |b| {
        b.iter(|| linear_preview(&z.clone().into_data()))
    });
    group.finish();
}

criterion_group!(sd, benches);
criterion_main!(sd);
