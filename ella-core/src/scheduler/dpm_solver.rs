//! DPM-Solver++ multistep (Lu et al. 2022), first and second order, as diffusers'
//! `DPMSolverMultistepScheduler` with `algorithm_type="dpmsolver++"`: the official ELLA
//! demo's scheduler.

use crate::backend::Backend;
use burn::tensor::Tensor;

use super::schedules::{
    interp_index, karras_sigmas, numpy_arange, numpy_linspace, sigma_to_t, training_sigmas,
};
use super::{
    Choice, Common, FinalSigmas, Prediction, SchedulerConfig, SolverType, TimestepSchedule,
    TimestepSpacing, unsupported,
};
use crate::error::{Error, Result};

#[derive(Debug)]
pub struct DpmSolver<B: Backend> {
    pub timesteps: Vec<f32>,
    /// One sigma per timestep, then the final sigma (0, or σ_min).
    pub sigmas: Vec<f32>,
    prediction: Prediction,
    solver_order: usize,
    solver_type: SolverType,
    /// Whether the last step is first order.
    first_order_last_step: bool,
    /// The previous step's data prediction (x₀), for the second-order update.
    previous: Option<Tensor<B, 4>>,
}

impl<B: Backend> DpmSolver<B> {
    pub(crate) fn new(
        config: &SchedulerConfig,
        schedule: &TimestepSchedule,
        force_karras: bool,
    ) -> Result<Self> {
        let common = Common::resolve(config, TimestepSpacing::Linspace)?;
        if let Some(Choice::Unknown(algorithm)) = &config.algorithm_type {
            return Err(unsupported(
                config,
                format!("`algorithm_type` \"{algorithm}\" is not supported (dpmsolver++ is)"),
            ));
        }
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=2).contains(&solver_order) {
            return Err(unsupported(
                config,
                format!("`solver_order` {solver_order} is not supported (1 or 2)"),
            ));
        }
        let solver_type =
            config.choice("solver_type", &config.solver_type, SolverType::Midpoint)?;
        for (key, value) in [
            ("use_exponential_sigmas", config.use_exponential_sigmas),
            ("use_beta_sigmas", config.use_beta_sigmas),
            ("use_lu_lambdas", config.use_lu_lambdas),
        ] {
            if value == Some(true) {
                return Err(unsupported(config, format!("`{key}` is not supported")));
            }
        }
        if config.lambda_min_clipped.is_some_and(f64::is_finite) {
            return Err(unsupported(
                config,
                "a finite `lambda_min_clipped` is not supported".into(),
            ));
        }
        let karras = force_karras || config.use_karras_sigmas.unwrap_or(false);
        let n = common.num_train_timesteps();
        let train_sigmas = training_sigmas(&common.alphas_cumprod);
        let (timesteps, mut sigmas): (Vec<f32>, Vec<f64>) = match schedule {
            TimestepSchedule::Custom(list) => {
                if karras {
                    return Err(unsupported(
                        config,
                        "custom timesteps cannot be combined with Karras sigmas".into(),
                    ));
                }
                // diffusers casts a custom list to int64.
                let timesteps: Vec<f32> = list.iter().map(|t| t.trunc()).collect();
                let sigmas = timesteps
                    .iter()
                    .map(|&t| interp_index(f64::from(t), &train_sigmas))
                    .collect();
                (timesteps, sigmas)
            }
            &TimestepSchedule::Steps(steps) => {
                common.check_steps(steps)?;
                let spaced: Vec<f64> = match common.timestep_spacing {
                    TimestepSpacing::Linspace => numpy_linspace(0.0, (n - 1) as f64, steps + 1)
                        .iter()
                        .rev()
                        .take(steps)
                        .map(|t| t.round_ties_even())
                        .collect(),
                    TimestepSpacing::Leading => (0..=steps)
                        .rev()
                        .take(steps)
                        .map(|i| (i * (n / (steps + 1)) + common.steps_offset) as f64)
                        .collect(),
                    TimestepSpacing::Trailing => {
                        numpy_arange(n as f64, 0.0, -(n as f64 / steps as f64))
                            .iter()
                            .map(|t| t.round_ties_even() - 1.0)
                            .collect()
                    }
                };
                if karras {
                    let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
                    let sigma_min = config.sigma_min.unwrap_or(f64::from(train_sigmas[0]));
                    let sigma_max = config.sigma_max.unwrap_or(f64::from(train_sigmas[n - 1]));
                    let sigmas = karras_sigmas(sigma_min, sigma_max, steps);
                    let timesteps = sigmas
                        .iter()
                        .map(|&s| sigma_to_t(s, &log_sigmas).round_ties_even() as f32)
                        .collect();
                    (timesteps, sigmas)
                } else {
                    let sigmas = spaced
                        .iter()
                        .map(|&t| interp_index(t, &train_sigmas))
                        .collect();
                    (spaced.iter().map(|&t| t as f32).collect(), sigmas)
                }
            }
        };
        let final_zero = config.choice(
            "final_sigmas_type",
            &config.final_sigmas_type,
            FinalSigmas::Zero,
        )? == FinalSigmas::Zero;
        sigmas.push(if final_zero {
            0.0
        } else {
            f64::from(train_sigmas[0])
        });
        common.check_timesteps(timesteps.iter().map(|&t| f64::from(t)))?;
        // Equal neighbouring sigmas make a step of length h = 0, which the second-order
        // update divides by (diffusers 0.42 spaces 1000 `linspace` steps with timestep 500
        // twice and ends in infinities there).
        if let Some(i) = (1..timesteps.len()).find(|&i| sigmas[i] == sigmas[i - 1]) {
            return Err(Error::InvalidInput(format!(
                "timestep {} comes twice in the schedule, a step of length 0 that \
                 DPM-Solver++ divides by",
                timesteps[i]
            )));
        }
        let lower_order_final = config.lower_order_final.unwrap_or(true);
        let first_order_last_step = config.euler_at_final.unwrap_or(false)
            || (lower_order_final && timesteps.len() < 15)
            || final_zero;
        Ok(Self {
            timesteps,
            sigmas: sigmas.into_iter().map(|s| s as f32).collect(),
            prediction: common.prediction,
            solver_order,
            solver_type,
            first_order_last_step,
            previous: None,
        })
    }

    /// `(α_t, σ_t, λ_t)` of a sigma: `α = 1/sqrt(σ² + 1)`, `σ_t = σ·α`, `λ = ln α − ln σ_t`.
    pub(crate) fn alpha_sigma_lambda(sigma: f32) -> (f32, f32, f32) {
        let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
        let sigma_t = sigma * alpha;
        (alpha, sigma_t, alpha.ln() - sigma_t.ln())
    }

    /// The data prediction x₀ of the model output at step `index` (dpmsolver++ works on it,
    /// not on ε).
    pub fn predicted_original(
        &self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let (alpha_s0, sigma_s0, _) = Self::alpha_sigma_lambda(self.sigmas[index]);
        match self.prediction {
            Prediction::Epsilon => (sample - model_output * sigma_s0) / alpha_s0,
            Prediction::Sample => model_output,
            Prediction::VPrediction => sample * alpha_s0 - model_output * sigma_s0,
        }
    }

    pub fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let (_, sigma_s0, lambda_s0) = Self::alpha_sigma_lambda(self.sigmas[index]);
        let (alpha_t, sigma_t, lambda_t) = Self::alpha_sigma_lambda(self.sigmas[index + 1]);
        let x0 = self.predicted_original(model_output, index, sample.clone());
        let h = lambda_t - lambda_s0;
        let phi = (-h).exp() - 1.0;
        let last = index + 1 == self.timesteps.len();
        let previous = self.previous.replace(x0.clone());
        match previous {
            Some(m1)
                if self.solver_order == 2 && index > 0 && !(last && self.first_order_last_step) =>
            {
                let (_, _, lambda_s1) = Self::alpha_sigma_lambda(self.sigmas[index - 1]);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let d1 = (x0.clone() - m1) * (1.0 / r0);
                let base = sample * (sigma_t / sigma_s0) - x0 * (alpha_t * phi);
                match self.solver_type {
                    SolverType::Midpoint => base - d1 * (0.5 * (alpha_t * phi)),
                    SolverType::Heun => base + d1 * (alpha_t * (phi / h + 1.0)),
                }
            }
            _ => sample * (sigma_t / sigma_s0) - x0 * (alpha_t * phi),
        }
    }
}
