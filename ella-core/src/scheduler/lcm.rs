//! Latent Consistency Models' multistep sampler (Luo et al. 2023), as diffusers'
//! `LCMScheduler`: each step predicts the clean latent through the consistency boundary
//! condition, then noises it again to the next timestep with fresh noise (except after the
//! last step). For LCM-distilled U-Nets and LCM-LoRAs, at 2–8 steps.

use crate::backend::Backend;
use burn::tensor::Tensor;

use super::{
    Common, Prediction, SchedulerConfig, TimestepSchedule, TimestepSpacing, unsupported,
    x0_and_epsilon,
};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Lcm {
    pub timesteps: Vec<f32>,
    pub(crate) alphas_cumprod: Vec<f32>,
    pub(crate) prediction: Prediction,
    /// `clip_sample_range` when `clip_sample` is on (off by default for LCM).
    clip: Option<f32>,
    /// `timestep_scaling`: how sharply the boundary condition switches from the sample to
    /// the prediction.
    timestep_scaling: f32,
}

impl Lcm {
    pub(crate) fn new(config: &SchedulerConfig, schedule: &TimestepSchedule) -> Result<Self> {
        // LCM's timesteps ignore `timestep_spacing` and `steps_offset`.
        let common = Common::resolve(config, TimestepSpacing::Leading)?;
        let timesteps = consistency_timesteps(config, &common, schedule, "lcm")?;
        let clip = config
            .clip_sample
            .unwrap_or(false)
            .then(|| config.clip_sample_range.unwrap_or(1.0) as f32);
        Ok(Self {
            timesteps,
            alphas_cumprod: common.alphas_cumprod,
            prediction: common.prediction,
            clip,
            timestep_scaling: timestep_scaling(config)?,
        })
    }

    /// Whether step `index` draws noise (every step but the schedule's last).
    pub fn draws_noise(&self, index: usize) -> bool {
        index + 1 < self.timesteps.len()
    }

    /// The sample of step `index + 1`; `noise` (unit variance, the sample's shape) is needed
    /// when [`Lcm::draws_noise`].
    pub fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let t = self.timesteps[index];
        let alpha = self.alphas_cumprod[t as usize];
        let (x0, _) = x0_and_epsilon(self.prediction, alpha, model_output, sample.clone());
        let x0 = match self.clip {
            Some(range) => x0.clamp(-range, range),
            None => x0,
        };
        let (c_skip, c_out) = boundary_condition(t, self.timestep_scaling);
        let denoised = x0 * c_out + sample * c_skip;
        match noise {
            Some(noise) if self.draws_noise(index) => {
                let alpha_prev = self.alphas_cumprod[self.timesteps[index + 1] as usize];
                denoised * alpha_prev.sqrt() + noise * (1.0 - alpha_prev).sqrt()
            }
            _ => denoised,
        }
    }
}

/// The consistency models' boundary condition `(c_skip, c_out)` at timestep `t`, with
/// σ_data = 0.5, in f32 as diffusers computes it from the scaled timestep.
fn boundary_condition(t: f32, scaling: f32) -> (f32, f32) {
    const SIGMA_DATA: f32 = 0.5;
    let scaled = t * scaling;
    let denominator = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
    (
        SIGMA_DATA * SIGMA_DATA / denominator,
        scaled / denominator.sqrt(),
    )
}

/// `timestep_scaling`, 10 by default.
fn timestep_scaling(config: &SchedulerConfig) -> Result<f32> {
    let scaling = config.timestep_scaling.unwrap_or(10.0);
    if !(scaling.is_finite() && scaling > 0.0) {
        return Err(unsupported(
            config,
            format!("`timestep_scaling` {scaling} must be a finite number above 0"),
        ));
    }
    Ok(scaling as f32)
}

/// LCM's and TCD's timesteps: the distillation schedule of `original_inference_steps`
/// (50 by default) timesteps `k·i − 1`, `k = num_train_timesteps / original`, of which
/// `steps` are taken at evenly spaced indices from the highest.
pub(crate) fn consistency_timesteps(
    config: &SchedulerConfig,
    common: &Common,
    schedule: &TimestepSchedule,
    name: &str,
) -> Result<Vec<f32>> {
    let TimestepSchedule::Steps(steps) = *schedule else {
        return Err(unsupported(
            config,
            format!("{name} takes a number of steps, not a custom timestep list"),
        ));
    };
    common.check_steps(steps)?;
    let n = common.num_train_timesteps();
    let original = config.original_inference_steps.unwrap_or(50);
    if !(1..=n).contains(&original) {
        return Err(unsupported(
            config,
            format!(
                "`original_inference_steps` {original} must be between 1 and the {n} training \
                 timesteps"
            ),
        ));
    }
    if steps > original {
        return Err(Error::InvalidInput(format!(
            "more steps than the {original} of the distillation schedule \
             (`original_inference_steps`)"
        )));
    }
    let k = n / original;
    let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
    // NumPy's `floor(linspace(0, len, steps, endpoint=False))`, in f64.
    let spacing = origin.len() as f64 / steps as f64;
    Ok((0..steps)
        .map(|i| origin[(i as f64 * spacing).floor() as usize] as f32)
        .collect())
}
