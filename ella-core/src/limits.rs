//! Every hard limit on a size that comes from a file or a request, in one place. Each is far
//! above what real SD1.5, ELLA and T5 models and requests use, and low enough that nothing
//! sized by it can exhaust memory before the weights or the request are checked; what a
//! request may use within them is bounded by the memory budget
//! ([`crate::Pipeline::set_memory_budget`]).

use crate::error::{Error, Result};

/// The largest width (channels, hidden size, `d_kv`, cross-attention width) a config may give.
pub const MAX_WIDTH: usize = 1 << 16;
/// The most layers a config may give (T5 and CLIP layers, connector blocks).
pub const MAX_LAYERS: usize = 1024;
/// The largest vocabulary a config may give.
pub const MAX_VOCAB: usize = 1 << 22;
/// The most resolution levels (down blocks) a U-Net, VAE or ControlNet config may give.
pub const MAX_LEVELS: usize = 8;
/// The most resnets or transformer layers per block a config may give.
pub const MAX_BLOCK_LAYERS: usize = 64;
/// The most training timesteps a scheduler config may give (SD uses 1000).
pub const MAX_TRAIN_TIMESTEPS: usize = 100_000;
/// The largest JSON or text file read (configs, shard indexes, tokenizers): flan-t5's
/// `tokenizer.json` is 2.4 MB, CLIP's `vocab.json` 1.6 MB.
pub const MAX_TEXT_BYTES: u64 = 64 << 20;

/// The largest image side a request (or a PNG read) may have.
pub const MAX_IMAGE_SIDE: usize = 4096;
/// The largest batch a request may ask for.
pub const MAX_BATCH: usize = 64;
/// The most denoising steps a request may ask for (the training timesteps of SD).
pub const MAX_STEPS: usize = 1000;
/// ControlNet controls one request may use at once (each runs a ControlNet every step).
pub const MAX_CONTROLS: usize = 16;
/// The longest prompt (or negative prompt) in bytes of UTF-8.
pub const MAX_PROMPT_BYTES: usize = 1 << 20;
/// The most T5 tokens a prompt may have (flexible mode) or be padded to (fixed mode): T5's
/// attention bias grows with its square. ELLA was trained on 128.
pub const MAX_T5_TOKENS: usize = 4096;
/// The most 77-token chunks an A1111-weighted CLIP prompt may have (4,800 tokens; A1111 sets
/// no limit, and the U-Net's cross-attention grows with the count).
pub const MAX_CLIP_CHUNKS: usize = 64;
/// CPU threads of a pipeline's own pool (a typo such as 10000 would otherwise start them all).
pub const MAX_THREADS: usize = 1024;

/// Errors when a prompt is longer than [`MAX_PROMPT_BYTES`] (checked before tokenizing, whose
/// memory grows with the text).
pub fn check_prompt_lengths(prompts: &[&str]) -> Result<()> {
    match prompts.iter().find(|p| p.len() > MAX_PROMPT_BYTES) {
        Some(long) => Err(Error::InvalidInput(format!(
            "a prompt of {} bytes is longer than the {MAX_PROMPT_BYTES} read",
            long.len()
        ))),
        None => Ok(()),
    }
}
