//! Euler (discrete), as diffusers' `EulerDiscreteScheduler` (Karras et al. 2022, Algorithm 2
//! without churn): sigma-based, with fractional timesteps when Karras sigmas are used.

use crate::backend::Backend;
use burn::tensor::Tensor;

use super::schedules::{
    interp_index, karras_sigmas, numpy_arange, numpy_linspace, sigma_to_t, training_sigmas,
};
use super::{
    Choice, Common, FinalSigmas, Prediction, SchedulerConfig, TimestepSchedule, TimestepSpacing,
    unsupported,
};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Euler {
    pub timesteps: Vec<f32>,
    /// One sigma per timestep, then the final sigma (0, or σ_min).
    pub sigmas: Vec<f32>,
    pub init_noise_sigma: f32,
    prediction: Prediction,
}

impl Euler {
    pub(crate) fn new(config: &SchedulerConfig, schedule: &TimestepSchedule) -> Result<Self> {
        let common = Common::resolve(config, TimestepSpacing::Linspace)?;
        for (key, value) in [
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_beta_sigmas", config.use_beta_sigmas),
        ] {
            if value == Some(true) {
                return Err(unsupported(config, format!("`{key}` is not supported")));
            }
        }
        if let Some(Choice::Unknown(_)) = config.interpolation_type {
            return Err(unsupported(
                config,
                "only `interpolation_type` linear is supported".into(),
            ));
        }
        if let Some(Choice::Unknown(_)) = config.timestep_type {
            return Err(unsupported(
                config,
                "only `timestep_type` discrete is supported".into(),
            ));
        }
        let karras = config.use_karras_sigmas.unwrap_or(false);
        let n = common.num_train_timesteps();
        let timesteps: Vec<f32> = match schedule {
            TimestepSchedule::Custom(list) => {
                if karras {
                    return Err(unsupported(
                        config,
                        "custom timesteps cannot be combined with Karras sigmas".into(),
                    ));
                }
                list.clone()
            }
            &TimestepSchedule::Steps(steps) => {
                common.check_steps(steps)?;
                match common.timestep_spacing {
                    TimestepSpacing::Linspace => numpy_linspace(0.0, (n - 1) as f64, steps)
                        .iter()
                        .rev()
                        .map(|&t| t as f32)
                        .collect(),
                    TimestepSpacing::Leading => (0..steps)
                        .rev()
                        .map(|i| (i * (n / steps)) as f32 + common.steps_offset as f32)
                        .collect(),
                    TimestepSpacing::Trailing => {
                        numpy_arange(n as f64, 0.0, -(n as f64 / steps as f64))
                            .iter()
                            .map(|t| t.round_ties_even() as f32 - 1.0)
                            .collect()
                    }
                }
            }
        };
        let train_sigmas = training_sigmas(&common.alphas_cumprod);
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| interp_index(f64::from(t), &train_sigmas))
            .collect();
        let timesteps = if karras {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            let sigma_min = config
                .sigma_min
                .unwrap_or(sigmas.last().copied().unwrap_or(0.0));
            let sigma_max = config.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(sigma_min, sigma_max, timesteps.len());
            sigmas
                .iter()
                .map(|&s| sigma_to_t(s, &log_sigmas) as f32)
                .collect()
        } else {
            timesteps
        };
        let last = match config.choice(
            "final_sigmas_type",
            &config.final_sigmas_type,
            FinalSigmas::Zero,
        )? {
            FinalSigmas::Zero => 0.0,
            FinalSigmas::SigmaMin => f64::from(train_sigmas[0]),
        };
        sigmas.push(last);
        let sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        let max_sigma = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match common.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        common.check_timesteps(timesteps.iter().map(|&t| f64::from(t)))?;
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction: common.prediction,
        })
    }

    pub fn scale_model_input<B: Backend>(
        &self,
        sample: Tensor<B, 4>,
        index: usize,
    ) -> Tensor<B, 4> {
        let sigma = self.sigmas[index];
        sample / (sigma * sigma + 1.0).sqrt()
    }

    /// The clean sample x₀ the model output at step `index` predicts.
    pub fn predicted_original<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let sigma = self.sigmas[index];
        match self.prediction {
            Prediction::Epsilon => sample - model_output * sigma,
            Prediction::Sample => model_output,
            Prediction::VPrediction => {
                model_output * (-sigma / (sigma * sigma + 1.0).sqrt())
                    + sample / (sigma * sigma + 1.0)
            }
        }
    }

    pub fn step<B: Backend>(
        &self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let sigma = self.sigmas[index];
        let x0 = self.predicted_original(model_output, index, sample.clone());
        let derivative = (sample.clone() - x0) / sigma;
        let dt = self.sigmas[index + 1] - sigma;
        sample + derivative * dt
    }
}
