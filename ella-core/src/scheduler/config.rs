//! `SchedulerConfig`: a diffusers `scheduler_config.json`, whatever class wrote it.
//!
//! As diffusers' `from_config`, a scheduler takes the keys it knows from the file and its
//! own class default for every key the file lacks (SD1.5's file is a `PNDMScheduler` config
//! with no `timestep_spacing`: DDIM then spaces `leading`, Euler and DPM-Solver `linspace`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::Result;
use crate::weights::read_json;

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
    /// `linear`, `scaled_linear` or `squaredcos_cap_v2`.
    pub beta_schedule: Option<String>,
    pub trained_betas: Option<Vec<f64>>,
    /// `epsilon`, `v_prediction` or `sample`.
    pub prediction_type: Option<String>,
    /// `leading`, `trailing` or `linspace`.
    pub timestep_spacing: Option<String>,
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
    /// `zero` or `sigma_min`.
    pub final_sigmas_type: Option<String>,
    pub interpolation_type: Option<String>,
    pub timestep_type: Option<String>,
    // DPM-Solver
    pub solver_order: Option<usize>,
    pub algorithm_type: Option<String>,
    pub solver_type: Option<String>,
    pub lower_order_final: Option<bool>,
    pub euler_at_final: Option<bool>,
    pub use_lu_lambdas: Option<bool>,
    pub lambda_min_clipped: Option<f64>,
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
            beta_schedule: Some("scaled_linear".into()),
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
}
