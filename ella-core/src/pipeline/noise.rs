//! The seeded noise of a generation, documented so that any implementation can reproduce it:
//! the initial latents of seed `s` are `StandardNormal` samples (`rand_distr` 0.5, Ziggurat)
//! drawn from `ChaCha8Rng::seed_from_u64(s)` (`rand_chacha` 0.9) in row-major
//! `[channels, height, width]` order. They are portable across platforms and backends; they
//! are not PyTorch's (`torch.randn`) values.

use burn::tensor::TensorData;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Unit-variance noise `[batch, channels, height, width]`; sample `i` uses seed `seed + i`.
pub fn initial_noise(seed: u64, shape: [usize; 4]) -> TensorData {
    let [batch, channels, height, width] = shape;
    let per_sample = channels * height * width;
    let mut values = Vec::with_capacity(batch * per_sample);
    for i in 0..batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(i as u64));
        values.extend((0..per_sample).map(|_| -> f32 { StandardNormal.sample(&mut rng) }));
    }
    TensorData::new(values, shape)
}
