//! `GenerateRequest`: what one `Pipeline::generate` call makes, validated at the edge.

use burn::tensor::TensorData;

use super::{Image, Mask};
use crate::error::{Error, Result};
use crate::limits::{
    MAX_BATCH, MAX_CONTROLS, MAX_IMAGE_SIDE, MAX_STEPS, MAX_T5_TOKENS, check_prompt_lengths,
};
use crate::nn::Seamless;
use crate::prompt_syntax::{PromptSyntax, strip_for_t5};
use crate::scheduler::{SchedulerKind, Tcd, TimestepSchedule};
use crate::sur_adapter::SurMode;
use crate::t5::TokenMode;
use crate::vae::VaeDecode;

/// What the U-Net cross-attends to.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Conditioning {
    /// ELLA: the connector's 64 tokens from T5, recomputed at every step (the official way).
    #[default]
    Ella,
    /// ELLA's tokens followed by CLIP's 77 (141 tokens; 77 more per extra 75-token chunk of
    /// a long CLIP prompt), ComfyUI-ELLA's concat mode, not used in ELLA's training: LoRA
    /// trigger words and textual inversions keep working.
    EllaClip,
    /// SD1.5's own CLIP conditioning (plain SD, the baseline); needs no T5 or connector.
    Clip,
    /// CLIP's states rewritten once by the pipeline's SUR-adapter.
    ClipSur(SurOptions),
}

impl Conditioning {
    /// Whether T5 and the connector take part.
    pub fn uses_t5(self) -> bool {
        matches!(self, Self::Ella | Self::EllaClip)
    }

    /// Whether SD's CLIP text encoder takes part.
    pub fn uses_clip(self) -> bool {
        matches!(self, Self::EllaClip | Self::Clip | Self::ClipSur(_))
    }
}

/// What SD's CLIP text encoder reads, and how (the conditionings that use CLIP).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClipText {
    /// CLIP's own prompt; `None`: the request's. With ELLA + CLIP, T5 reads a sentence and
    /// CLIP tags, names and LoRA trigger words, as ELLA's authors advise.
    pub prompt: Option<String>,
    /// CLIP's own negative prompt; `None`: the request's.
    pub negative: Option<String>,
    /// Layers skipped from the end of CLIP (diffusers' `clip_skip`; A1111's "Clip skip: N"
    /// is `N − 1`, ComfyUI's "CLIP Set Last Layer" `−N` is `N − 1`): 0, the last layer, by
    /// default; anime checkpoints are often made for 1.
    pub skip: usize,
    /// A1111's weights and long prompts in 75-token chunks (default), or the text as it is,
    /// truncated to 77 tokens (diffusers).
    pub syntax: PromptSyntax,
}

impl ClipText {
    /// The prompt and negative prompt CLIP reads, given the request's.
    pub fn texts<'a>(&'a self, prompt: &'a str, negative: &'a str) -> [&'a str; 2] {
        [
            self.prompt.as_deref().unwrap_or(prompt),
            self.negative.as_deref().unwrap_or(negative),
        ]
    }
}

/// How T5 reads the request's prompts (the conditionings that use ELLA).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct T5Text {
    /// Each prompt's own length (default), or a fixed one.
    pub mode: TokenMode,
    /// A1111's weight syntax removed from the text before T5 reads it (default, as
    /// ComfyUI-ELLA: `a (red:1.3) book` → `a red book`), or the text as it is (ELLA's
    /// `inference.py`). The weights themselves act on CLIP only.
    pub syntax: PromptSyntax,
}

impl T5Text {
    /// The text T5 reads of `prompt`.
    pub fn text<'a>(&self, prompt: &'a str) -> std::borrow::Cow<'a, str> {
        match self.syntax {
            PromptSyntax::A1111 => strip_for_t5(prompt).into(),
            PromptSyntax::Literal => prompt.into(),
        }
    }
}

/// How a SUR-adapter rewrites CLIP's states (`Conditioning::ClipSur`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SurOptions {
    /// The adapter weight `w` of `w·adapter + (1 − w)·CLIP`, in [0, 1].
    pub weight: f32,
    /// How the adapter sees the negative and positive prompt.
    pub mode: SurMode,
}

impl Default for SurOptions {
    /// The official demo's weight, 0.1, and its way of running the adapter.
    fn default() -> Self {
        Self {
            weight: 0.1,
            mode: SurMode::Faithful,
        }
    }
}

/// Image-to-image and inpainting: where a request starts instead of pure noise.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImage {
    /// The starting image, of the request's size.
    pub image: Image,
    /// How much of the schedule runs, in (0, 1]: the last `floor(steps · strength)` steps,
    /// from the image noised to that level (diffusers' `strength`; 1 ignores the image's
    /// content, under the mask when inpainting). Default 0.8, as diffusers.
    pub strength: f32,
    /// Inpainting: repaint only where the mask is white, as diffusers'
    /// `StableDiffusionInpaintPipeline`. With an SD1.5 U-Net the kept region is re-noised and
    /// blended in after every step; an inpainting U-Net (9 input channels, e.g.
    /// `sd-v1-5-inpainting`) reads the mask and the masked image itself. For outpainting,
    /// make the canvas and mask with [`super::Outpaint::canvas`].
    pub mask: Option<Mask>,
}

impl InitImage {
    /// `image` at the default strength, 0.8, without a mask.
    pub fn new(image: Image) -> Self {
        Self {
            image,
            strength: 0.8,
            mask: None,
        }
    }
}

/// ControlNet guidance of a request: which of the pipeline's ControlNets, with which image,
/// how strongly and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    /// The index of the ControlNet in the pipeline's list ([`super::Pipeline::controlnets`],
    /// the order of `ModelPaths::controlnets`); default 0.
    pub controlnet: usize,
    /// The conditioning image (an edge map, a depth map, …) of the request's size.
    pub image: Image,
    /// diffusers' `controlnet_conditioning_scale`; default 1.
    pub scale: f32,
    /// The part of the run the ControlNet acts in, as fractions of the steps taken
    /// (`control_guidance_start` / `_end`); default 0 and 1.
    pub start: f32,
    pub end: f32,
}

impl Control {
    /// The first ControlNet with `image` at scale 1 over the whole run.
    pub fn new(image: Image) -> Self {
        Self {
            controlnet: 0,
            image,
            scale: 1.0,
            start: 0.0,
            end: 1.0,
        }
    }

    /// Whether the ControlNet acts at step `i` of `n` (diffusers' `controlnet_keep`).
    pub fn acts_at(&self, i: usize, n: usize) -> bool {
        let (i, n) = (i as f32, n as f32);
        !(i / n < self.start || (i + 1.0) / n > self.end)
    }
}

/// One text-to-image request. `Default` follows the official ELLA demo: DPM-Solver++ 2M,
/// 25 steps, guidance 10, flexible token length, 512×512, seed 1000, empty negative prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: String,
    /// Encoded by T5 like the prompt; `""` (one `</s>` token) by default, as the reference.
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    /// How many steps, or which timesteps (e.g. [`TimestepSchedule::align_your_steps`]).
    pub schedule: TimestepSchedule,
    /// Classifier-free guidance scale; guidance is off at 1 or below (as in diffusers).
    pub guidance_scale: f32,
    /// Sample `i` of the batch draws its noise from seed `seed + i` (see [`crate::pipeline::noise`]).
    pub seed: u64,
    pub batch_size: usize,
    /// T5's token length and how it reads the weight syntax.
    pub t5: T5Text,
    pub scheduler: SchedulerKind,
    /// TCD's η ("gamma") in [0, 1]: how much of each step is re-noised; 0 is deterministic.
    /// Default 0.3, the TCD authors'. Other schedulers ignore it.
    pub eta: f32,
    /// Unit-variance initial noise `[batch, latent_channels, height/f, width/f]` instead of
    /// the seed's; scaled by the scheduler's `init_noise_sigma` as diffusers does (for
    /// image-to-image: the noise added to the image's latent).
    pub init_latents: Option<TensorData>,
    /// The fresh noise stochastic schedulers (LCM, TCD) add, one tensor per step taken (the
    /// initial latents' shape; the last step draws none), instead of the seed's: to
    /// reproduce another implementation's run.
    pub step_noise: Option<Vec<TensorData>>,
    /// How the VAE decodes: whole batch, sliced or tiled (bounded memory for big images).
    pub vae_decode: VaeDecode,
    /// ELLA (default), ELLA + CLIP, CLIP alone, or CLIP through a SUR-adapter.
    pub conditioning: Conditioning,
    /// CLIP's own prompts, CLIP skip and weight syntax, for the conditionings that use CLIP.
    pub clip: ClipText,
    /// Image-to-image: start from this image instead of pure noise.
    pub init_image: Option<InitImage>,
    /// ControlNet guidance, any number at once (each names one of the pipeline's
    /// ControlNets; the same ControlNet may serve several with other images); their residuals
    /// add up, as diffusers' `MultiControlNetModel`.
    pub controls: Vec<Control>,
    /// Seamless textures: the axes along which the image wraps around (every convolution of
    /// the U-Net, VAE and ControlNet pads circularly), so that copies of it tile.
    pub seamless: Seamless,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            schedule: TimestepSchedule::Steps(25),
            guidance_scale: 10.0,
            seed: 1000,
            batch_size: 1,
            t5: T5Text::default(),
            scheduler: SchedulerKind::DpmSolverMultistep,
            eta: Tcd::DEFAULT_ETA,
            init_latents: None,
            step_noise: None,
            vae_decode: VaeDecode::Whole,
            conditioning: Conditioning::Ella,
            clip: ClipText::default(),
            init_image: None,
            controls: Vec::new(),
            seamless: Seamless::Off,
        }
    }
}

impl GenerateRequest {
    /// A request for `prompt` with every other setting at its default.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            ..Self::default()
        }
    }

    /// Errors unless `image` is RGB8 of the request's size.
    fn check_image(&self, image: &Image, what: &str) -> Result<()> {
        if [image.width, image.height] != [self.width, self.height]
            || image.pixels.len() != image.width * image.height * 3
        {
            return Err(Error::InvalidInput(format!(
                "the {what} image is {}×{} ({} bytes); the request is {}×{} RGB8",
                image.width,
                image.height,
                image.pixels.len(),
                self.width,
                self.height
            )));
        }
        Ok(())
    }

    /// The index of the first step an image-to-image run takes of `total` (0 for
    /// text-to-image): diffusers' `total − min(int(total · strength), total)`, read as the
    /// decimal strength the caller wrote (0.7 × 10 is 7 steps, not 6).
    pub fn first_step(&self, total: usize) -> Result<usize> {
        let Some(InitImage { strength, .. }) = &self.init_image else {
            return Ok(0);
        };
        let steps = ((total as f64 * f64::from(*strength)) + 1e-4).floor() as usize;
        match steps.min(total) {
            0 => Err(Error::InvalidInput(format!(
                "strength {strength} of {total} steps leaves no step to run"
            ))),
            steps => Ok(total - steps),
        }
    }

    /// Checks the sizes and numbers, given the VAE's downscale factor and the latent
    /// channels; returns the latent `[height, width]`.
    pub fn validate(&self, factor: usize, latent_channels: usize) -> Result<[usize; 2]> {
        let invalid = |m: String| Err(Error::InvalidInput(m));
        for (name, side) in [("width", self.width), ("height", self.height)] {
            if side == 0 || side % factor != 0 || side > MAX_IMAGE_SIDE {
                return invalid(format!(
                    "{name} {side} must be a positive multiple of {factor} (the VAE's downscale factor) up to {MAX_IMAGE_SIDE}"
                ));
            }
        }
        if let TimestepSchedule::Steps(steps) = self.schedule
            && !(1..=MAX_STEPS).contains(&steps)
        {
            return invalid(format!("steps {steps} must be between 1 and {MAX_STEPS}"));
        }
        let [clip_prompt, clip_negative] = self.clip.texts("", "");
        check_prompt_lengths(&[
            &self.prompt,
            &self.negative_prompt,
            clip_prompt,
            clip_negative,
        ])?;
        if !self.guidance_scale.is_finite() {
            return invalid(format!(
                "guidance scale {} is not a finite number",
                self.guidance_scale
            ));
        }
        if !(0.0..=1.0).contains(&self.eta) {
            return invalid(format!("eta {} must be in [0, 1]", self.eta));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return invalid(format!(
                "batch size {} must be between 1 and {MAX_BATCH}",
                self.batch_size
            ));
        }
        if let TokenMode::Fixed(length) = self.t5.mode
            && !(1..=MAX_T5_TOKENS).contains(&length)
        {
            return invalid(format!(
                "a fixed token length must be between 1 and {MAX_T5_TOKENS}, not {length}"
            ));
        }
        if let TimestepSchedule::Custom(list) = &self.schedule
            && (list.is_empty()
                || list.len() > MAX_STEPS
                || list.iter().any(|t| !t.is_finite())
                || list.windows(2).any(|pair| pair[1] >= pair[0]))
        {
            return invalid(format!(
                "custom timesteps must be 1 to {MAX_STEPS} numbers, each below the one before"
            ));
        }
        if let Some(InitImage {
            image,
            strength,
            mask,
        }) = &self.init_image
        {
            self.check_image(image, "init")?;
            if !(*strength > 0.0 && *strength <= 1.0) {
                return invalid(format!("strength {strength} must be in (0, 1]"));
            }
            if let Some(mask) = mask
                && ([mask.width, mask.height] != [self.width, self.height]
                    || mask.pixels.len() != mask.width * mask.height)
            {
                return invalid(format!(
                    "the mask is {}×{} ({} bytes); the request is {}×{}, one byte a pixel",
                    mask.width,
                    mask.height,
                    mask.pixels.len(),
                    self.width,
                    self.height
                ));
            }
        }
        let ClipText {
            prompt,
            negative,
            skip,
            ..
        } = &self.clip;
        if (prompt.is_some() || negative.is_some() || *skip != 0) && !self.conditioning.uses_clip()
        {
            return invalid(format!(
                "CLIP's own prompts and CLIP skip need a conditioning that uses CLIP, not {:?}",
                self.conditioning
            ));
        }
        if let Conditioning::ClipSur(SurOptions { weight, .. }) = self.conditioning
            && !(0.0..=1.0).contains(&weight)
        {
            return invalid(format!("SUR-adapter weight {weight} must be in [0, 1]"));
        }
        if self.controls.len() > MAX_CONTROLS {
            return invalid(format!(
                "{} controls; at most {MAX_CONTROLS} at once",
                self.controls.len()
            ));
        }
        for control in &self.controls {
            self.check_image(&control.image, "control")?;
            let finite = [control.scale, control.start, control.end]
                .iter()
                .all(|v| v.is_finite());
            if !finite || !(0.0..=1.0).contains(&control.start) || control.end < control.start {
                return invalid(format!(
                    "control scale {} must be a number and 0 ≤ start {} ≤ end {}",
                    control.scale, control.start, control.end
                ));
            }
        }
        let latent = [self.height / factor, self.width / factor];
        let expected = [self.batch_size, latent_channels, latent[0], latent[1]];
        let given = self.init_latents.iter().map(|l| ("initial latents", l));
        let steps = self.step_noise.iter().flatten().map(|l| ("step noise", l));
        for (what, latents) in given.chain(steps) {
            if latents.shape.as_slice() != expected {
                return invalid(format!(
                    "{what} have shape {:?}, expected {expected:?} for this request",
                    latents.shape
                ));
            }
            if latents.iter::<f32>().any(|v| !v.is_finite()) {
                return invalid(format!("{what} contain NaN or infinity"));
            }
        }
        Ok(latent)
    }
}
