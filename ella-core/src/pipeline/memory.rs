//! Working memory: what a request will allocate, estimated from its sizes and the models'
//! configs before anything is allocated, and the host's budget it must fit in. A request
//! over budget is refused with [`Error::OutOfMemory`] instead of aborting the host process
//! when an allocation fails.
//!
//! The estimates count the tensors alive at the peak of each phase (skip connections,
//! a block's temporaries, attention scores bounded by [`ATTENTION_CHUNK_BYTES`]) with the
//! statistics of group norms in f32. `tests/budget.rs` checks them against the peak a
//! counting allocator measures: never below it, and within a small factor above.

use burn::tensor::DType;

use super::request::GenerateRequest;
use crate::error::{Error, Result};
use crate::nn::ATTENTION_CHUNK_BYTES;
use crate::t5::T5Config;
use crate::unet::{BlockKind, UNetConfig};
use crate::vae::{VaeConfig, VaeDecode};

/// The working memory of a request's phases, in bytes. They run one after the other, so
/// the request needs their maximum ([`WorkingMemory::peak`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingMemory {
    /// Image-to-image: encoding the init image with the VAE.
    pub encoding: u64,
    /// One denoising step: the U-Net on the whole (guided) batch, with a ControlNet's
    /// residuals when there is one.
    pub denoising: u64,
    /// Decoding the latents with the VAE.
    pub decoding: u64,
}

impl WorkingMemory {
    pub fn peak(&self) -> u64 {
        self.encoding.max(self.denoising).max(self.decoding)
    }
}

/// The memory a host may give ella's work: what the machine (or its cgroup) has free now.
pub fn available() -> u64 {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let system = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let free = system.available_memory();
    match system.cgroup_limits() {
        Some(limits) => free.min(limits.free_memory),
        None => free,
    }
}

/// Errors when `needed` bytes of working memory for `what` exceed `budget`.
pub fn check(what: &str, needed: u64, budget: u64) -> Result<()> {
    match needed <= budget {
        true => Ok(()),
        false => Err(Error::OutOfMemory {
            what: what.to_string(),
            needed,
            budget,
        }),
    }
}

/// Bytes of one element of `dtype`, and of the f32 statistics norms compute in.
fn bytes(dtype: DType) -> u64 {
    dtype.size() as u64
}

/// `a · b · …`, saturating: absurd sizes give `u64::MAX`, which no budget holds.
fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u64, |p, &f| p.saturating_mul(f))
}

/// Bytes of attention scores `[rows, heads, queries, keys]` in f32 (softmax doubles them),
/// as computed in chunks of at most [`ATTENTION_CHUNK_BYTES`].
fn attention_scores(rows: u64, heads: u64, queries: u64, keys: u64) -> u64 {
    product(&[rows, heads, queries, keys, 4])
        .min(ATTENTION_CHUNK_BYTES as u64)
        .saturating_mul(2)
}

/// One U-Net step on `rows` latents of `[h, w]` attending to `tokens` condition tokens: the
/// skip connections of every level, plus the largest block's temporaries (a transformer's
/// projections and GEGLU feed-forward, 8× wide; a resnet's norm in f32) and its attention.
pub fn unet_step(
    config: &UNetConfig,
    rows: u64,
    [h, w]: [u64; 2],
    tokens: u64,
    dtype: DType,
) -> u64 {
    let b = bytes(dtype);
    let mut skips = 0u64;
    let mut block = 0u64;
    for i in 0..config.block_out_channels.len() {
        let (h, w) = (h.div_ceil(1 << i), w.div_ceil(1 << i));
        let s = h.saturating_mul(w);
        let c = config.block_out_channels[i] as u64;
        let layers = config.layers_per_block.get(i) as u64;
        skips = skips.saturating_add(product(&[layers + 1, c, s, b]));
        let transformer = matches!(config.down_block(i), Ok(BlockKind::CrossAttention));
        let width = if transformer { 24 } else { 8 };
        let heads = config.heads(i) as u64;
        let attention = match transformer {
            true => {
                attention_scores(rows, heads, s, s).max(attention_scores(rows, heads, s, tokens))
            }
            false => 0,
        };
        // Up blocks concatenate a skip (up to 2c wide) before their resnet: 4c in f32.
        let here = product(&[width, c, s, b])
            .saturating_add(product(&[4, 2 * c, s, 4]))
            .saturating_add(attention);
        block = block.max(here);
    }
    skips.saturating_add(block).saturating_mul(rows)
}

/// Decoding `batch` latents of `[h, w]`: the largest up block's temporaries at its
/// resolution (the 2× nearest resize and its conv, a resnet's norm in f32) and the
/// single-head mid-block attention at the latent's; sliced and tiled decoding bound the
/// batch (and, tiled, the size) to one tile.
pub fn vae_decode(
    config: &VaeConfig,
    batch: u64,
    [h, w]: [u64; 2],
    mode: VaeDecode,
    dtype: DType,
) -> u64 {
    let tile = (config.sample_size / config.downscale_factor()) as u64;
    let (images, size) = match mode {
        VaeDecode::Whole => (batch, [h, w]),
        VaeDecode::Sliced => (1, [h, w]),
        VaeDecode::Tiled => (1, [h.min(tile), w.min(tile)]),
    };
    let work = decoder_levels(config, size, dtype, true);
    // The decoded images (and, tiled, their tiles) stay alive until the batch is done.
    let pixels = 1u64 << (2 * (config.block_out_channels.len() - 1));
    let outputs = product(&[batch, 3, h, w, pixels, 4, 3]);
    work.saturating_mul(images).saturating_add(outputs)
}

/// Encoding `batch` images of the latent size `[h, w]` (image-to-image's init image): the
/// encoder's levels, mirrored.
pub fn vae_encode(config: &VaeConfig, [h, w]: [u64; 2], dtype: DType) -> u64 {
    decoder_levels(config, [h, w], dtype, false)
}

/// The peak of one image through the VAE's levels (decoder: lowest resolution first).
fn decoder_levels(config: &VaeConfig, [h, w]: [u64; 2], dtype: DType, upsampling: bool) -> u64 {
    let b = bytes(dtype);
    let channels = &config.block_out_channels;
    let n = channels.len();
    let latent = h.saturating_mul(w);
    let mut peak = attention_scores(1, 1, latent, latent).saturating_add(product(&[
        8,
        channels[n - 1] as u64,
        latent,
        4,
    ]));
    for level in 0..n {
        // Level `level` from the top: full resolution at 0.
        let s = latent.saturating_mul(1 << (2 * (n - 1 - level)));
        let c = channels[level] as u64;
        let wider = match upsampling {
            true => channels
                .get(level + 1)
                .map_or(c, |&next| next as u64)
                .max(c),
            false => channels
                .get(level.wrapping_sub(1))
                .map_or(c, |&prev| prev as u64)
                .max(c),
        };
        let here = product(&[4, wider, s, b]).saturating_add(product(&[2, wider, s, 4]));
        peak = peak.max(here);
    }
    peak
}

/// T5 encoding `tokens` tokens of one prompt: the relative-position buckets and bias, the
/// padding mask and attention scores per head, and a block's feed-forward.
pub fn t5_encode(config: &T5Config, tokens: u64, dtype: DType) -> u64 {
    let heads = config.num_heads as u64;
    let square = tokens.saturating_mul(tokens);
    let bias = product(&[square, 8 + heads * (2 * bytes(dtype) + 1)]);
    let feed_forward = product(&[
        tokens,
        3 * config.d_ff as u64 + 8 * config.d_model as u64,
        4,
    ]);
    bias.saturating_add(attention_scores(1, heads, tokens, tokens))
        .saturating_add(feed_forward)
}

impl GenerateRequest {
    /// The rows the U-Net runs per step: the batch, twice with guidance.
    pub(crate) fn unet_rows(&self) -> u64 {
        let guided = self.guidance_scale > 1.0;
        self.batch_size as u64 * if guided { 2 } else { 1 }
    }
}
