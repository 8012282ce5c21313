//! Trajectory Consistency Distillation's strategic stochastic sampler (Zheng et al. 2024),
//! as diffusers' `TCDScheduler`: each step jumps to an intermediate timestep
//! `s = floor((1 − η)·t_prev)` along the predicted trajectory, then (η > 0) noises back up
//! to `t_prev`. η ("gamma" in the paper) trades detail for stability: 0 is deterministic,
//! 0.3 the authors' default. For TCD-LoRAs, at 2–8 steps.

use crate::backend::Backend;
use burn::tensor::Tensor;

use super::lcm::consistency_timesteps;
use super::{
    Common, Prediction, SchedulerConfig, TimestepSchedule, TimestepSpacing, x0_and_epsilon,
};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct Tcd {
    pub timesteps: Vec<f32>,
    pub(crate) alphas_cumprod: Vec<f32>,
    pub(crate) prediction: Prediction,
    /// η in [0, 1]: how much of each step is re-noised.
    eta: f32,
}

impl Tcd {
    /// η's default, the TCD authors' 0.3.
    pub const DEFAULT_ETA: f32 = 0.3;

    pub(crate) fn new(config: &SchedulerConfig, schedule: &TimestepSchedule) -> Result<Self> {
        let common = Common::resolve(config, TimestepSpacing::Leading)?;
        let timesteps = consistency_timesteps(config, &common, schedule, "tcd")?;
        Ok(Self {
            timesteps,
            alphas_cumprod: common.alphas_cumprod,
            prediction: common.prediction,
            eta: Self::DEFAULT_ETA,
        })
    }

    /// Sets η (diffusers passes it to every `step`).
    pub fn set_eta(&mut self, eta: f32) -> Result<()> {
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::InvalidInput(format!(
                "TCD's eta {eta} must be in [0, 1]"
            )));
        }
        self.eta = eta;
        Ok(())
    }

    /// Whether step `index` draws noise (with η > 0, every step but the schedule's last).
    pub fn draws_noise(&self, index: usize) -> bool {
        self.eta > 0.0 && index + 1 < self.timesteps.len()
    }

    /// The sample of step `index + 1`; `noise` is needed when [`Tcd::draws_noise`].
    pub fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let t = self.timesteps[index];
        let t_prev = self.timesteps.get(index + 1).copied().unwrap_or(0.0);
        // `floor((1 − η)·t_prev)` in f32, as torch on the long timestep.
        let s = ((1.0 - self.eta) * t_prev).floor() as usize;
        let alpha = self.alphas_cumprod[t as usize];
        let alpha_s = self.alphas_cumprod[s];
        let (x0, epsilon) = x0_and_epsilon(self.prediction, alpha, model_output, sample);
        let noised = x0 * alpha_s.sqrt() + epsilon * (1.0 - alpha_s).sqrt();
        match noise {
            Some(noise) if self.draws_noise(index) => {
                let ratio = self.alphas_cumprod[t_prev as usize] / alpha_s;
                noised * ratio.sqrt() + noise * (1.0 - ratio).sqrt()
            }
            _ => noised,
        }
    }
}
