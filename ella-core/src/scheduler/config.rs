//! `SchedulerConfig`: a diffusers `scheduler_config.json`, whatever class wrote it.
//!
//! As diffusers' `from_config`, a scheduler takes the keys it knows from the file and its
//! own class default for every key the file lacks (SD1.5's file is a `PNDMScheduler` config
//! with no `timestep_spacing`: DDIM then spaces `leading`, Euler and DPM-Solver `linspace`).

use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};

use super::unsupported;
use crate::error::Result;
use crate::weights::read_json;

/// A key naming one of a closed set of choices. A name ella does not know is kept, not
/// refused while reading: a config carries keys for other scheduler classes (an
/// `algorithm_type` only DPM-Solver reads); only a scheduler that reads the key refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<T> {
    Known(T),
    Unknown(String),
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Choice<T> {
    /// A string (anything else is an error, as for a `String` key), `Known` when it is one
    /// of `T`'s names.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let known: Result<T, serde::de::value::Error> =
            T::deserialize(name.as_str().into_deserializer());
        Ok(match known {
            Ok(known) => Choice::Known(known),
            Err(_) => Choice::Unknown(name),
        })
    }
}

/// `beta_schedule`: how the betas go from `beta_start` to `beta_end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    /// Linear in `sqrt(β)` (SD1.5).
    ScaledLinear,
    /// The cosine schedule (no `beta_start` / `beta_end`).
    SquaredcosCapV2,
}

/// `prediction_type`: what the U-Net predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Prediction {
    #[serde(rename = "epsilon")]
    Epsilon,
    #[serde(rename = "v_prediction")]
    VPrediction,
    #[serde(rename = "sample")]
    Sample,
}

/// `timestep_spacing`: how a number of steps is spread over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// `final_sigmas_type`: the sigma after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// `interpolation_type` (Euler): only `linear` (not `log_linear`) is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    Linear,
}

/// `timestep_type` (Euler): only `discrete` (not `continuous`) is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepType {
    Discrete,
}

/// `algorithm_type` (DPM-Solver): only `dpmsolver++` (not `dpmsolver` or the SDE variants)
/// is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Algorithm {
    #[serde(rename = "dpmsolver++")]
    DpmSolverPlusPlus,
}

/// `solver_type` (DPM-Solver): how the second-order term is formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SolverType {
    Midpoint,
    Heun,
}

/// The keys of diffusers scheduler configs that the supported schedulers read. `None` means
/// "absent from the file": the chosen scheduler's own default applies.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SchedulerConfig {
    /// The file this config was read from, for error messages.
    #[serde(skip)]
    pub path: Option<PathBuf>,
    #[serde(rename = "_class_name")]
    pub class_name: Option<String>,
    pub num_train_timesteps: Option<usize>,
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    pub beta_schedule: Option<Choice<BetaSchedule>>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: Option<Choice<Prediction>>,
    pub timestep_spacing: Option<Choice<TimestepSpacing>>,
    pub steps_offset: Option<usize>,
    pub rescale_betas_zero_snr: Option<bool>,
    pub thresholding: Option<bool>,
    // DDIM
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: Option<f64>,
    // Euler and DPM-Solver
    pub use_karras_sigmas: Option<bool>,
    pub use_exponential_sigmas: Option<bool>,
    pub use_beta_sigmas: Option<bool>,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    pub final_sigmas_type: Option<Choice<FinalSigmas>>,
    pub interpolation_type: Option<Choice<Interpolation>>,
    pub timestep_type: Option<Choice<TimestepType>>,
    // DPM-Solver
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<Choice<Algorithm>>,
    pub solver_type: Option<Choice<SolverType>>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
    // LCM and TCD
    pub original_inference_steps: Option<usize>,
    pub timestep_scaling: Option<f64>,
}

impl SchedulerConfig {
    /// SD1.5's `scheduler/scheduler_config.json` (written by `PNDMScheduler`), for
    /// single-file checkpoints, which carry no scheduler config.
    pub fn sd15() -> Self {
        Self {
            class_name: Some("PNDMScheduler".into()),
            num_train_timesteps: Some(1000),
            beta_start: Some(0.00085),
            beta_end: Some(0.012),
            beta_schedule: Some(Choice::Known(BetaSchedule::ScaledLinear)),
            set_alpha_to_one: Some(false),
            steps_offset: Some(1),
            clip_sample: Some(false),
            ..Self::default()
        }
    }

    /// Reads `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut config: Self = read_json(path)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// The choice `value` (of the key `key`) names, `default` when the file lacks the key;
    /// an `InvalidConfig` error when it names one ella does not support.
    pub(crate) fn choice<T: Copy>(
        &self,
        key: &str,
        value: &Option<Choice<T>>,
        default: T,
    ) -> Result<T> {
        match value {
            None => Ok(default),
            Some(Choice::Known(known)) => Ok(*known),
            Some(Choice::Unknown(name)) => Err(unsupported(
                self,
                format!("`{key}` \"{name}\" is not supported"),
            )),
        }
    }
}
