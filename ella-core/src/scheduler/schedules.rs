//! Noise-schedule arithmetic shared by the schedulers, reproducing the dtypes diffusers
//! computes in (torch f32 with its fused linspace and f64-accumulated cumprod; NumPy f64 for
//! spacing and interpolation), so that timesteps come out identical.

use super::BetaSchedule;

/// SD1.5's Align Your Steps schedule (Sabour et al. 2024; diffusers' `AysSchedules`).
pub const ALIGN_YOUR_STEPS_SD15: [f32; 10] = [
    999.0, 850.0, 736.0, 645.0, 545.0, 455.0, 343.0, 233.0, 124.0, 24.0,
];

/// torch.linspace in f32: `fma(step, i, start)` for the first half, `fma(-step, n-1-i, end)`
/// for the second.
pub fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// NumPy's `linspace` in f64 (endpoint included, last value exact).
pub fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (stop - start) / (n - 1) as f64;
            let mut values: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
            values[n - 1] = stop;
            values
        }
    }
}

/// NumPy's `arange(start, stop, step)` in f64: it fills `start + i·delta` with
/// `delta = (start + step) - start`, which differs from `step` by rounding.
pub fn numpy_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let count = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..count)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Betas of a schedule as diffusers builds them (f32).
pub fn betas(schedule: BetaSchedule, start: f64, end: f64, n: usize) -> Vec<f32> {
    match schedule {
        BetaSchedule::Linear => torch_linspace_f32(start as f32, end as f32, n),
        BetaSchedule::ScaledLinear => torch_linspace_f32(start.sqrt() as f32, end.sqrt() as f32, n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SquaredcosCapV2 => {
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
    }
}

/// `cumprod(1 - betas)`: torch accumulates in f64 on the CPU and rounds each value to f32.
pub fn alphas_cumprod(betas: &[f32]) -> Vec<f32> {
    let mut product = 1.0f64;
    betas
        .iter()
        .map(|&beta| {
            product *= f64::from(1.0f32 - beta);
            product as f32
        })
        .collect()
}

/// `((1 - ᾱ) / ᾱ) ** 0.5` per training timestep, in f32.
pub fn training_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// NumPy's `interp(x, arange(len(fp)), fp)` in f64.
pub fn interp_index(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    if x == j as f64 {
        return f64::from(fp[j]);
    }
    let slope = f64::from(fp[j + 1]) - f64::from(fp[j]);
    slope * (x - j as f64) + f64::from(fp[j])
}

/// Karras et al. (2022) sigmas, ρ = 7, between the given extremes (diffusers' `_convert_to_karras`).
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The (fractional) training timestep of a sigma: linear interpolation in log-sigma between
/// the two neighbouring training sigmas (diffusers' `_sigma_to_t`).
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let at_or_below = log_sigmas
        .iter()
        .filter(|&&l| log_sigma - f64::from(l) >= 0.0)
        .count();
    let low = at_or_below.saturating_sub(1).min(log_sigmas.len() - 2);
    let (low_value, high_value) = (f64::from(log_sigmas[low]), f64::from(log_sigmas[low + 1]));
    let w = ((low_value - log_sigma) / (low_value - high_value)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}
