//! The seeded noise of a generation, documented so that any implementation can reproduce it:
//! the initial latents of seed `s` are `StandardNormal` samples (`rand_distr` 0.5, Ziggurat)
//! drawn from `ChaCha8Rng::seed_from_u64(s)` (`rand_chacha` 0.9) in row-major
//! `[channels, height, width]` order. The fresh noise stochastic schedulers (LCM, TCD) add
//! after step `k` of a run (counted from the first step taken) comes from the same generator
//! on stream `k + 1` (`ChaCha8Rng::set_stream`). They are portable across platforms and
//! backends; they are not PyTorch's (`torch.randn`) values.

use burn::tensor::TensorData;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Unit-variance noise `[batch, channels, height, width]`; sample `i` uses seed `seed + i`.
pub fn initial_noise(seed: u64, shape: [usize; 4]) -> TensorData {
    normal(seed, 0, shape)
}

/// The fresh noise of step `step` of a run (from 0, the first step taken), shaped as
/// [`initial_noise`].
pub fn step_noise(seed: u64, step: usize, shape: [usize; 4]) -> TensorData {
    normal(seed, step as u64 + 1, shape)
}

fn normal(seed: u64, stream: u64, shape: [usize; 4]) -> TensorData {
    let [batch, channels, height, width] = shape;
    let per_sample = channels * height * width;
    let mut values = Vec::with_capacity(batch * per_sample);
    for i in 0..batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(i as u64));
        rng.set_stream(stream);
        values.extend((0..per_sample).map(|_| -> f32 { StandardNormal.sample(&mut rng) }));
    }
    TensorData::new(values, shape)
}
