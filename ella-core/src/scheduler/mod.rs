//! Diffusion schedulers as diffusers implements them for SD1.5: DDIM, Euler (discrete),
//! DPM-Solver++ (2M, optionally with Karras sigmas), and the few-step samplers of
//! consistency-distilled models, LCM and TCD, configured from a diffusers
//! `scheduler_config.json`, with step counts or custom timestep lists (Align Your Steps).
//!
//! A [`Scheduler`] is made for one sampling run: it holds the timesteps and, for the
//! multistep solver, the previous model output. LCM and TCD are stochastic: each step but the
//! last adds fresh noise, which the caller draws ([`Scheduler::draws_noise`]).

mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod lcm;
mod schedules;
mod tcd;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::backend::Backend;
use burn::tensor::Tensor;

pub use config::{
    Algorithm, BetaSchedule, Choice, FinalSigmas, Interpolation, Prediction, SchedulerConfig,
    SolverType, TimestepSpacing, TimestepType,
};
pub use ddim::Ddim;
pub use dpm_solver::DpmSolver;
pub use euler::Euler;
pub use lcm::Lcm;
pub use schedules::ALIGN_YOUR_STEPS_SD15;
pub use tcd::Tcd;

use crate::error::{Error, Result};
use crate::limits::MAX_TRAIN_TIMESTEPS;

/// The schedulers `Pipeline` offers, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulerKind {
    /// `ddim`: DDIM, deterministic (η = 0).
    Ddim,
    /// `euler`: Euler (discrete), sigma-based; its timesteps may be fractional.
    Euler,
    /// `dpm++2m`: DPM-Solver++ 2M, the official ELLA demo's scheduler (the default).
    #[default]
    DpmSolverMultistep,
    /// `dpm++2m-karras`: DPM-Solver++ 2M with Karras sigmas.
    DpmSolverMultistepKarras,
    /// `lcm`: Latent Consistency Models' sampler, for LCM models and LCM-LoRAs (2–8 steps,
    /// guidance 1–2).
    Lcm,
    /// `tcd`: Trajectory Consistency Distillation's sampler, for TCD-LoRAs (2–8 steps),
    /// with the request's `eta`.
    Tcd,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::DpmSolverMultistepKarras,
        SchedulerKind::Lcm,
        SchedulerKind::Tcd,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::DpmSolverMultistep => "dpm++2m",
            SchedulerKind::DpmSolverMultistepKarras => "dpm++2m-karras",
            SchedulerKind::Lcm => "lcm",
            SchedulerKind::Tcd => "tcd",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SchedulerKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                Error::InvalidInput(format!(
                    "unknown scheduler `{name}`; choose one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// Which timesteps a run samples at.
#[derive(Debug, Clone, PartialEq)]
pub enum TimestepSchedule {
    /// This many steps, spaced as the config's `timestep_spacing` says.
    Steps(usize),
    /// These timesteps, highest first (Euler and DPM-Solver only, without Karras sigmas).
    Custom(Vec<f32>),
}

impl TimestepSchedule {
    /// SD1.5's 10-step Align Your Steps schedule.
    pub fn align_your_steps() -> Self {
        TimestepSchedule::Custom(ALIGN_YOUR_STEPS_SD15.to_vec())
    }

    /// How many steps the schedule takes.
    pub fn steps(&self) -> usize {
        match self {
            TimestepSchedule::Steps(steps) => *steps,
            TimestepSchedule::Custom(timesteps) => timesteps.len(),
        }
    }
}

/// One sampling run's scheduler.
#[derive(Debug)]
pub enum Scheduler<B: Backend> {
    Ddim(Ddim),
    Euler(Euler),
    DpmSolver(DpmSolver<B>),
    Lcm(Lcm),
    Tcd(Tcd),
}

impl<B: Backend> Scheduler<B> {
    /// Builds `kind` from `config` (keys absent there take the class's diffusers default)
    /// and sets its timesteps.
    pub fn new(
        kind: SchedulerKind,
        config: &SchedulerConfig,
        schedule: &TimestepSchedule,
    ) -> Result<Self> {
        match schedule {
            TimestepSchedule::Steps(0) => {
                return Err(Error::InvalidInput(
                    "the number of steps must be at least 1".into(),
                ));
            }
            TimestepSchedule::Custom(list) if list.is_empty() => {
                return Err(Error::InvalidInput(
                    "a custom timestep list must not be empty".into(),
                ));
            }
            _ => {}
        }
        match (Self::build(kind, config, schedule), schedule) {
            // A step count this config's spacing cannot make: say which counts can.
            (Err(Error::InvalidInput(reason)), &TimestepSchedule::Steps(steps)) => {
                // The counts just below (a config's spacing fails only at its largest).
                let most = (steps.saturating_sub(32).max(1)..steps)
                    .rev()
                    .find(|&m| Self::build(kind, config, &TimestepSchedule::Steps(m)).is_ok());
                Err(Error::InvalidInput(match most {
                    Some(most) => format!(
                        "{steps} steps with {kind}: {reason}; this scheduler config allows at \
                         most {most} steps"
                    ),
                    None => format!("{steps} steps with {kind}: {reason}"),
                }))
            }
            (built, _) => built,
        }
    }

    fn build(
        kind: SchedulerKind,
        config: &SchedulerConfig,
        schedule: &TimestepSchedule,
    ) -> Result<Self> {
        Ok(match kind {
            SchedulerKind::Ddim => Scheduler::Ddim(Ddim::new(config, schedule)?),
            SchedulerKind::Euler => Scheduler::Euler(Euler::new(config, schedule)?),
            SchedulerKind::DpmSolverMultistep => {
                Scheduler::DpmSolver(DpmSolver::new(config, schedule, false)?)
            }
            SchedulerKind::DpmSolverMultistepKarras => {
                Scheduler::DpmSolver(DpmSolver::new(config, schedule, true)?)
            }
            SchedulerKind::Lcm => Scheduler::Lcm(Lcm::new(config, schedule)?),
            SchedulerKind::Tcd => Scheduler::Tcd(Tcd::new(config, schedule)?),
        })
    }

    /// The timesteps of the run, highest first, as the U-Net (and the connector) get them.
    pub fn timesteps(&self) -> &[f32] {
        match self {
            Scheduler::Ddim(s) => &s.timesteps,
            Scheduler::Euler(s) => &s.timesteps,
            Scheduler::DpmSolver(s) => &s.timesteps,
            Scheduler::Lcm(s) => &s.timesteps,
            Scheduler::Tcd(s) => &s.timesteps,
        }
    }

    /// Sets TCD's η (ignored by the other schedulers).
    pub fn set_eta(&mut self, eta: f32) -> Result<()> {
        match self {
            Scheduler::Tcd(s) => s.set_eta(eta),
            _ => Ok(()),
        }
    }

    /// Whether step `index` adds fresh noise, which [`Scheduler::step`] then needs.
    pub fn draws_noise(&self, index: usize) -> bool {
        match self {
            Scheduler::Lcm(s) => s.draws_noise(index),
            Scheduler::Tcd(s) => s.draws_noise(index),
            Scheduler::Ddim(_) | Scheduler::Euler(_) | Scheduler::DpmSolver(_) => false,
        }
    }

    /// The sigmas of the run (one more than timesteps), for sigma-based schedulers.
    pub fn sigmas(&self) -> Option<&[f32]> {
        match self {
            Scheduler::Ddim(_) | Scheduler::Lcm(_) | Scheduler::Tcd(_) => None,
            Scheduler::Euler(s) => Some(&s.sigmas),
            Scheduler::DpmSolver(s) => Some(&s.sigmas),
        }
    }

    /// The factor unit-variance initial noise is scaled by.
    pub fn init_noise_sigma(&self) -> f32 {
        match self {
            Scheduler::Euler(s) => s.init_noise_sigma,
            _ => 1.0,
        }
    }

    /// `original` noised to the level of step `index`, where an image-to-image run starts:
    /// `sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε` (DDIM, LCM, TCD), `x + σ·ε` (Euler), `α_σ·x + σ_σ·ε`
    /// (DPM-Solver), as diffusers' `add_noise` with the run's begin index.
    pub fn add_noise(
        &self,
        original: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        index: usize,
    ) -> Tensor<B, 4> {
        let discrete = |alphas_cumprod: &[f32]| {
            let alpha = alphas_cumprod[self.timesteps()[index] as usize];
            (alpha.sqrt(), (1.0 - alpha).sqrt())
        };
        let (signal, noise_scale) = match self {
            Scheduler::Ddim(s) => discrete(&s.alphas_cumprod),
            Scheduler::Lcm(s) => discrete(&s.alphas_cumprod),
            Scheduler::Tcd(s) => discrete(&s.alphas_cumprod),
            Scheduler::Euler(s) => (1.0, s.sigmas[index]),
            Scheduler::DpmSolver(s) => {
                let (alpha, sigma, _) = DpmSolver::<B>::alpha_sigma_lambda(s.sigmas[index]);
                (alpha, sigma)
            }
        };
        original * signal + noise * noise_scale
    }

    /// The U-Net input at step `index` (Euler divides by `sqrt(σ² + 1)`).
    pub fn scale_model_input(&self, sample: Tensor<B, 4>, index: usize) -> Tensor<B, 4> {
        match self {
            Scheduler::Euler(s) => s.scale_model_input(sample, index),
            _ => sample,
        }
    }

    /// The clean sample x₀ the model output at step `index` predicts (what a live preview
    /// shows: the image the run is heading to, not the noisy current sample).
    pub fn predicted_original(
        &self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
    ) -> Tensor<B, 4> {
        let discrete = |prediction, alphas_cumprod: &[f32]| {
            let alpha = alphas_cumprod[self.timesteps()[index] as usize];
            x0_and_epsilon(prediction, alpha, model_output.clone(), sample.clone()).0
        };
        match self {
            Scheduler::Ddim(s) => discrete(s.prediction, &s.alphas_cumprod),
            Scheduler::Lcm(s) => discrete(s.prediction, &s.alphas_cumprod),
            Scheduler::Tcd(s) => discrete(s.prediction, &s.alphas_cumprod),
            Scheduler::Euler(s) => s.predicted_original(model_output, index, sample),
            Scheduler::DpmSolver(s) => s.predicted_original(model_output, index, sample),
        }
    }

    /// The sample of step `index + 1` from the model output at step `index`. Steps must be
    /// taken in order, from 0. `noise` (unit variance, the sample's shape) is the fresh
    /// noise of a step that [draws it](Scheduler::draws_noise); without it that step
    /// returns its denoised estimate.
    pub fn step(
        &mut self,
        model_output: Tensor<B, 4>,
        index: usize,
        sample: Tensor<B, 4>,
        noise: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        match self {
            Scheduler::Ddim(s) => s.step(model_output, index, sample),
            Scheduler::Euler(s) => s.step(model_output, index, sample),
            Scheduler::DpmSolver(s) => s.step(model_output, index, sample),
            Scheduler::Lcm(s) => s.step(model_output, index, sample, noise),
            Scheduler::Tcd(s) => s.step(model_output, index, sample, noise),
        }
    }
}

/// The predicted clean sample x₀ and noise ε of a DDPM-parametrised sample (DDIM, LCM, TCD)
/// at ᾱ_t = `alpha`, from the model output as `prediction` reads it.
pub(crate) fn x0_and_epsilon<B: Backend>(
    prediction: Prediction,
    alpha: f32,
    model_output: Tensor<B, 4>,
    sample: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let beta = 1.0 - alpha;
    match prediction {
        Prediction::Epsilon => (
            (sample - model_output.clone() * beta.sqrt()) / alpha.sqrt(),
            model_output,
        ),
        Prediction::Sample => (
            model_output.clone(),
            (sample - model_output * alpha.sqrt()) / beta.sqrt(),
        ),
        Prediction::VPrediction => (
            sample.clone() * alpha.sqrt() - model_output.clone() * beta.sqrt(),
            model_output * alpha.sqrt() + sample * beta.sqrt(),
        ),
    }
}

/// The config keys every scheduler shares, resolved with one class's defaults.
#[derive(Debug, Clone)]
pub(crate) struct Common {
    pub alphas_cumprod: Vec<f32>,
    pub prediction: Prediction,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
}

impl Common {
    /// Resolves the shared keys; `spacing` is the class's default `timestep_spacing`.
    pub fn resolve(config: &SchedulerConfig, spacing: TimestepSpacing) -> Result<Self> {
        let invalid = |reason: String| unsupported(config, reason);
        if config.thresholding == Some(true) {
            return Err(invalid("`thresholding` is not supported".into()));
        }
        if config.rescale_betas_zero_snr == Some(true) {
            return Err(invalid("`rescale_betas_zero_snr` is not supported".into()));
        }
        let n = config.num_train_timesteps.unwrap_or(1000);
        if !(2..=MAX_TRAIN_TIMESTEPS).contains(&n) {
            return Err(invalid(format!(
                "`num_train_timesteps` {n} must be between 2 and {MAX_TRAIN_TIMESTEPS}"
            )));
        }
        if config.steps_offset.is_some_and(|offset| offset >= n) {
            return Err(invalid(format!(
                "`steps_offset` must be below the {n} training timesteps"
            )));
        }
        let positive = [
            ("clip_sample_range", config.clip_sample_range),
            ("sigma_min", config.sigma_min),
            ("sigma_max", config.sigma_max),
        ];
        if let Some((name, value)) = positive
            .iter()
            .find(|(_, v)| v.is_some_and(|v| !(v.is_finite() && v > 0.0)))
        {
            return Err(invalid(format!(
                "`{name}` {value:?} must be a finite number above 0"
            )));
        }
        let betas = match &config.trained_betas {
            Some(list) => {
                if list.len() != n {
                    return Err(invalid(format!(
                        "`trained_betas` has {} values for {n} training timesteps",
                        list.len()
                    )));
                }
                list.iter().map(|&b| b as f32).collect()
            }
            None => {
                let schedule =
                    config.choice("beta_schedule", &config.beta_schedule, BetaSchedule::Linear)?;
                let (beta_start, beta_end) = (
                    config.beta_start.unwrap_or(0.0001),
                    config.beta_end.unwrap_or(0.02),
                );
                if schedule != BetaSchedule::SquaredcosCapV2
                    && !(beta_start > 0.0 && beta_start <= beta_end && beta_end < 1.0)
                {
                    return Err(invalid(format!(
                        "`beta_start` {beta_start} and `beta_end` {beta_end} must satisfy \
                         0 < beta_start ≤ beta_end < 1"
                    )));
                }
                schedules::betas(schedule, beta_start, beta_end, n)
            }
        };
        if betas.iter().any(|&b| !(b > 0.0 && b < 1.0)) {
            return Err(invalid("betas must lie in (0, 1)".into()));
        }
        Ok(Self {
            alphas_cumprod: schedules::alphas_cumprod(&betas),
            prediction: config.choice(
                "prediction_type",
                &config.prediction_type,
                Prediction::Epsilon,
            )?,
            timestep_spacing: config.choice(
                "timestep_spacing",
                &config.timestep_spacing,
                spacing,
            )?,
            steps_offset: config.steps_offset.unwrap_or(0),
        })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Errors unless `steps` ≤ the number of training timesteps.
    pub fn check_steps(&self, steps: usize) -> Result<()> {
        if steps > self.num_train_timesteps() {
            return Err(Error::InvalidInput(format!(
                "more steps than the {} training timesteps",
                self.num_train_timesteps()
            )));
        }
        Ok(())
    }

    /// Errors unless every timestep lies in `0..num_train_timesteps` (a request's step count
    /// or custom list that the config's spacing or offset pushes outside).
    pub fn check_timesteps(&self, timesteps: impl IntoIterator<Item = f64>) -> Result<()> {
        let n = self.num_train_timesteps();
        match timesteps
            .into_iter()
            .find(|t| !(0.0..=(n - 1) as f64).contains(t))
        {
            Some(t) => Err(Error::InvalidInput(format!(
                "timestep {t} is outside the {n} training timesteps (0 to {})",
                n - 1
            ))),
            None => Ok(()),
        }
    }
}

/// An `InvalidConfig` error for a scheduler config.
pub(crate) fn unsupported(config: &SchedulerConfig, reason: String) -> Error {
    Error::InvalidConfig {
        path: config
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("scheduler config")),
        reason,
    }
}
