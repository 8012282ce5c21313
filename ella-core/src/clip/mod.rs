//! SD1.5's text encoder: CLIP ViT-L/14's text transformer (transformers' `CLIPTextModel`) and
//! its byte-level BPE tokenizer, 77 tokens. Plain SD1.5 conditions on its last hidden state;
//! ELLA's community mode appends it to the connector's tokens.

mod config;
mod model;
mod tokenizer;

pub use config::ClipTextConfig;
pub use model::{ClipEncoderLayer, ClipTextModel};
pub use tokenizer::{CLIP_TOKENS, ClipTokenizer};
