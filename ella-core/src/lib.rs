//! # ella-core
//!
//! [ELLA](https://arxiv.org/abs/2403.05135) on [Burn](https://burn.dev): a frozen T5
//! encoder reads the prompt, and the Timestep-Aware Semantic Connector (TSC) turns its
//! hidden states into the condition tokens a Stable Diffusion 1.5 U-Net cross-attends to,
//! recomputed at every denoising step.
//!
//! Everything is generic over a backend `B`: a Burn backend with ella's [`Backend`]
//! extension (flex, ndarray, wgpu and CUDA have it). The CPU backend of this build is
//! [`DefaultBackend`].
//!
//! ```no_run
//! use ella_core::{Connector, ConnectorConfig, DefaultBackend, T5TextEncoder, TokenMode};
//!
//! # fn main() -> ella_core::Result<()> {
//! let device = Default::default();
//! let t5 = T5TextEncoder::<DefaultBackend>::load("models--google--flan-t5-xl--text_encoder", &device)?;
//! let ella = Connector::<DefaultBackend>::load(
//!     "ella-sd1.5-tsc-t5xl.safetensors",
//!     &ConnectorConfig::default(),
//!     &device,
//!     burn::tensor::DType::F32,
//! )?;
//! let states = t5.encode("a red book on a wooden table", TokenMode::Flexible)?;
//! let tokens = ella.forward(states, &[999.0])?; // [1, 64, 768]
//! # Ok(()) }
//! ```

mod attention;
pub mod backend;
pub mod cancel;
pub mod clip;
pub mod connector;
pub mod controlnet;
pub mod error;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub mod gpu;
pub mod limits;
pub mod lora;
mod nn;
pub mod pipeline;
pub mod prompt_syntax;
mod resnet;
pub mod scheduler;
pub mod sur_adapter;
pub mod t5;
pub mod threads;
pub mod unet;
pub mod vae;
pub mod weights;

pub use backend::Backend;
pub use cancel::Cancel;
pub use clip::{ClipTextConfig, ClipTextEncoder, ClipTextModel, ClipTokenizer, TextualInversion};
pub use connector::{Connector, ConnectorConfig};
pub use controlnet::{ControlNetConfig, ControlNetModel};
pub use error::{Error, Result};
pub use lora::{Lora, LoraReport};
pub use nn::{Activation, Seamless, SetSeamless};
pub use pipeline::{
    ClipText, Conditioning, Control, EllaPaths, GenerateRequest, Hooks, Image, InitImage, Mask,
    ModelPaths, Outpaint, Pipeline, PipelineParts, Precision, PreparedLoras, Preview,
    PreviewMethod, Previews, PromptStates, StatePair, SurOptions, T5Text, WorkingMemory,
    load_controlnet,
};
pub use prompt_syntax::PromptSyntax;
pub use scheduler::{Scheduler, SchedulerConfig, SchedulerKind, TimestepSchedule};
pub use sur_adapter::{SurAdapter, SurAdapterConfig, SurMode};
pub use t5::{T5Config, T5Encoder, T5Precision, T5TextEncoder, T5Tokenizer, TokenBatch, TokenMode};
pub use threads::Threads;
pub use unet::{ControlResiduals, UNet2DConditionModel, UNetConfig};
pub use vae::{AutoencoderKL, AutoencoderTiny, TinyConfig, VaeConfig, VaeDecode};
pub use weights::Checkpoint;

/// The CPU backend of this build: Burn's pure-Rust `flex` backend when the `flex` feature
/// is on (the default), otherwise `ndarray`.
#[cfg(feature = "flex")]
pub type DefaultBackend = burn::backend::Flex;
/// The CPU backend of this build: Burn's pure-Rust `flex` backend when the `flex` feature
/// is on (the default), otherwise `ndarray`.
#[cfg(all(feature = "ndarray", not(feature = "flex")))]
pub type DefaultBackend = burn::backend::NdArray;

/// Burn's CUDA backend, fused and autotuned. F32 matmuls run in TF32 on tensor cores, as
/// PyTorch's `allow_tf32`; use F16 or BF16 weights for speed.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda<f32, i32>;

/// Burn's wgpu backend (SPIR-V on Vulkan; WGSL on Metal and DX12), fused and autotuned.
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu<f32, i32, u32>;

/// Re-export of the Burn version this crate is built on.
pub use burn;
