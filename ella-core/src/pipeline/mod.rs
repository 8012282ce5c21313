//! `Pipeline<B>`: ELLA text-to-image. T5 encodes the prompt and the negative prompt once;
//! at every denoising step the connector turns them into condition tokens for exactly the
//! timestep the U-Net gets, classifier-free guidance runs both branches as one U-Net batch
//! (negative first, as diffusers), the scheduler steps, and the VAE decodes the result.
//!
//! The same pipeline also conditions on SD's own CLIP text encoder (plain SD1.5, the
//! baseline), or on ELLA's tokens followed by CLIP's (ComfyUI-ELLA's mode, which keeps LoRA
//! trigger words working): see [`Conditioning`].
//!
//! ```no_run
//! use ella_core::burn::tensor::DType;
//! use ella_core::{DefaultBackend as B, GenerateRequest, ModelPaths, Pipeline};
//!
//! # fn main() -> ella_core::Result<()> {
//! let paths = ModelPaths::ella(
//!     "models--google--flan-t5-xl--text_encoder",
//!     "ella-sd1.5-tsc-t5xl.safetensors",
//!     "stable-diffusion-v1-5", // diffusers layout (unet/, vae/, scheduler/) or a single file
//! );
//! let pipeline = Pipeline::<B>::load(&paths, &Default::default(), DType::F32)?;
//! let images = pipeline.generate(&GenerateRequest::new("a red book on a wooden table"))?;
//! images[0].save_png("book.png")
//! # }
//! ```

mod image;
mod inpaint;
pub mod ldm;
mod load;
pub mod memory;
pub mod noise;
pub mod preview;
mod request;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;

use crate::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

pub use image::Image;
pub use inpaint::{Mask, Outpaint};
pub use load::{EllaPaths, ModelPaths, load_controlnet};
pub use memory::WorkingMemory;
pub use preview::{Preview, PreviewMethod, Previews};
pub use request::{
    ClipText, Conditioning, Control, GenerateRequest, InitImage, SurOptions, T5Text,
};

use crate::cancel::Cancel;
use crate::clip::{CLIP_TOKENS, ClipTextEncoder, TextualInversion};
use crate::connector::{Connector, ConnectorConfig};
use crate::controlnet::ControlNetModel;
use crate::error::{Error, Result};
use crate::lora::{self, Lora, LoraReport, Target};
use crate::nn::{Seamless, SetSeamless};
use crate::prompt_syntax::PromptSyntax;
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::sur_adapter::{SurAdapter, SurMode};
use crate::t5::{T5Precision, T5TextEncoder, TokenMode};
use crate::threads::Threads;
use crate::unet::ldm_names::UNetLayout;
use crate::unet::{ControlResiduals, UNet2DConditionModel};
use crate::vae::{AutoencoderKL, AutoencoderTiny, VaeDecode};

/// One text encoder's states of a request's negative and positive prompt, `[1, tokens,
/// width]` each.
#[derive(Debug, Clone)]
pub struct StatePair<B: Backend> {
    pub uncond: Tensor<B, 3>,
    pub cond: Tensor<B, 3>,
}

/// The encoded prompts a request's conditioning needs: T5's for ELLA, CLIP's for CLIP (and
/// both for ELLA + CLIP). Compute them once to sample several times, or without keeping the
/// text encoders loaded.
#[derive(Debug, Clone)]
pub struct PromptStates<B: Backend> {
    /// T5's last hidden states (ELLA conditioning).
    pub t5: Option<StatePair<B>>,
    /// CLIP's last hidden states (CLIP conditioning): 77 tokens, or 77 per 75-token chunk of
    /// an A1111-weighted prompt.
    pub clip: Option<StatePair<B>>,
}

/// Receives `(steps done, total steps)`.
pub type ProgressFn<'a> = Box<dyn FnMut(usize, usize) + 'a>;
/// Receives a named intermediate tensor.
pub type TensorSink<'a> = Box<dyn FnMut(&str, TensorData) + 'a>;

/// Optional callbacks of a generation.
#[derive(Default)]
pub struct Hooks<'a> {
    /// Called after each denoising step with `(steps done, total steps)`.
    pub progress: Option<ProgressFn<'a>>,
    /// Checked between the blocks of every model call (T5 layers, U-Net and ControlNet
    /// blocks, VAE levels and tiles); once set, the call returns [`Error::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
    /// Receives the intermediate tensors (see `examples/generate.rs --dump-dir` for names).
    pub tensors: Option<TensorSink<'a>>,
    /// Live previews every few steps.
    pub preview: Option<Previews<'a>>,
}

impl Hooks<'_> {
    fn dump<const D: usize, B: Backend>(&mut self, name: &str, tensor: &Tensor<B, D>) {
        if let Some(sink) = &mut self.tensors {
            sink(name, tensor.to_data().convert::<f32>());
        }
    }
}

/// ELLA on SD1.5: T5 and the connector, SD's CLIP text encoder (each optional), the U-Net,
/// the VAE and the scheduler config.
#[derive(Debug)]
pub struct Pipeline<B: Backend> {
    t5: Option<T5TextEncoder<B>>,
    connector: Option<Connector<B>>,
    clip: Option<ClipTextEncoder<B>>,
    unet: UNet2DConditionModel<B>,
    vae: AutoencoderKL<B>,
    scheduler_config: SchedulerConfig,
    /// The ControlNets requests' [`Control`]s pick from, by index.
    controlnets: Vec<ControlNetModel<B>>,
    sur_adapter: Option<SurAdapter<B>>,
    /// TAESD, for tiny previews and decodes.
    tiny_vae: Option<AutoencoderTiny<B>>,
    /// The weights the current LoRAs changed, per model (restored by the next `set_loras`).
    lora_changed: BTreeMap<Target, BTreeSet<String>>,
    /// The host's working-memory budget in bytes; `None`: what the machine has free.
    memory_budget: Option<u64>,
    /// The CPU threads the models run on.
    threads: Threads,
}

/// LoRA files read and checked against a pipeline's models ([`Pipeline::prepare_loras`]),
/// to apply with [`Pipeline::apply_loras`].
#[derive(Debug)]
pub struct PreparedLoras {
    updates: Vec<lora::Update>,
    report: LoraReport,
}

/// The models of a pipeline, for [`Pipeline::from_parts`].
#[derive(Debug)]
pub struct PipelineParts<B: Backend> {
    pub t5: Option<T5TextEncoder<B>>,
    pub connector: Option<Connector<B>>,
    pub clip: Option<ClipTextEncoder<B>>,
    pub unet: UNet2DConditionModel<B>,
    pub vae: AutoencoderKL<B>,
    pub scheduler_config: SchedulerConfig,
}

/// The float types a pipeline computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// T5's (the official code: the whole encoder in F16).
    pub t5: T5Precision,
    /// The connector's, CLIP's, the U-Net's and the VAE's.
    pub diffusion: DType,
}

impl Precision {
    /// Every model in `dtype` (F32, F16 or BF16), T5 included, `wo` too.
    pub fn uniform(dtype: DType) -> Result<Self> {
        Ok(Self {
            t5: T5Precision::uniform(dtype)?,
            diffusion: dtype,
        })
    }
}

impl<B: Backend> Pipeline<B> {
    /// Loads all models with weights in `dtype` (F32 on CPU backends; F16 as the official
    /// code on GPUs, BF16 on CUDA).
    pub fn load(paths: &ModelPaths, device: &B::Device, dtype: DType) -> Result<Self> {
        Self::load_with_precision(paths, device, Precision::uniform(dtype)?)
    }

    /// Loads all models, T5 and the diffusion models each in their own precision.
    pub fn load_with_precision(
        paths: &ModelPaths,
        device: &B::Device,
        precision: Precision,
    ) -> Result<Self> {
        let dtype = precision.diffusion;
        let (t5, connector) = match &paths.ella {
            Some(ella) => {
                let config = match &ella.config {
                    Some(path) => ConnectorConfig::from_file(path)?,
                    None => ConnectorConfig::default(),
                };
                (
                    Some(T5TextEncoder::load_with_precision(
                        &ella.t5,
                        device,
                        precision.t5,
                    )?),
                    Some(Connector::load(&ella.connector, &config, device, dtype)?),
                )
            }
            None => (None, None),
        };
        let sd = load::load_sd(paths, device, dtype)?;
        let mut pipeline = Self::from_parts(PipelineParts {
            t5,
            connector,
            clip: sd.clip,
            unet: sd.unet,
            vae: sd.vae,
            scheduler_config: sd.scheduler_config,
        })?;
        if let Some(path) = &paths.sur_adapter {
            let adapter = SurAdapter::load(path, SUR_HEADS, device, dtype)?;
            pipeline.set_sur_adapter(Some(adapter))?;
        }
        let controlnets = paths
            .controlnets
            .iter()
            .map(|path| load::load_controlnet(path, &pipeline.unet.config, device, dtype))
            .collect::<Result<_>>()?;
        pipeline.set_controlnets(controlnets)?;
        if !paths.embeddings.is_empty() {
            let embeddings = paths
                .embeddings
                .iter()
                .map(TextualInversion::load)
                .collect::<Result<Vec<_>>>()?;
            pipeline.add_embeddings(&embeddings)?;
        }
        if let Some(path) = &paths.taesd {
            pipeline.set_tiny_vae(Some(AutoencoderTiny::load(path, device, dtype)?))?;
        }
        if !paths.loras.is_empty() {
            pipeline.set_loras(&paths.loras)?;
        }
        Ok(pipeline)
    }

    /// Applies `loras` (each with its scale) to the U-Net and, when loaded, CLIP, replacing
    /// the LoRAs set before (an empty list restores the original weights). Every file is read
    /// and checked before any weight changes; only the weights the LoRAs touch are rebuilt,
    /// from the original values, so no model is reloaded. Text-encoder parts are skipped
    /// without CLIP (ELLA conditioning does not read it), and reported.
    pub fn set_loras(&mut self, loras: &[Lora]) -> Result<LoraReport> {
        let prepared = self.prepare_loras(loras)?;
        self.apply_loras(prepared)
    }

    /// The first half of [`Pipeline::set_loras`], which needs only shared access (a host can
    /// keep generating meanwhile): reads the files and checks them against the models.
    pub fn prepare_loras(&self, loras: &[Lora]) -> Result<PreparedLoras> {
        let mut report = LoraReport::default();
        let mut updates = Vec::new();
        let clip_index = self.clip.as_ref().map(|c| &c.model.weights);
        let layout = UNetLayout::of_config(&self.unet.config);
        for lora in loras {
            updates.extend(lora::read_updates(
                lora,
                &self.unet.weights,
                &layout,
                clip_index,
                &mut report,
            )?);
        }
        Ok(PreparedLoras { updates, report })
    }

    /// The second half of [`Pipeline::set_loras`]: rebuilds the weights. On an error (a
    /// weight file changed on disk, a merged weight that is not finite) no weight changes.
    pub fn apply_loras(&mut self, prepared: PreparedLoras) -> Result<LoraReport> {
        let PreparedLoras {
            updates,
            mut report,
        } = prepared;
        let device = self.device();
        let mut merge = lora::Merge::new(&updates, &self.lora_changed, &device);
        let unet = merge.model(self.unet.clone(), &self.unet.weights, Target::Unet)?;
        let clip = match &self.clip {
            Some(clip) => {
                Some(merge.model(clip.model.clone(), &clip.model.weights, Target::Clip)?)
            }
            None => None,
        };
        let changed = merge.changed;
        self.unet = unet;
        if let (Some(encoder), Some(model)) = (&mut self.clip, clip) {
            encoder.model = model;
        }
        report.updated = changed.values().map(BTreeSet::len).sum();
        self.lora_changed = changed;
        Ok(report)
    }

    /// Assembles a pipeline from loaded models, checking that they fit together.
    pub fn from_parts(parts: PipelineParts<B>) -> Result<Self> {
        let incompatible = |m: String| Err(Error::IncompatibleModels(m));
        if parts.connector.is_none() && parts.clip.is_none() {
            return incompatible(
                "no text conditioning: load ELLA's connector, SD's CLIP text encoder, or both"
                    .into(),
            );
        }
        let unet_config = &parts.unet.config;
        let context = unet_config.cross_attention_dim.get(0);
        if let Some(width) = (0..unet_config.block_out_channels.len())
            .map(|i| unet_config.cross_attention_dim.get(i))
            .find(|&w| w != context)
        {
            return incompatible(format!(
                "the U-Net's cross-attention widths differ between blocks ({context} and {width})"
            ));
        }
        if let Some(connector) = &parts.connector {
            let tokens = connector.config.output_width();
            if tokens != context {
                return incompatible(format!(
                    "the connector makes {tokens}-wide condition tokens but the U-Net's \
                     cross-attention is {context} wide (ELLA's SD1.5 connector needs an SD1.5 \
                     U-Net, 768)"
                ));
            }
        }
        if let (Some(t5), Some(connector)) = (&parts.t5, &parts.connector)
            && t5.encoder.config.d_model != connector.config.input_dim
        {
            return incompatible(format!(
                "the T5 encoder is {} wide but the connector reads {}-wide states",
                t5.encoder.config.d_model, connector.config.input_dim
            ));
        }
        if let Some(clip) = &parts.clip
            && clip.model.config.hidden_size != context
        {
            return incompatible(format!(
                "the CLIP text encoder is {} wide but the U-Net's cross-attention is {context}",
                clip.model.config.hidden_size
            ));
        }
        let latent = parts.vae.config.latent_channels;
        // An inpainting U-Net also reads the mask and the masked image's latents.
        let inputs = [latent, 2 * latent + 1];
        if !inputs.contains(&unet_config.in_channels) || unet_config.out_channels != latent {
            return incompatible(format!(
                "the VAE has {latent} latent channels but the U-Net takes {} (not {latent}, or \
                 {} for inpainting) and predicts {}",
                unet_config.in_channels,
                2 * latent + 1,
                unet_config.out_channels
            ));
        }
        Ok(Self {
            t5: parts.t5,
            connector: parts.connector,
            clip: parts.clip,
            unet: parts.unet,
            vae: parts.vae,
            scheduler_config: parts.scheduler_config,
            controlnets: Vec::new(),
            sur_adapter: None,
            tiny_vae: None,
            lora_changed: BTreeMap::new(),
            memory_budget: None,
            threads: Threads::all_cores(),
        })
    }

    /// Sets the CPU threads the models run on ([`Threads::all_cores`] by default). Host
    /// callbacks still run on the thread that calls the pipeline. Loading runs wherever it is
    /// called: wrap it in [`Threads::install`] to load on the same threads.
    pub fn set_threads(&mut self, threads: Threads) {
        self.threads = threads;
    }

    /// The CPU threads the models run on.
    pub fn threads(&self) -> &Threads {
        &self.threads
    }

    /// Sets how much working memory a request may use, in bytes (`None`, the default: the
    /// memory the machine, or its cgroup, has free when the request starts). A request
    /// that needs more is refused with [`Error::OutOfMemory`] before it allocates anything.
    /// On GPU backends the tensors live in device memory: give the device's share here.
    pub fn set_memory_budget(&mut self, bytes: Option<u64>) {
        self.memory_budget = bytes;
    }

    /// The working-memory budget in bytes now (see [`Pipeline::set_memory_budget`]).
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget.unwrap_or_else(memory::available)
    }

    /// What `request` will need of working memory, by phase, estimated from its sizes and
    /// the models' configs (T5's part depends on the prompts' token counts and is checked
    /// when they are encoded).
    pub fn working_memory(&self, request: &GenerateRequest) -> Result<WorkingMemory> {
        let factor = self.vae.config.downscale_factor();
        let [h, w] = request.validate(factor, self.vae.config.latent_channels)?;
        let latent = [h as u64, w as u64];
        let dtype = self.dtype();
        let rows = request.unet_rows();
        let ella = match request.conditioning.uses_t5() {
            true => self.connector.as_ref().map_or(0, |c| c.config.num_latents),
            false => 0,
        };
        let clip = match request.conditioning.uses_clip() {
            true => self.clip_tokens(request)?,
            false => 0,
        };
        let tokens = (ella + clip) as u64;
        let mut denoising = memory::unet_step(&self.unet.config, rows, latent, tokens, dtype);
        // The ControlNets run one after the other; their residuals add up as they go.
        if let Some(controlnet) = request
            .controls
            .first()
            .and_then(|c| self.controlnets.get(c.controlnet))
        {
            let step = memory::unet_step(&controlnet.config.unet, rows, latent, tokens, dtype);
            denoising = denoising.saturating_add(step);
        }
        let encoding = match &request.init_image {
            Some(_) => memory::vae_encode(&self.vae.config, latent, dtype),
            None => 0,
        };
        let batch = request.batch_size as u64;
        let decoding = match (request.vae_decode, &self.tiny_vae) {
            (VaeDecode::Tiny, Some(tiny)) => {
                memory::taesd_decode(&tiny.config, batch, latent, dtype)
            }
            (how, _) => memory::vae_decode(&self.vae.config, batch, latent, how, dtype),
        };
        Ok(WorkingMemory {
            encoding,
            denoising,
            decoding,
        })
    }

    /// Sets (or removes) the SUR-adapter of `ClipSur` requests, after checking that it is as
    /// wide as the loaded CLIP.
    pub fn set_sur_adapter(&mut self, adapter: Option<SurAdapter<B>>) -> Result<()> {
        if let Some(adapter) = &adapter {
            let clip = self.clip.as_ref().ok_or_else(|| {
                Error::IncompatibleModels(
                    "a SUR-adapter rewrites CLIP's states: load CLIP too (ModelPaths::clip)".into(),
                )
            })?;
            let (theirs, ours) = (adapter.config.width, clip.model.config.hidden_size);
            if theirs != ours {
                return Err(Error::IncompatibleModels(format!(
                    "the SUR-adapter is {theirs} wide but the CLIP text encoder is {ours}"
                )));
            }
        }
        self.sur_adapter = adapter;
        Ok(())
    }

    /// The CLIP states a `ClipSur` request conditions on: the adapter applied once to the
    /// negative and the positive prompt together (with guidance, as the official pipeline
    /// passes them), or to the positive alone. Prompts of different lengths (A1111-weighted
    /// CLIP prompts of different chunk counts) are adapted apart, which only the per-token
    /// mode allows: the faithful one mixes the two prompts at each position.
    fn adapt(
        &self,
        clip: &StatePair<B>,
        options: SurOptions,
        guided: bool,
    ) -> Result<StatePair<B>> {
        let adapter = self.sur_adapter.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "ClipSur conditioning needs a SUR-adapter, which was not loaded".into(),
            )
        })?;
        let SurOptions { weight, mode } = options;
        if guided && clip.uncond.dims() != clip.cond.dims() {
            if mode == SurMode::Faithful {
                return Err(Error::InvalidInput(format!(
                    "the SUR-adapter's faithful mode reads the prompt and the negative prompt \
                     together, which need the same length: they are {} and {} CLIP tokens \
                     (give both as many 75-token chunks, use PromptSyntax::Literal, or the \
                     per-token mode)",
                    clip.cond.dims()[1],
                    clip.uncond.dims()[1]
                )));
            }
            return Ok(StatePair {
                uncond: adapter.forward(clip.uncond.clone(), weight, mode)?,
                cond: adapter.forward(clip.cond.clone(), weight, mode)?,
            });
        }
        if !guided {
            let cond = adapter.forward(clip.cond.clone(), weight, mode)?;
            return Ok(StatePair {
                uncond: clip.uncond.clone(),
                cond,
            });
        }
        let both = adapter.forward(
            Tensor::cat(vec![clip.uncond.clone(), clip.cond.clone()], 0),
            weight,
            mode,
        )?;
        Ok(StatePair {
            uncond: both.clone().narrow(0, 0, 1),
            cond: both.narrow(0, 1, 1),
        })
    }

    /// The ControlNets requests' [`Control`]s pick from, by index.
    pub fn controlnets(&self) -> &[ControlNetModel<B>] {
        &self.controlnets
    }

    /// ELLA's connector, if ELLA was loaded.
    pub fn connector(&self) -> Option<&Connector<B>> {
        self.connector.as_ref()
    }

    /// The U-Net. Read-only: its weights change through [`Pipeline::set_loras`], which
    /// keeps the original values to restore.
    pub fn unet(&self) -> &UNet2DConditionModel<B> {
        &self.unet
    }

    /// The VAE.
    pub fn vae(&self) -> &AutoencoderKL<B> {
        &self.vae
    }

    /// The scheduler config requests are sampled with (the SD folder's `scheduler/`).
    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The device the diffusion models live on.
    pub fn device(&self) -> B::Device {
        self.unet.conv_in.weight.device()
    }

    /// The float type the diffusion models compute in.
    fn dtype(&self) -> DType {
        self.unet.conv_in.weight.val().dtype()
    }

    /// Sets the ControlNets requests' [`Control`]s pick from (index `i` of the list is
    /// `Control::controlnet` `i`; an empty list removes them), after checking that each was
    /// made for this U-Net's architecture and this VAE's image size.
    pub fn set_controlnets(&mut self, controlnets: Vec<ControlNetModel<B>>) -> Result<()> {
        for (i, controlnet) in controlnets.iter().enumerate() {
            let (theirs, ours) = (&controlnet.config.unet, &self.unet.config);
            let same = theirs.block_out_channels == ours.block_out_channels
                && theirs.down_block_types == ours.down_block_types
                && theirs.layers_per_block == ours.layers_per_block
                // An inpainting U-Net's ControlNet reads the latents alone.
                && theirs.in_channels == self.vae.config.latent_channels
                && theirs.cross_attention_dim.get(0) == ours.cross_attention_dim.get(0);
            if !same {
                return Err(Error::IncompatibleModels(format!(
                    "ControlNet {i}'s down path (blocks {:?}, cross-attention {}) is not this \
                     U-Net's (blocks {:?}, cross-attention {}): a ControlNet for another model",
                    theirs.block_out_channels,
                    theirs.cross_attention_dim.get(0),
                    ours.block_out_channels,
                    ours.cross_attention_dim.get(0)
                )));
            }
            let (image, vae) = (
                controlnet.config.image_downscale(),
                self.vae.config.downscale_factor(),
            );
            if image != vae {
                return Err(Error::IncompatibleModels(format!(
                    "ControlNet {i} reads images {image}× the latent's size but the VAE's factor \
                     is {vae}"
                )));
            }
        }
        self.controlnets = controlnets;
        Ok(())
    }

    /// Sets (or removes) TAESD, for [`PreviewMethod::Tiny`] and [`VaeDecode::Tiny`], after
    /// checking that it reads this VAE's latents and makes images of the same size.
    pub fn set_tiny_vae(&mut self, tiny: Option<AutoencoderTiny<B>>) -> Result<()> {
        if let Some(tiny) = &tiny {
            let (theirs, ours) = (&tiny.config, &self.vae.config);
            if theirs.latent_channels != ours.latent_channels
                || theirs.upscale_factor() != ours.downscale_factor()
            {
                return Err(Error::IncompatibleModels(format!(
                    "TAESD decodes {} latent channels {}× up, but the VAE has {} latent \
                     channels {}× down",
                    theirs.latent_channels,
                    theirs.upscale_factor(),
                    ours.latent_channels,
                    ours.downscale_factor()
                )));
            }
        }
        self.tiny_vae = tiny;
        Ok(())
    }

    /// TAESD, if one is set.
    pub fn tiny_vae(&self) -> Option<&AutoencoderTiny<B>> {
        self.tiny_vae.as_ref()
    }

    /// The T5 encoder, unless it was unloaded (or never loaded).
    pub fn t5(&self) -> Option<&T5TextEncoder<B>> {
        self.t5.as_ref()
    }

    /// SD's CLIP text encoder, if it was loaded.
    pub fn clip(&self) -> Option<&ClipTextEncoder<B>> {
        self.clip.as_ref()
    }

    /// Adds textual-inversion embeddings to CLIP ([`ClipTextEncoder::add_embeddings`]): their
    /// names work in CLIP's prompts (plain SD, SUR-adapter, ELLA + CLIP), positive and
    /// negative, from the next request on.
    pub fn add_embeddings(&mut self, embeddings: &[TextualInversion]) -> Result<()> {
        let clip = self.clip.as_mut().ok_or_else(|| {
            Error::InvalidInput(
                "textual-inversion embeddings live in CLIP, which was not loaded \
                 (ModelPaths::clip)"
                    .into(),
            )
        })?;
        clip.add_embeddings(embeddings)
    }

    /// Takes T5 out of the pipeline and hands it to the caller (to keep or move elsewhere);
    /// encode prompts first ([`Pipeline::encode_prompts`]) and pass them to
    /// [`Pipeline::generate_with`]. To release its memory, use
    /// [`Pipeline::free_t5`].
    pub fn unload_t5(&mut self) -> Option<T5TextEncoder<B>> {
        self.t5.take()
    }

    /// Drops T5 and returns its memory to the device (Burn's GPU backends keep freed
    /// buffers pooled until asked): sampling from encoded prompts then needs only the
    /// connector, U-Net and VAE resident.
    pub fn free_t5(&mut self) {
        if let Some(t5) = self.unload_t5() {
            let device = t5.encoder.shared.device();
            drop(t5);
            B::memory_cleanup(&device);
        }
    }

    /// The states `conditioning` needs of the negative and positive prompts. T5's, as `t5`
    /// says: in flexible mode each keeps its own length (never padded, as the reference); in
    /// fixed mode both have the fixed length. CLIP's, of `clip`'s prompts when it has its own:
    /// 77 tokens each, or 77 per chunk of an A1111-weighted prompt (then the two may differ).
    pub fn encode_prompts(
        &self,
        prompt: &str,
        negative: &str,
        t5: T5Text,
        conditioning: Conditioning,
        clip: &ClipText,
    ) -> Result<PromptStates<B>> {
        self.encode_prompts_with(prompt, negative, t5, conditioning, clip, Cancel::NEVER)
    }

    /// The states `request` needs: [`Pipeline::encode_prompts`] of its prompts, as it reads
    /// them. Encode once to generate several times, or to free T5 before sampling.
    pub fn encode_request(&self, request: &GenerateRequest) -> Result<PromptStates<B>> {
        self.encode_prompts(
            &request.prompt,
            &request.negative_prompt,
            request.t5,
            request.conditioning,
            &request.clip,
        )
    }

    /// [`Pipeline::encode_prompts`], stopping between T5's layers once `cancel` is set.
    pub fn encode_prompts_with(
        &self,
        prompt: &str,
        negative: &str,
        t5: T5Text,
        conditioning: Conditioning,
        clip: &ClipText,
        cancel: Cancel,
    ) -> Result<PromptStates<B>> {
        self.threads.install(|| {
            let t5_states = match conditioning.uses_t5() {
                true => Some(StatePair {
                    uncond: self.encode_prompt_with(&t5.text(negative), t5.mode, cancel)?,
                    cond: self.encode_prompt_with(&t5.text(prompt), t5.mode, cancel)?,
                }),
                false => None,
            };
            let clip_states = match conditioning.uses_clip() {
                true => {
                    let encoder = self.clip_for(conditioning)?;
                    let [clip_prompt, clip_negative] = clip.texts(prompt, negative);
                    let encode = |text: &str| match clip.syntax {
                        PromptSyntax::A1111 => encoder.encode_weighted(text, clip.skip),
                        PromptSyntax::Literal => encoder.encode_skip(text, clip.skip),
                    };
                    Some(StatePair {
                        uncond: encode(clip_negative)?,
                        cond: encode(clip_prompt)?,
                    })
                }
                false => None,
            };
            Ok(PromptStates {
                t5: t5_states,
                clip: clip_states,
            })
        })
    }

    /// SD's CLIP text encoder, which `conditioning` needs.
    fn clip_for(&self, conditioning: Conditioning) -> Result<&ClipTextEncoder<B>> {
        self.clip.as_ref().ok_or_else(|| {
            Error::InvalidInput(format!(
                "{conditioning:?} conditioning needs SD's CLIP text encoder; load it \
                 (ModelPaths::clip)"
            ))
        })
    }

    /// How many CLIP tokens the longer of a request's two CLIP prompts gives (77 per chunk
    /// of an A1111-weighted prompt); CLIP's tokenizer is quick to run.
    fn clip_tokens(&self, request: &GenerateRequest) -> Result<usize> {
        let clip = &request.clip;
        let chunks = match (clip.syntax, &self.clip) {
            (PromptSyntax::A1111, Some(encoder)) => {
                let texts = clip.texts(&request.prompt, &request.negative_prompt);
                let mut most = 1;
                for text in texts {
                    let parsed = crate::prompt_syntax::parse(text)?;
                    most = most.max(encoder.tokenizer.chunks(&parsed)?.len());
                }
                most
            }
            _ => 1,
        };
        Ok(chunks * CLIP_TOKENS)
    }

    /// T5 states `[1, tokens, d_model]` of one prompt.
    pub fn encode_prompt(&self, prompt: &str, mode: TokenMode) -> Result<Tensor<B, 3>> {
        self.threads
            .install(|| self.encode_prompt_with(prompt, mode, Cancel::NEVER))
    }

    /// [`Pipeline::encode_prompt`] within the memory budget (checked once the prompt's
    /// token count is known), stopping between layers once `cancel` is set.
    fn encode_prompt_with(
        &self,
        prompt: &str,
        mode: TokenMode,
        cancel: Cancel,
    ) -> Result<Tensor<B, 3>> {
        let t5 = self.t5.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "the T5 text encoder was freed or not loaded; pass prompt states encoded \
                 before, or load ELLA"
                    .into(),
            )
        })?;
        let tokens = t5.tokenizer.encode(&[prompt], mode)?;
        let length = tokens.ids[0].len();
        let dtype = t5.encoder.shared.val().dtype();
        let needed = memory::t5_encode(&t5.encoder.config, length as u64, dtype);
        memory::check(
            &format!("T5 on a prompt of {length} tokens"),
            needed,
            self.memory_budget(),
        )?;
        t5.encode_tokens_with(&tokens, cancel)
    }

    /// Generates `request.batch_size` images.
    pub fn generate(&self, request: &GenerateRequest) -> Result<Vec<Image>> {
        self.generate_with(request, None, &mut Hooks::default())
    }

    /// Generates with precomputed prompt states (else the request's prompts are encoded)
    /// and callbacks for progress, cancellation and intermediate tensors. The phases:
    /// check the request, encode the prompts, prepare the starting latents, take the
    /// guided denoising steps, decode.
    pub fn generate_with(
        &self,
        request: &GenerateRequest,
        states: Option<&PromptStates<B>>,
        hooks: &mut Hooks,
    ) -> Result<Vec<Image>> {
        let latent_size = self.check_request(request)?;
        let cancel = Cancel::from_flag(hooks.cancel);
        let mut scheduler =
            Scheduler::<B>::new(request.scheduler, &self.scheduler_config, &request.schedule)?;
        scheduler.set_eta(request.eta)?;
        let encoded;
        let states = match states {
            Some(states) => states,
            None => {
                encoded = self.encode_prompts_with(
                    &request.prompt,
                    &request.negative_prompt,
                    request.t5,
                    request.conditioning,
                    &request.clip,
                    cancel,
                )?;
                &encoded
            }
        };
        if hooks.preview.as_ref().map(|p| p.method) == Some(PreviewMethod::Tiny)
            && self.tiny_vae.is_none()
        {
            return Err(Error::InvalidInput(
                "TAESD previews need TAESD, which was not loaded (ModelPaths::taesd)".into(),
            ));
        }
        let run = self.prepare_run(request, states, &scheduler, cancel, hooks)?;
        let (mut latents, inpainting) =
            self.prepare_latents(&run, latent_size, &scheduler, hooks)?;
        let timesteps = scheduler.timesteps().to_vec();
        let taken = run.total - run.start;
        for (i, &t) in timesteps.iter().enumerate().skip(run.start) {
            cancel.check()?;
            let step = i - run.start;
            let preview = hooks.preview.as_ref().is_some_and(|p| p.due(step, taken));
            let step_input = StepInput {
                i,
                t,
                latents,
                inpainting: inpainting.as_ref(),
                preview,
            };
            let (next, x0) = self.denoising_step(&run, &mut scheduler, step_input, hooks)?;
            latents = next;
            if let (Some(x0), Some(previews)) = (x0, &mut hooks.preview) {
                let images = self.preview_images(&run, x0, previews.method)?;
                (previews.sink)(Preview {
                    step: step + 1,
                    total: taken,
                    images,
                });
            }
            if let Some(progress) = &mut hooks.progress {
                progress(step + 1, taken);
            }
        }
        self.decode(&run, latents, hooks)
    }

    /// Checks a request against the pipeline and the memory budget before any work;
    /// returns the latent `[height, width]`.
    fn check_request(&self, request: &GenerateRequest) -> Result<[usize; 2]> {
        let latent_size = request.validate(
            self.vae.config.downscale_factor(),
            self.vae.config.latent_channels,
        )?;
        if request.vae_decode == VaeDecode::Tiny && self.tiny_vae.is_none() {
            return Err(Error::InvalidInput(
                "VaeDecode::Tiny needs TAESD, which was not loaded (ModelPaths::taesd)".into(),
            ));
        }
        let masked = request
            .init_image
            .as_ref()
            .is_some_and(|i| i.mask.is_some());
        if self.unet.config.in_channels != self.vae.config.latent_channels && !masked {
            return Err(Error::InvalidInput(
                "this is an inpainting U-Net (it reads a mask and a masked image): give the \
                 request an init image with a mask"
                    .into(),
            ));
        }
        let loaded = self.controlnets.len();
        if let Some(control) = request.controls.iter().find(|c| c.controlnet >= loaded) {
            return Err(Error::InvalidInput(format!(
                "the request's control asks for ControlNet {} but the pipeline has {loaded}",
                control.controlnet
            )));
        }
        let needs = self.working_memory(request)?;
        memory::check(
            &format!(
                "a {}×{} request of {} image(s)",
                request.width, request.height, request.batch_size
            ),
            needs.peak(),
            self.memory_budget(),
        )?;
        Ok(latent_size)
    }

    /// What every step of a run reads: the prompts' states (CLIP's through the SUR-adapter
    /// when asked), the ControlNet's input and the steps to take.
    fn prepare_run<'a>(
        &'a self,
        request: &'a GenerateRequest,
        states: &'a PromptStates<B>,
        scheduler: &Scheduler<B>,
        cancel: Cancel<'a>,
        hooks: &mut Hooks,
    ) -> Result<Run<'a, B>> {
        let guided = request.guidance_scale > 1.0;
        // Cloning a state pair shares its tensors' buffers.
        let clip = match (request.conditioning, &states.clip) {
            (Conditioning::ClipSur(options), Some(clip)) => {
                Some(self.threads.install(|| self.adapt(clip, options, guided))?)
            }
            (_, clip) => clip.clone(),
        };
        let t5 = states.t5.as_ref();
        // Fixed-length states dump as one batch; states of two lengths (flexible mode, or
        // precomputed states whatever the request's mode) one by one.
        if let Some(t5) = t5.filter(|_| hooks.tensors.is_some()) {
            let same_length = t5.uncond.dims() == t5.cond.dims();
            match (request.t5.mode, same_length) {
                (TokenMode::Fixed(_), true) => hooks.dump(
                    "t5_hidden",
                    &Tensor::cat(vec![t5.uncond.clone(), t5.cond.clone()], 0),
                ),
                _ => {
                    hooks.dump("t5_hidden_uncond", &t5.uncond);
                    hooks.dump("t5_hidden_cond", &t5.cond);
                }
            }
        }
        let (device, dtype) = (self.device(), self.dtype());
        let rows = if guided { 2 } else { 1 } * request.batch_size;
        let controls = request
            .controls
            .iter()
            .map(|control| {
                let image = control.image.to_unit_tensor::<B>(&device, dtype);
                let [_, c, h, w] = image.dims();
                RunControl {
                    control,
                    // `check_request` checked the index.
                    controlnet: wrapped(&self.controlnets[control.controlnet], request.seamless),
                    image: image.expand([rows, c, h, w]),
                }
            })
            .collect();
        let total = scheduler.timesteps().len();
        let start = request.first_step(total)?;
        if let Some(given) = &request.step_noise {
            let draws = (start..total).filter(|&i| scheduler.draws_noise(i)).count();
            if given.len() < draws {
                return Err(Error::InvalidInput(format!(
                    "the request gives step noise for {} steps; {} of this run's steps draw                      noise",
                    given.len(),
                    draws
                )));
            }
        }
        Ok(Run {
            request,
            unet: wrapped(&self.unet, request.seamless),
            vae: wrapped(&self.vae, request.seamless),
            tiny_vae: self.tiny_vae.as_ref().map(|t| wrapped(t, request.seamless)),
            t5,
            clip,
            guided,
            controls,
            start,
            total,
            cancel,
        })
    }

    /// The starting latents: the seed's noise (or the request's), scaled for the
    /// scheduler, or for image-to-image the image's latent noised to the first step's level.
    /// For inpainting, also what every step reads of the mask and the image
    /// (diffusers' `StableDiffusionInpaintPipeline`): with strength 1 the run starts from
    /// pure noise, below 1 from the image noised to the first step.
    fn prepare_latents(
        &self,
        run: &Run<B>,
        [latent_h, latent_w]: [usize; 2],
        scheduler: &Scheduler<B>,
        hooks: &mut Hooks,
    ) -> Result<(Tensor<B, 4>, Option<Inpainting<B>>)> {
        let request = run.request;
        let (device, dtype) = (self.device(), self.dtype());
        let batch = request.batch_size;
        let shape = [batch, self.vae.config.latent_channels, latent_h, latent_w];
        let noise = match &request.init_latents {
            Some(latents) => latents.clone(),
            None => noise::initial_noise(request.seed, shape),
        };
        let noise = Tensor::<B, 4>::from_data(noise.convert_dtype(dtype), (&device, dtype));
        let Some(init) = &request.init_image else {
            return Ok((noise * scheduler.init_noise_sigma(), None));
        };
        // The posterior mean, as diffusers' `sample_mode="argmax"`, at the U-Net's scale.
        let encode = |image: Tensor<B, 4>| -> Result<Tensor<B, 4>> {
            let encoded = self
                .threads
                .install(|| run.vae.encode_mean(image, run.cancel))?
                * self.vae.config.scaling_factor;
            let [_, c, h, w] = encoded.dims();
            Ok(encoded.expand([batch, c, h, w]))
        };
        let image = init.image.to_tensor(&device, dtype);
        let Some(mask) = &init.mask else {
            let encoded = encode(image)?;
            hooks.dump("init_image_latents", &encoded);
            return Ok((scheduler.add_noise(encoded, noise.clone(), run.start), None));
        };
        let nine_channels = self.unet.config.in_channels != self.vae.config.latent_channels;
        let from_noise = init.strength == 1.0;
        // The image's latents: to start from (strength below 1) and, with an SD1.5 U-Net, to
        // blend in after every step.
        let image_latents = match (nine_channels, from_noise) {
            (true, true) => None,
            _ => Some(encode(image.clone())?),
        };
        let masked_image = match nine_channels {
            true => {
                let keep = Tensor::<B, 4>::from_data(
                    mask.keep_mask().convert_dtype(dtype),
                    (&device, dtype),
                );
                Some(encode(image * keep)?)
            }
            false => None,
        };
        let factor = self.vae.config.downscale_factor();
        let mask = Tensor::<B, 4>::from_data(
            mask.to_latent(factor).convert_dtype(dtype),
            (&device, dtype),
        );
        hooks.dump("mask_latent", &mask);
        let latents = match (&image_latents, from_noise) {
            (Some(image_latents), false) => {
                scheduler.add_noise(image_latents.clone(), noise.clone(), run.start)
            }
            _ => noise.clone() * scheduler.init_noise_sigma(),
        };
        let inpainting = Inpainting {
            mask,
            blend: match nine_channels {
                false => image_latents.map(|image_latents| (image_latents, noise)),
                true => None,
            },
            masked_image,
        };
        Ok((latents, Some(inpainting)))
    }

    /// Denoising step `i` (timestep `t`): the condition tokens of both branches, one U-Net
    /// batch (ControlNet residuals added while it acts), classifier-free guidance, the
    /// scheduler's step. The new latents are checked for NaN and infinity on the host (a
    /// few KB read back): one would end as a black image. With `preview`, also the clean
    /// latents x₀ the step predicts.
    fn denoising_step(
        &self,
        run: &Run<B>,
        scheduler: &mut Scheduler<B>,
        input: StepInput<B>,
        hooks: &mut Hooks,
    ) -> Result<(Tensor<B, 4>, Option<Tensor<B, 4>>)> {
        let StepInput {
            i,
            t,
            latents,
            inpainting,
            preview,
        } = input;
        let step = i - run.start;
        let conditioning = run.request.conditioning;
        let (cond, uncond) = self.threads.install(|| -> Result<_> {
            let branch = |states: fn(&StatePair<B>) -> &Tensor<B, 3>| {
                self.condition(
                    conditioning,
                    run.t5.map(states),
                    run.clip.as_ref().map(states),
                    t,
                )
            };
            let cond = branch(|s| &s.cond)?;
            let uncond = run.guided.then(|| branch(|s| &s.uncond)).transpose()?;
            Ok((cond, uncond))
        })?;
        hooks.dump(&format!("condition_cond_step{step}"), &cond);
        if let Some(uncond) = &uncond {
            hooks.dump(&format!("condition_uncond_step{step}"), uncond);
        }
        let batch = run.request.batch_size;
        let input_at = StepAt {
            i,
            t,
            step,
            inpainting,
        };
        let (latents, x0) = self.threads.install(|| -> Result<_> {
            let per_sample = |tokens: Tensor<B, 3>| {
                let [_, n, d] = tokens.dims();
                tokens.expand([batch, n, d])
            };
            // One U-Net batch for both branches; two when their token counts differ (CLIP
            // prompts of different chunk counts, which A1111 runs apart, not padded).
            let prediction = match uncond {
                Some(uncond) if uncond.dims()[1] == cond.dims()[1] => self.predict(
                    run,
                    scheduler,
                    &input_at,
                    Tensor::cat(vec![latents.clone(), latents.clone()], 0),
                    Tensor::cat(vec![per_sample(uncond), per_sample(cond)], 0),
                )?,
                Some(uncond) => {
                    let predict =
                        |context| self.predict(run, scheduler, &input_at, latents.clone(), context);
                    Tensor::cat(
                        vec![predict(per_sample(uncond))?, predict(per_sample(cond))?],
                        0,
                    )
                }
                None => {
                    self.predict(run, scheduler, &input_at, latents.clone(), per_sample(cond))?
                }
            };
            let prediction = match run.guided {
                true => {
                    let uncond = prediction.clone().narrow(0, 0, batch);
                    let cond = prediction.narrow(0, batch, batch);
                    uncond.clone() + (cond - uncond) * run.request.guidance_scale
                }
                false => prediction,
            };
            let noise = scheduler
                .draws_noise(i)
                .then(|| self.step_noise(run.request, step, latents.dims()));
            let x0 = preview
                .then(|| scheduler.predicted_original(prediction.clone(), i, latents.clone()));
            let latents = scheduler.step(prediction, i, latents, noise);
            // An SD1.5 U-Net inpainting: the kept region is the image's, noised to the next
            // step's level (clean after the last step), the same noise every time.
            let latents = match inpainting.and_then(|p| p.blend.as_ref().map(|b| (p, b))) {
                Some((inpainting, (image_latents, noise))) => {
                    let known = match i + 1 < run.total {
                        true => scheduler.add_noise(image_latents.clone(), noise.clone(), i + 1),
                        false => image_latents.clone(),
                    };
                    let repaint = inpainting.mask.clone();
                    known * (repaint.clone().neg() + 1.0) + latents * repaint
                }
                None => latents,
            };
            Ok((latents, x0))
        })?;
        hooks.dump(&format!("latents_step{step}"), &latents);
        if !all_finite(&latents.to_data()) {
            return Err(Error::NonFinite {
                what: format!(
                    "the latents after step {} of {}",
                    step + 1,
                    run.total - run.start
                ),
            });
        }
        Ok((latents, x0))
    }

    /// The U-Net's prediction for `model_input` (latents of one or both guidance branches)
    /// under `context`: scaled for the scheduler, with the residuals of every ControlNet
    /// acting at this step and, for an inpainting U-Net, the mask and masked image.
    fn predict(
        &self,
        run: &Run<B>,
        scheduler: &Scheduler<B>,
        at: &StepAt<B>,
        model_input: Tensor<B, 4>,
        context: Tensor<B, 3>,
    ) -> Result<Tensor<B, 4>> {
        let rows = model_input.dims()[0];
        let model_input = scheduler.scale_model_input(model_input, at.i);
        // Each ControlNet acting at this step reads the U-Net's input and condition tokens;
        // their residuals add up (diffusers' `MultiControlNetModel`).
        let mut residuals: Option<ControlResiduals<B>> = None;
        for RunControl {
            control,
            controlnet,
            image,
        } in &run.controls
        {
            if !control.acts_at(at.step, run.total - run.start) {
                continue;
            }
            let these = controlnet.forward(
                model_input.clone(),
                &[at.t],
                context.clone(),
                image.clone().narrow(0, 0, rows),
                control.scale,
                run.cancel,
            )?;
            residuals = Some(match residuals {
                Some(sum) => sum + these,
                None => these,
            });
        }
        // An inpainting U-Net reads the mask and the masked image after the latents.
        let model_input = match at
            .inpainting
            .and_then(|p| p.masked_image.as_ref().map(|m| (p, m)))
        {
            Some((inpainting, masked_image)) => {
                let [_, c, h, w] = masked_image.dims();
                Tensor::cat(
                    vec![
                        model_input,
                        inpainting.mask.clone().expand([rows, 1, h, w]),
                        masked_image.clone().narrow(0, 0, 1).expand([rows, c, h, w]),
                    ],
                    1,
                )
            }
            None => model_input,
        };
        run.unet
            .forward_with(model_input, &[at.t], context, residuals, run.cancel)
    }

    /// Preview images of the predicted clean latents `x0`.
    fn preview_images(
        &self,
        run: &Run<B>,
        x0: Tensor<B, 4>,
        method: PreviewMethod,
    ) -> Result<Vec<Image>> {
        match (method, &run.tiny_vae) {
            (PreviewMethod::Tiny, Some(tiny)) => {
                let image = self.threads.install(|| tiny_decode(tiny, x0, run.cancel))?;
                to_images(image.into_data())
            }
            _ => Ok(preview::linear_preview(&x0.into_data().convert::<f32>())),
        }
    }

    /// The fresh noise of taken step `step`: the request's, else the seed's.
    fn step_noise(
        &self,
        request: &GenerateRequest,
        step: usize,
        shape: [usize; 4],
    ) -> Tensor<B, 4> {
        let data = match &request.step_noise {
            Some(given) => given[step].clone(),
            None => noise::step_noise(request.seed, step, shape),
        };
        let (device, dtype) = (self.device(), self.dtype());
        Tensor::from_data(data.convert_dtype(dtype), (&device, dtype))
    }

    /// The final latents through the run's VAE (or TAESD), as RGB8 images.
    fn decode(&self, run: &Run<B>, latents: Tensor<B, 4>, hooks: &mut Hooks) -> Result<Vec<Image>> {
        hooks.dump("final_latents", &latents);
        let decoded = self
            .threads
            .install(|| match (run.request.vae_decode, &run.tiny_vae) {
                (VaeDecode::Tiny, Some(tiny)) => tiny_decode(tiny, latents, run.cancel),
                (how, _) => {
                    run.vae
                        .decode_with(latents / self.vae.config.scaling_factor, how, run.cancel)
                }
            })?;
        let images = to_images(decoded.into_data())?;
        if let (Some(sink), Some(first)) = (&mut hooks.tensors, images.first()) {
            sink(
                "image",
                TensorData::new(first.pixels.clone(), [first.height, first.width, 3]),
            );
        }
        Ok(images)
    }

    /// The condition tokens `[1, tokens, width]` of one branch (`uncond` or `cond`) at
    /// timestep `t`: the connector's (ELLA), CLIP's, or both along the token axis (ELLA's
    /// first, as ComfyUI-ELLA concatenates them).
    fn condition(
        &self,
        conditioning: Conditioning,
        t5: Option<&Tensor<B, 3>>,
        clip: Option<&Tensor<B, 3>>,
        t: f32,
    ) -> Result<Tensor<B, 3>> {
        let ella = match conditioning.uses_t5() {
            true => {
                let connector = self.connector.as_ref().ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{conditioning:?} conditioning needs ELLA's connector, which was not loaded"
                    ))
                })?;
                let states = t5.ok_or_else(|| missing_states("T5", conditioning))?;
                Some(connector.forward(states.clone(), &[t])?)
            }
            false => None,
        };
        let clip = match conditioning.uses_clip() {
            true => Some(
                clip.ok_or_else(|| missing_states("CLIP", conditioning))?
                    .clone(),
            ),
            false => None,
        };
        let parts: Vec<Tensor<B, 3>> = ella.into_iter().chain(clip).collect();
        Ok(Tensor::cat(parts, 1))
    }
}

/// What every denoising step of one request reads ([`Pipeline::prepare_run`]).
struct Run<'a, B: Backend> {
    request: &'a GenerateRequest,
    /// The U-Net and VAE the run uses: the pipeline's, or clones whose convolutions wrap
    /// around (a seamless request).
    unet: Cow<'a, UNet2DConditionModel<B>>,
    vae: Cow<'a, AutoencoderKL<B>>,
    tiny_vae: Option<Cow<'a, AutoencoderTiny<B>>>,
    t5: Option<&'a StatePair<B>>,
    /// CLIP's states as the U-Net reads them (through the SUR-adapter for `ClipSur`).
    clip: Option<StatePair<B>>,
    guided: bool,
    controls: Vec<RunControl<'a, B>>,
    /// The first step taken (image-to-image skips the noisiest) and the schedule's length.
    start: usize,
    total: usize,
    cancel: Cancel<'a>,
}

/// The per-step inputs of [`Pipeline::denoising_step`].
struct StepInput<'a, B: Backend> {
    /// The step's index in the schedule and its timestep.
    i: usize,
    t: f32,
    latents: Tensor<B, 4>,
    inpainting: Option<&'a Inpainting<B>>,
    /// Whether to return the predicted clean latents for a preview.
    preview: bool,
}

/// Where a denoising step is, for [`Pipeline::predict`].
struct StepAt<'a, B: Backend> {
    /// The step's index in the schedule, its timestep, and its index among the steps taken.
    i: usize,
    t: f32,
    step: usize,
    inpainting: Option<&'a Inpainting<B>>,
}

/// What every step of an inpainting run reads ([`Pipeline::prepare_latents`]).
struct Inpainting<B: Backend> {
    /// The binarized mask at the latents' size `[1, 1, h, w]`, 1 where repainted.
    mask: Tensor<B, 4>,
    /// An SD1.5 U-Net: the image's latents and the initial noise, to re-noise the kept region
    /// to each step's level.
    blend: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// An inpainting U-Net: the masked image's latents (`[batch, 4, h, w]`), its extra input.
    masked_image: Option<Tensor<B, 4>>,
}

/// One of a request's controls with the ControlNet that acts on it and its image, one row
/// per U-Net row.
struct RunControl<'a, B: Backend> {
    control: &'a Control,
    controlnet: Cow<'a, ControlNetModel<B>>,
    image: Tensor<B, 4>,
}

/// `model` itself, or for a seamless request a clone (sharing its weights) that wraps around.
fn wrapped<M: Clone + SetSeamless>(model: &M, seamless: Seamless) -> Cow<'_, M> {
    match seamless {
        Seamless::Off => Cow::Borrowed(model),
        _ => {
            let mut model = model.clone();
            model.set_seamless(seamless);
            Cow::Owned(model)
        }
    }
}

fn missing_states(encoder: &str, conditioning: Conditioning) -> Error {
    Error::InvalidInput(format!(
        "{conditioning:?} conditioning needs the prompts' {encoder} states, which the given \
         prompt states lack"
    ))
}

/// U-Net latents through TAESD (divided by its scaling factor, 1 for TAESD, as diffusers'
/// pipeline does).
fn tiny_decode<B: Backend>(
    tiny: &AutoencoderTiny<B>,
    latents: Tensor<B, 4>,
    cancel: Cancel,
) -> Result<Tensor<B, 4>> {
    tiny.decode(latents / tiny.config.scaling_factor, cancel)
}

/// The official SUR-adapter's attention heads (not stored in its checkpoint).
const SUR_HEADS: usize = 8;

/// Whether every value of a float tensor's data is finite.
fn all_finite(data: &TensorData) -> bool {
    data.iter::<f32>().all(f32::is_finite)
}

/// `[batch, 3, H, W]` in about [-1, 1] → RGB8, as diffusers' image processor:
/// `round((x/2 + 0.5).clamp(0, 1) · 255)` in f32, ties to even. A non-finite value (which
/// would quietly become black) is an error.
fn to_images(data: TensorData) -> Result<Vec<Image>> {
    let [batch, channels, height, width] =
        [data.shape[0], data.shape[1], data.shape[2], data.shape[3]];
    if !all_finite(&data) {
        return Err(Error::NonFinite {
            what: "the decoded image".into(),
        });
    }
    let values: Vec<f32> = data.iter::<f32>().collect();
    let plane = height * width;
    Ok((0..batch)
        .map(|b| {
            let mut pixels = Vec::with_capacity(plane * 3);
            for p in 0..plane {
                for c in 0..3.min(channels) {
                    let x = values[(b * channels + c) * plane + p];
                    let v = (x / 2.0 + 0.5).clamp(0.0, 1.0);
                    pixels.push((v * 255.0).round_ties_even() as u8);
                }
            }
            Image {
                width,
                height,
                pixels,
            }
        })
        .collect())
}
