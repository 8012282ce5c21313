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
pub use crate::nn::ATTENTION_CHUNK_BYTES;
use crate::t5::T5Config;
use crate::unet::{DownBlockType, UNetConfig};
use crate::vae::{TinyConfig, VaeConfig, VaeDecode};

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

/// Bytes of one element of `dtype`.
fn bytes(dtype: DType) -> u64 {
    dtype.size() as u64
}

/// What a backend allocates for itself during a call whatever its sizes (GEMM packing
/// buffers per thread, kernels' scratch): measured at about 1 MB on the flex backend.
pub const BACKEND_SCRATCH: u64 = 16 << 20;

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

/// One U-Net step on `rows` latents of `[h, w]` attending to `tokens` condition tokens: per
/// row, the skip connections of every level plus the largest block's temporaries (a
/// transformer's projections and GEGLU feed-forward, 24× its width; a resnet's, with the
/// norm in f32; an up block's concatenated input), and the largest attention's scores.
pub fn unet_step(
    config: &UNetConfig,
    rows: u64,
    [h, w]: [u64; 2],
    tokens: u64,
    dtype: DType,
) -> u64 {
    let b = bytes(dtype);
    let (mut skips, mut block, mut attention) = (0u64, 0u64, 0u64);
    for i in 0..config.block_out_channels.len() {
        let s = h.div_ceil(1 << i).saturating_mul(w.div_ceil(1 << i));
        let c = config.block_out_channels[i] as u64;
        let layers = config.layers_per_block.get(i) as u64;
        skips = skips.saturating_add(product(&[layers + 1, c, s, b]));
        let transformer = config.down_block_types[i] == DownBlockType::CrossAttention;
        let width = if transformer { 24 } else { 8 };
        let here = product(&[width, c, s, b]).saturating_add(product(&[4, 2 * c, s, 4]));
        block = block.max(here);
        if transformer {
            let heads = config.heads(i) as u64;
            let scores = attention_scores(rows, heads, s, s.max(tokens));
            attention = attention.max(scores);
        }
    }
    skips
        .saturating_add(block)
        .saturating_mul(rows)
        .saturating_add(attention)
        .saturating_add(BACKEND_SCRATCH)
}

/// Decoding `batch` latents of `[h, w]`: per image at once, the largest up block's
/// temporaries at its resolution (the 2× nearest resize and its conv, a resnet's norm in
/// f32), the single-head mid-block attention at the latent's size, and the decoded images.
/// Sliced decoding takes one image at a time, tiled one tile.
pub fn vae_decode(
    config: &VaeConfig,
    batch: u64,
    [h, w]: [u64; 2],
    mode: VaeDecode,
    dtype: DType,
) -> u64 {
    let tile = (config.sample_size / config.downscale_factor()) as u64;
    let (images, [th, tw]) = match mode {
        VaeDecode::Whole | VaeDecode::Tiny => (batch, [h, w]),
        VaeDecode::Sliced => (1, [h, w]),
        VaeDecode::Tiled => (1, [h.min(tile), w.min(tile)]),
    };
    let latent = th.saturating_mul(tw);
    let work = vae_levels(config, [th, tw], dtype, true).saturating_mul(images);
    let attention = attention_scores(images, 1, latent, latent);
    // The decoded images (and, tiled, their tiles) stay alive until the batch is done.
    let pixels = 1u64 << (2 * (config.block_out_channels.len() - 1));
    let outputs = product(&[batch, 3, h, w, pixels, 4, 3]);
    work.saturating_add(attention)
        .saturating_add(outputs)
        .saturating_add(BACKEND_SCRATCH)
}

/// Decoding `batch` latents of `[h, w]` with TAESD: at each decoder level four tensors of
/// its width at its resolution (a block's convolutions and the skip), and the images.
pub fn taesd_decode(config: &TinyConfig, batch: u64, [h, w]: [u64; 2], dtype: DType) -> u64 {
    let widths = &config.decoder_block_out_channels;
    let factor = config.upsampling_scaling_factor as u64;
    let mut side = 1u64;
    let mut peak = 0u64;
    for &width in widths {
        let pixels = product(&[h, w, side, side]);
        peak = peak.max(product(&[4, batch, width as u64, pixels, bytes(dtype)]));
        side = side.saturating_mul(factor);
    }
    let full = config.upscale_factor() as u64;
    let outputs = product(&[batch, 3, h, w, full, full, 4, 3]);
    peak.saturating_add(outputs).saturating_add(BACKEND_SCRATCH)
}

/// Encoding one image (image-to-image's init image, of latent size `[h, w]`): the
/// encoder's levels and its mid-block attention.
pub fn vae_encode(config: &VaeConfig, [h, w]: [u64; 2], dtype: DType) -> u64 {
    let latent = h.saturating_mul(w);
    vae_levels(config, [h, w], dtype, false)
        .saturating_add(attention_scores(1, 1, latent, latent))
        .saturating_add(BACKEND_SCRATCH)
}

/// The peak of one image through the VAE's levels (of latent size `[h, w]`): at each
/// level, four tensors of the wider of its and its neighbour's channels (decoder: the
/// level below, which upsamples into it) and a norm's two in f32.
fn vae_levels(config: &VaeConfig, [h, w]: [u64; 2], dtype: DType, decoder: bool) -> u64 {
    let b = bytes(dtype);
    let channels = &config.block_out_channels;
    let n = channels.len();
    let latent = h.saturating_mul(w);
    let mut peak = product(&[8, channels[n - 1] as u64, latent, 4]);
    for level in 0..n {
        // Level 0 is the full resolution.
        let s = latent.saturating_mul(1 << (2 * (n - 1 - level)));
        let c = channels[level] as u64;
        let neighbour = match decoder {
            true => channels.get(level + 1),
            false => level.checked_sub(1).and_then(|l| channels.get(l)),
        };
        let wider = neighbour.map_or(c, |&other| other as u64).max(c);
        let here = product(&[4, wider, s, b]).saturating_add(product(&[2, wider, s, 4]));
        peak = peak.max(here);
    }
    peak
}

/// T5 encoding `tokens` tokens of one prompt: the relative-position buckets, the bias and
/// padding mask per head, the attention scores and a block's feed-forward.
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
        .saturating_add(BACKEND_SCRATCH)
}

impl GenerateRequest {
    /// The rows the U-Net runs per step: the batch, twice with guidance.
    pub(crate) fn unet_rows(&self) -> u64 {
        let guided = self.guidance_scale > 1.0;
        self.batch_size as u64 * if guided { 2 } else { 1 }
    }
}
