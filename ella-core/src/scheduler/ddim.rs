//! DDIM (Song et al. 2021) with η = 0, as diffusers' `DDIMScheduler`.

use crate::backend::Backend;
use burn::tensor::Tensor;

use super::schedules::{numpy_arange, numpy_linspace};
use super::{
    Common, Prediction, SchedulerConfig, TimestepSchedule, TimestepSpacing, unsupported,
    x0_and_epsilon,
};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Ddim {
    pub timesteps: Vec<f32>,
    pub(crate) alphas_cumprod: Vec<f32>,
    /// ᾱ used past the last timestep: 1 with `set_alpha_to_one`, else ᾱ₀.
    final_alpha_cumprod: f32,
    /// `num_train_timesteps // steps`: how far back each step goes.
    step_ratio: usize,
    pub(crate) prediction: Prediction,
    /// `clip_sample_range` when `clip_sample` is on.
    clip: Option<f32>,
}

impl Ddim {
    pub(crate) fn new(config: &SchedulerConfig, schedule: &TimestepSchedule) -> Result<Self> {
        let common = Common::resolve(config, TimestepSpacing::Leading)?;
        let TimestepSchedule::Steps(steps) = *schedule else {
            return Err(unsupported(
                config,
                "DDIM takes a number of steps, not a custom timestep list (use euler or dpm++2m)"
                    .into(),
            ));
        };
        common.check_steps(steps)?;
        let n = common.num_train_timesteps();
        let timesteps: Vec<i64> = match common.timestep_spacing {
            TimestepSpacing::Linspace => numpy_linspace(0.0, (n - 1) as f64, steps)
                .iter()
                .rev()
                .map(|t| t.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Leading => (0..steps)
                .rev()
                .map(|i| (i * (n / steps) + common.steps_offset) as i64)
                .collect(),
            TimestepSpacing::Trailing => numpy_arange(n as f64, 0.0, -(n as f64 / steps as f64))
                .iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect(),
        };
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            common.alphas_cumprod[0]
        };
        let clip = config
            .clip_sample
            .unwrap_or(true)
            .then(|| config.clip_sample_range.unwrap_or(1.0) as f32);
        common.check_timesteps(timesteps.iter().map(|&t| t as f64))?;
        Ok(Self {
            timesteps: timesteps.iter().map(|&t| t as f32).collect(),
            alphas_cumprod: common.alphas_cumprod,
            final_alpha_cumprod,
            step_ratio: n / steps,
            prediction: common.prediction,
            clip,
        })
    }

    pub fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let t = self.timesteps[index] as usize;
        let alpha = self.alphas_cumprod[t];
        let alpha_prev = t
            .checked_sub(self.step_ratio)
            .map_or(self.final_alpha_cumprod, |prev| self.alphas_cumprod[prev]);
        let (x0, epsilon) = x0_and_epsilon(self.prediction, alpha, model_output, sample);
        let x0 = match self.clip {
            Some(range) => x0.clamp(-range, range),
            None => x0,
        };
        // η = 0: no noise, the direction term keeps all of 1 - ᾱ_prev.
        x0 * alpha_prev.sqrt() + epsilon * (1.0 - alpha_prev).sqrt()
    }
}
