//! The model: everything loaded from the files (T5, connector, U-Net, VAE, and CLIP,
//! ControlNet, SUR-adapter when asked), shared by any number of contexts and threads.

use std::ffi::{CString, c_char, c_void};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ella_core::burn::tensor::DType;
use ella_core::{EllaPaths, Lora, ModelPaths, Precision, Threads};

use crate::abi::*;
use crate::boundary::{Failure, guard, invalid, panic_message};
use crate::engine::{self, Engine, refuse_inside_generation};

/// A loaded model. Share it between contexts and threads.
pub struct EllaModel {
    pub(crate) engine: Arc<dyn Engine>,
    pub(crate) log: Logger,
}

/// The host's log callback.
#[derive(Clone, Copy)]
pub(crate) struct Logger {
    callback: EllaLogCallback,
    user_data: *mut c_void,
}

// SAFETY: the host promises (header) that its log callback and user data may be used from
// the threads it calls the library on and from the worker threads of its jobs.
unsafe impl Send for Logger {}
unsafe impl Sync for Logger {}

impl Logger {
    pub(crate) fn log(&self, level: EllaLogLevel, message: &str) {
        if let (Some(callback), Ok(text)) = (self.callback, CString::new(message)) {
            // SAFETY: a host-provided callback with the documented signature.
            unsafe { callback(level, text.as_ptr(), self.user_data) };
        }
    }
}

/// Defaults: CPU backend, F32, T5 in the same precision, every core, no memory budget, no
/// logger, all paths NULL (to be set).
#[unsafe(no_mangle)]
pub extern "C" fn ella_model_params_default() -> EllaModelParams {
    EllaModelParams {
        struct_size: std::mem::size_of::<EllaModelParams>() as u32,
        t5_path: std::ptr::null(),
        ella_path: std::ptr::null(),
        ella_config_path: std::ptr::null(),
        sd_path: std::ptr::null(),
        backend: EllaBackend::Cpu as u32,
        precision: EllaPrecision::F32 as u32,
        log_callback: None,
        log_user_data: std::ptr::null_mut(),
        t5_precision: EllaT5Precision::Auto as u32,
        sd_config_path: std::ptr::null(),
        vae_path: std::ptr::null(),
        load_clip: 0,
        controlnet_path: std::ptr::null(),
        sur_adapter_path: std::ptr::null(),
        memory_budget: 0,
        kernel_cache_path: std::ptr::null(),
        n_threads: 0,
        taesd_path: std::ptr::null(),
        extra_controlnet_paths: std::ptr::null(),
        n_extra_controlnet_paths: 0,
        embedding_paths: std::ptr::null(),
        n_embedding_paths: 0,
    }
}

/// What `ella_model_load` loads, read from the params.
struct LoadPlan {
    backend: EllaBackend,
    paths: ModelPaths,
    precision: Precision,
    memory_budget: Option<u64>,
    kernel_cache: Option<PathBuf>,
    threads: Threads,
}

/// Reads and checks the params of `ella_model_load`.
///
/// # Safety
/// The strings of `params` are NULL or NUL-terminated.
unsafe fn load_plan(params: &EllaModelParams) -> Result<LoadPlan, Failure> {
    // SAFETY (both closures): NUL-terminated strings per this function's contract.
    let path = |ptr, what: &str| unsafe { text(ptr, what) }.map(PathBuf::from);
    let optional_path = |ptr: *const c_char, what| match ptr.is_null() {
        true => Ok(None),
        false => path(ptr, what).map(Some),
    };
    let ella = match (params.t5_path.is_null(), params.ella_path.is_null()) {
        (true, true) => None,
        _ => Some(EllaPaths {
            t5: path(params.t5_path, "params.t5_path")?,
            connector: path(params.ella_path, "params.ella_path")?,
            config: optional_path(params.ella_config_path, "params.ella_config_path")?,
        }),
    };
    let clip = match params.load_clip {
        0 => false,
        1 => true,
        other => return Err(invalid(format!("params.load_clip {other} is not 0 or 1"))),
    };
    if ella.is_none() && !clip {
        return Err(invalid(
            "params.t5_path and params.ella_path are NULL and load_clip is 0: no text encoder",
        ));
    }
    let mut controlnets: Vec<PathBuf> =
        optional_path(params.controlnet_path, "params.controlnet_path")?
            .into_iter()
            .collect();
    // SAFETY: `n` readable pointers, per ella_model_params' contract.
    let extra = unsafe {
        host_array(
            params.extra_controlnet_paths,
            params.n_extra_controlnet_paths,
            "params.extra_controlnet_paths",
        )
    }?;
    if !extra.is_empty() && controlnets.is_empty() {
        return Err(invalid(
            "params.extra_controlnet_paths needs params.controlnet_path (ControlNet 0)",
        ));
    }
    for (i, &ptr) in extra.iter().enumerate() {
        controlnets.push(path(ptr, &format!("params.extra_controlnet_paths[{i}]"))?);
    }
    // SAFETY: `n` readable pointers, per ella_model_params' contract.
    let embedding_paths = unsafe {
        host_array(
            params.embedding_paths,
            params.n_embedding_paths,
            "params.embedding_paths",
        )
    }?;
    let embeddings = embedding_paths
        .iter()
        .enumerate()
        .map(|(i, &ptr)| path(ptr, &format!("params.embedding_paths[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let diffusion: DType = EllaPrecision::decode(params.precision, "params.precision")?.into();
    let t5 = EllaT5Precision::decode(params.t5_precision, "params.t5_precision")?;
    Ok(LoadPlan {
        backend: EllaBackend::decode(params.backend, "params.backend")?,
        paths: ModelPaths {
            sd: path(params.sd_path, "params.sd_path")?,
            sd_config: optional_path(params.sd_config_path, "params.sd_config_path")?,
            vae: optional_path(params.vae_path, "params.vae_path")?,
            ella,
            clip,
            loras: Vec::new(),
            embeddings,
            controlnets,
            sur_adapter: optional_path(params.sur_adapter_path, "params.sur_adapter_path")?,
            taesd: optional_path(params.taesd_path, "params.taesd_path")?,
        },
        precision: Precision {
            t5: t5.resolve(diffusion)?,
            diffusion,
        },
        memory_budget: (params.memory_budget > 0).then_some(params.memory_budget),
        kernel_cache: optional_path(params.kernel_cache_path, "params.kernel_cache_path")?,
        threads: match params.n_threads {
            0 => Threads::all_cores(),
            n => Threads::new(n as usize)?,
        },
    })
}

/// Loads the models. On success `*out_model` owns them; free with `ella_model_free`.
///
/// # Safety
/// `params` points to an `ella_model_params` whose strings are NUL-terminated; `out_model`
/// is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_load(
    params: *const EllaModelParams,
    out_model: *mut *mut EllaModel,
) -> EllaStatus {
    guard(|| {
        if out_model.is_null() {
            return Err(invalid("out_model is NULL"));
        }
        // SAFETY: per this function's contract.
        let params = unsafe { read_struct(params, ella_model_params_default(), "params")? };
        // SAFETY: per this function's contract.
        let plan = unsafe { load_plan(&params)? };
        let log = Logger {
            callback: params.log_callback,
            user_data: params.log_user_data,
        };
        let start = Instant::now();
        // Loading runs deep (each model's blocks), deeper still in unoptimised builds: on a
        // thread of its own with a large stack, a host thread's small stack cannot overflow.
        let engine = std::thread::Builder::new()
            .name("ella-load".into())
            .stack_size(ella_core::threads::STACK_BYTES)
            .spawn(move || {
                engine::load(
                    plan.backend,
                    &plan.paths,
                    plan.precision,
                    plan.memory_budget,
                    plan.kernel_cache,
                    plan.threads,
                )
            })
            .map_err(|e| Failure(EllaStatus::Internal, format!("cannot start a thread: {e}")))?
            .join()
            .map_err(|panic| Failure(EllaStatus::Internal, panic_message(&*panic)))??;
        log.log(
            EllaLogLevel::Info,
            &format!("ella: loaded the models in {:.2?}", start.elapsed()),
        );
        let model = Box::new(EllaModel {
            engine: Arc::from(engine),
            log,
        });
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { write_out(out_model, Box::into_raw(model), "out_model") }
    })
}

/// Applies `count` LoRA files (`.safetensors`: kohya / A1111 on diffusers or LDM names,
/// LyCORIS LoCon, LoHa and LoKr, diffusers PEFT) with their scales to the model's U-Net (and
/// CLIP, when loaded), replacing the LoRAs applied before; `count` 0 restores the original
/// weights. Only the weights the LoRAs touch are rebuilt, from the original values: nothing is
/// reloaded. All files are checked first; on an error (a LoRA for another architecture, or of
/// a kind with no additive merge such as (IA)³ or DoRA: `ELLA_STATUS_INVALID_MODEL`) the
/// weights stay as they were.
/// Entries that match no weight are reported through the model's log callback as warnings.
/// The files are read while generations go on; the weights change once calls running on
/// the model's contexts have finished (never during one). From a progress callback of a
/// generation on this model it returns `ELLA_STATUS_BUSY`.
///
/// # Safety
/// `model` is NULL or a live handle; `paths` and `scales` point to `count` NUL-terminated
/// strings and floats (either may be NULL when `count` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_set_loras(
    model: *const EllaModel,
    paths: *const *const c_char,
    scales: *const f32,
    count: usize,
) -> EllaStatus {
    guard(|| {
        // SAFETY: NULL or a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        refuse_inside_generation(&model.engine, "ella_model_set_loras")?;
        if count > 0 && (paths.is_null() || scales.is_null()) {
            return Err(invalid("paths and scales must not be NULL when count > 0"));
        }
        if count > 1024 {
            return Err(invalid(format!("{count} LoRAs is absurdly many")));
        }
        let loras = (0..count)
            .map(|i| {
                // SAFETY: `count` pointers and floats, per this function's contract.
                let (path, scale) = unsafe { (*paths.add(i), *scales.add(i)) };
                let path = unsafe { text(path, "paths[i]") }?;
                Ok(Lora::new(path, scale))
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        let report = model.engine.set_loras(&loras)?;
        for entry in &report.unmatched {
            model.log.log(
                EllaLogLevel::Warning,
                &format!("LoRA entry matches no weight: {entry}"),
            );
        }
        if report.skipped_clip > 0 {
            model.log.log(
                EllaLogLevel::Warning,
                &format!(
                    "{} LoRA text-encoder entries skipped: CLIP is not loaded",
                    report.skipped_clip
                ),
            );
        }
        model.log.log(
            EllaLogLevel::Info,
            &format!("{} LoRA(s) change {} weights", loras.len(), report.updated),
        );
        Ok(())
    })
}

/// Drops the model's T5 encoder (about 2.4 GB in F16 for flan-t5-xl) and returns its memory
/// to the device. Afterwards generation needs `prompt_cache` from `ella_prompt_new`, and
/// `ella_model_encode_t5` fails. Waits for calls running on the model's contexts to finish;
/// from a progress callback of a generation on this model it returns `ELLA_STATUS_BUSY`.
///
/// # Safety
/// `model` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_free_t5(model: *const EllaModel) -> EllaStatus {
    guard(|| {
        // SAFETY: NULL or a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        refuse_inside_generation(&model.engine, "ella_model_free_t5")?;
        model.engine.free_t5();
        Ok(())
    })
}

/// Frees a model. Contexts made from it keep it alive until they are freed. NULL is a no-op.
///
/// # Safety
/// `model` is NULL or a handle from `ella_model_load`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_free(model: *mut EllaModel) {
    if !model.is_null() {
        // SAFETY: a handle from ella_model_load, freed once.
        drop(unsafe { Box::from_raw(model) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_handle_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EllaModel>();
        assert_send_sync::<crate::EllaPrompt>();
    }
}
