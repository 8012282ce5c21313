//! T5 encoder and ELLA connector forward passes, on the tiny test models and on mid-size
//! random-weight models (flan-t5-base sizes with 128 tokens; the official connector sizes).
//! `scripts/bench_torch.py` times the same configs in PyTorch; docs/performance.md has both.
//!
//!     cargo bench --bench text_encoding

use std::path::Path;

use burn::tensor::{DType, Int, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use ella_core::{
    Cancel, Checkpoint, Connector, ConnectorConfig, DefaultBackend as B, T5Config, T5Encoder,
    T5Precision, T5TextEncoder, TokenMode,
};

/// flan-t5-base: 12 layers of width 768, gated-GELU.
fn flan_t5_base() -> T5Config {
    T5Config {
        vocab_size: 32128,
        d_model: 768,
        d_kv: 64,
        d_ff: 2048,
        num_layers: 12,
        num_heads: 12,
        ..T5Config::flan_t5_xl()
    }
}

fn fixture(path: &str) -> String {
    format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn benches(c: &mut Criterion) {
    let device = Default::default();
    let prompt = "a red book on a wooden table next to a cup of coffee, morning light";

    // Tiny test models.
    let t5 = T5TextEncoder::<B>::load(fixture("t5"), &device).unwrap();
    let config = ConnectorConfig::from_file(Path::new(&fixture("ella/config.json"))).unwrap();
    let ella = Connector::<B>::load(
        fixture("ella/ella.safetensors"),
        &config,
        &device,
        DType::F32,
    )
    .unwrap();
    let states = t5.encode(prompt, TokenMode::FIXED_128).unwrap();
    c.bench_function("t5/tiny/128 tokens", |b| {
        b.iter(|| t5.encode(prompt, TokenMode::FIXED_128).unwrap().into_data())
    });
    c.bench_function("tsc/tiny/128 tokens", |b| {
        b.iter(|| ella.forward(states.clone(), &[500.0]).unwrap().into_data())
    });

    let mut group = c.benchmark_group("mid-size");
    group.sample_size(10);
    // flan-t5-base sizes, one prompt of 128 tokens.
    let base = flan_t5_base();
    let checkpoint = Checkpoint::random(1);
    let encoder =
        T5Encoder::<B>::from_checkpoint(base, &checkpoint, &device, T5Precision::F32).unwrap();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            (0..128)
                .map(|i| (i * 37 % 32000) as i64)
                .collect::<Vec<_>>(),
            [1, 128],
        ),
        &device,
    );
    group.bench_function("t5/flan-t5-base/128 tokens", |b| {
        b.iter(|| {
            encoder
                .forward(ids.clone(), None, Cancel::NEVER)
                .unwrap()
                .into_data()
        })
    });
    // The official connector's sizes on 128 flan-t5-xl-wide states.
    let full = ConnectorConfig::default();
    let checkpoint = Checkpoint::random(2);
    let ella = Connector::<B>::from_checkpoint(&full, &checkpoint, &device, DType::F32).unwrap();
    let states = Tensor::<B, 3>::from_data(
        TensorData::new(
            (0..128 * 2048)
                .map(|i| ((i % 97) as f32 - 48.0) / 48.0)
                .collect::<Vec<_>>(),
            [1, 128, 2048],
        ),
        &device,
    );
    group.bench_function("tsc/full/128 tokens", |b| {
        b.iter(|| ella.forward(states.clone(), &[500.0]).unwrap().into_data())
    });
    group.finish();
}

criterion_group!(text_encoding, benches);
criterion_main!(text_encoding);
