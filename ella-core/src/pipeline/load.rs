//! Where a pipeline's models come from: ELLA's T5 and connector, and SD1.5 as a diffusers
//! folder or a single-file checkpoint (the LDM layout of A1111, ComfyUI and CivitAI), with an
//! optional VAE file that replaces SD's own.

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use burn::tensor::DType;

use super::ldm;
use crate::clip::{ClipTextConfig, ClipTextEncoder, ClipTextModel, ClipTokenizer};
use crate::controlnet::ControlNetModel;
use crate::error::{Error, Result};
use crate::lora::Lora;
use crate::scheduler::SchedulerConfig;
use crate::unet::{UNet2DConditionModel, UNetConfig};
use crate::vae::{AutoencoderKL, VaeConfig};
use crate::weights::Checkpoint;

/// Where the model files are.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPaths {
    /// SD1.5: a folder in the diffusers layout (`unet/`, `vae/`, `scheduler/`; `text_encoder/`
    /// and `tokenizer/` for CLIP), or a single-file checkpoint (`.safetensors` in the LDM
    /// layout: `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`).
    pub sd: PathBuf,
    /// For a single-file checkpoint: a diffusers-layout folder whose `*/config.json`,
    /// `scheduler/` and `tokenizer/` describe it (as diffusers' `from_single_file(config=…)`);
    /// `None`: SD1.5's own configs, built in (CLIP then needs this folder for its tokenizer).
    pub sd_config: Option<PathBuf>,
    /// A VAE that replaces SD's: a diffusers `vae/` folder, or a `.safetensors` file in the
    /// diffusers or the LDM layout (e.g. `vae-ft-mse-840000-ema-pruned.safetensors`).
    pub vae: Option<PathBuf>,
    /// T5 and the connector, for ELLA conditioning; `None` loads SD with CLIP only.
    pub ella: Option<EllaPaths>,
    /// Load SD's CLIP text encoder too: plain SD and ELLA + CLIP conditioning need it.
    pub clip: bool,
    /// LoRAs merged into the U-Net (and CLIP) at load; [`super::Pipeline::set_loras`]
    /// changes them later.
    pub loras: Vec<Lora>,
    /// Textual-inversion embeddings (`.safetensors`: A1111's `emb_params`, diffusers'
    /// `learned_embeds`) whose names CLIP prompts may use; needs `clip`.
    /// [`super::Pipeline::add_embeddings`] adds more later.
    pub embeddings: Vec<PathBuf>,
    /// ControlNets for requests' [`super::Control`]s, which pick them by index in this list:
    /// each a diffusers folder (`config.json`, `diffusion_pytorch_model.safetensors`), its
    /// weight file, or a single file in the original layout (`control_model.*`, as ComfyUI
    /// and A1111 use them; see [`load_controlnet`]); [`super::Pipeline::set_controlnets`]
    /// changes them.
    pub controlnets: Vec<PathBuf>,
    /// A SUR-adapter `.safetensors` (converted from the official `.pt` by
    /// `scripts/sur_adapter_to_safetensors.py`) for `ClipSur` conditioning; needs `clip`.
    pub sur_adapter: Option<PathBuf>,
    /// TAESD, a tiny autoencoder (a diffusers `AutoencoderTiny` folder, e.g.
    /// `madebyollin/taesd`), for [`super::PreviewMethod::Tiny`] previews and
    /// [`crate::VaeDecode::Tiny`]; [`super::Pipeline::set_tiny_vae`] changes it.
    pub taesd: Option<PathBuf>,
}

/// ELLA's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EllaPaths {
    /// The T5 encoder folder (`config.json`, `tokenizer.json`, `model.safetensors`).
    pub t5: PathBuf,
    /// The connector file (`ella-sd1.5-tsc-t5xl.safetensors`).
    pub connector: PathBuf,
    /// The connector's sizes as JSON; `None` for the official file.
    pub config: Option<PathBuf>,
}

impl ModelPaths {
    /// ELLA (T5 folder, connector file) on SD1.5 (diffusers folder or single-file
    /// checkpoint), without CLIP.
    pub fn ella(
        t5: impl Into<PathBuf>,
        connector: impl Into<PathBuf>,
        sd: impl Into<PathBuf>,
    ) -> Self {
        Self {
            sd: sd.into(),
            sd_config: None,
            vae: None,
            ella: Some(EllaPaths {
                t5: t5.into(),
                connector: connector.into(),
                config: None,
            }),
            clip: false,
            loras: Vec::new(),
            embeddings: Vec::new(),
            controlnets: Vec::new(),
            sur_adapter: None,
            taesd: None,
        }
    }

    /// The folder whose `{component}/config.json` files describe SD's models: the diffusers
    /// folder itself, or `sd_config` for a single-file checkpoint.
    fn config_folder(&self) -> Option<&Path> {
        match self.sd.is_dir() {
            true => Some(&self.sd),
            false => self.sd_config.as_deref(),
        }
    }

    /// `{component}/config.json` of [`ModelPaths::config_folder`], if there is one.
    fn component_config(&self, component: &str) -> Option<PathBuf> {
        self.config_folder()
            .map(|folder| folder.join(component).join("config.json"))
    }
}

/// SD1.5's models, loaded.
pub(super) struct SdModels<B: Backend> {
    pub unet: UNet2DConditionModel<B>,
    pub vae: AutoencoderKL<B>,
    pub clip: Option<ClipTextEncoder<B>>,
    pub scheduler_config: SchedulerConfig,
}

/// Loads the U-Net, the VAE (or its replacement), CLIP when asked and the scheduler config.
pub(super) fn load_sd<B: Backend>(
    paths: &ModelPaths,
    device: &B::Device,
    dtype: DType,
) -> Result<SdModels<B>> {
    let single_file = match paths.sd.is_dir() {
        true => None,
        false => {
            let checkpoint = Checkpoint::open(&paths.sd)?;
            ldm::check_sd1(&checkpoint)?;
            if paths.clip && paths.sd_config.is_none() {
                return Err(Error::InvalidInput(format!(
                    "{} is a single-file checkpoint, which has no CLIP tokenizer: pass an SD1.5 \
                     config folder (with `tokenizer/`) to use CLIP",
                    paths.sd.display()
                )));
            }
            Some(checkpoint)
        }
    };
    let scheduler_config = match paths.config_folder() {
        Some(folder) => {
            SchedulerConfig::from_file(&folder.join("scheduler").join("scheduler_config.json"))?
        }
        None => SchedulerConfig::sd15(),
    };
    let unet = match &single_file {
        None => UNet2DConditionModel::load(paths.sd.join("unet"), device, dtype)?,
        Some(checkpoint) => {
            let config = match paths.component_config("unet") {
                Some(path) => UNetConfig::from_file(&path)?,
                // SD1.5's, with the input width of the file (9: an inpainting model).
                None => UNetConfig {
                    in_channels: ldm::unet_in_channels(checkpoint)
                        .unwrap_or(UNetConfig::sd15().in_channels),
                    ..UNetConfig::sd15()
                },
            };
            let view = ldm::unet(checkpoint, &config);
            UNet2DConditionModel::from_checkpoint(config, &view, device, dtype)?
        }
    };
    let vae = match (&paths.vae, &single_file) {
        (Some(path), _) if path.is_dir() => AutoencoderKL::load(path, device, dtype)?,
        (Some(path), _) => load_vae_file(&Checkpoint::open(path)?, paths, device, dtype)?,
        (None, Some(checkpoint)) => load_vae_file(checkpoint, paths, device, dtype)?,
        (None, None) => AutoencoderKL::load(paths.sd.join("vae"), device, dtype)?,
    };
    let clip = match paths.clip {
        false => None,
        true => Some(load_clip(paths, single_file.as_ref(), device, dtype)?),
    };
    Ok(SdModels {
        unet,
        vae,
        clip,
        scheduler_config,
    })
}

/// A VAE from one file, in the diffusers or the LDM layout (standalone, or inside a
/// single-file checkpoint); its config is SD's (`vae/config.json`) or SD1.5's.
fn load_vae_file<B: Backend>(
    checkpoint: &Checkpoint,
    paths: &ModelPaths,
    device: &B::Device,
    dtype: DType,
) -> Result<AutoencoderKL<B>> {
    let config = match paths.component_config("vae") {
        Some(path) => VaeConfig::from_file(&path)?,
        None => VaeConfig::sd15(),
    };
    match ldm::is_ldm_vae(checkpoint) {
        true => {
            let view = ldm::vae(checkpoint, config.block_out_channels.len());
            AutoencoderKL::from_checkpoint(config, &view, device, dtype)
        }
        false => AutoencoderKL::from_checkpoint(config, checkpoint, device, dtype),
    }
}

/// SD's CLIP text encoder: from the diffusers folder, or from the single-file checkpoint with
/// the tokenizer of `sd_config`.
fn load_clip<B: Backend>(
    paths: &ModelPaths,
    single_file: Option<&Checkpoint>,
    device: &B::Device,
    dtype: DType,
) -> Result<ClipTextEncoder<B>> {
    let Some(checkpoint) = single_file else {
        return ClipTextEncoder::load(&paths.sd, device, dtype);
    };
    // `load_sd` checked that a single file comes with a config folder.
    let folder = paths.config_folder().unwrap_or(&paths.sd);
    let config = match paths.component_config("text_encoder") {
        Some(path) if path.is_file() => ClipTextConfig::from_file(&path)?,
        _ => ClipTextConfig::sd15(),
    };
    let view = ldm::clip(checkpoint);
    Ok(ClipTextEncoder {
        tokenizer: ClipTokenizer::from_file(folder.join("tokenizer"))?,
        model: ClipTextModel::from_checkpoint(config, &view, device, dtype)?,
    })
}

/// Loads a ControlNet for a U-Net of `unet`'s config: a diffusers folder, a diffusers weight
/// file with `config.json` beside it, or a single file in the original layout
/// (`control_model.*`, lllyasviel's ControlNet 1.1 or comfyanonymous' fp16 files), whose
/// down path is the U-Net's and whose hint encoder is read from the file.
pub fn load_controlnet<B: Backend>(
    path: &Path,
    unet: &UNetConfig,
    device: &B::Device,
    dtype: DType,
) -> Result<ControlNetModel<B>> {
    if path.is_dir() {
        return ControlNetModel::load(path, device, dtype);
    }
    let checkpoint = Checkpoint::open(path)?;
    if !ldm::is_ldm_controlnet(&checkpoint) {
        return ControlNetModel::load(path, device, dtype);
    }
    let config = ldm::controlnet_config(&checkpoint, unet)?;
    let view = ldm::controlnet(&checkpoint, &config);
    ControlNetModel::from_checkpoint(config, &view, device, dtype)
}
