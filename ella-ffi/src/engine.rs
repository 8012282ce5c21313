//! One handle type for every backend: the C ABI holds a `dyn Engine`, implemented by
//! `Pipeline<B>` for each backend compiled in, so no C function is generic.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::abi::{EllaBackend, EllaStatus};
use crate::boundary::Failure;
use ella_core::Backend;
use ella_core::burn::tensor::{Tensor, TensorData};
use ella_core::{
    Conditioning, Error, GenerateRequest, Hooks, Image, Lora, LoraReport, ModelPaths, Pipeline,
    Precision, PromptStates, Result, StatePair, T5Text, Threads, TokenMode,
};

/// Prompt states kept on the host, so that a cached prompt works with any backend: T5's
/// and CLIP's `[negative, positive]`, each when the model has that encoder.
#[derive(Debug, Clone)]
pub struct HostPrompt {
    pub t5: Option<[TensorData; 2]>,
    pub clip: Option<[TensorData; 2]>,
}

/// What the C functions need from a pipeline, whatever its backend.
pub trait Engine: Send + Sync {
    fn generate(
        &self,
        request: &GenerateRequest,
        prompt: Option<&HostPrompt>,
        hooks: &mut Hooks,
    ) -> Result<Vec<Image>>;
    /// T5 states `[1, tokens, d_model]` of one prompt.
    fn encode_t5(&self, prompt: &str, mode: TokenMode) -> Result<TensorData>;
    /// The states of a prompt and its negative for every conditioning this model can run
    /// (T5's while T5 is loaded, CLIP's when CLIP is).
    fn encode_prompts(&self, prompt: &str, negative: &str, mode: TokenMode) -> Result<HostPrompt>;
    fn run_connector(&self, states: TensorData, timestep: f32) -> Result<TensorData>;
    /// Drops T5 and returns its memory to the device.
    fn free_t5(&self);
    /// Replaces the LoRAs applied to the U-Net and CLIP.
    fn set_loras(&self, loras: &[Lora]) -> Result<LoraReport>;
}

/// A pipeline behind a lock: generation and encoding share it, freeing T5 and changing
/// LoRAs take it alone (after the LoRA files were read under the shared lock).
pub struct Locked<B: Backend> {
    pipeline: RwLock<Pipeline<B>>,
    /// One `set_loras` at a time, so that the last call's LoRAs are the ones applied.
    loras: Mutex<()>,
}

impl<B: Backend> Locked<B> {
    pub fn load(
        paths: &ModelPaths,
        precision: Precision,
        memory_budget: Option<u64>,
        threads: Threads,
    ) -> Result<Self> {
        let device = B::Device::default();
        let mut pipeline =
            threads.install(|| Pipeline::load_with_precision(paths, &device, precision))?;
        pipeline.set_memory_budget(memory_budget);
        pipeline.set_threads(threads);
        Ok(Self {
            pipeline: RwLock::new(pipeline),
            loras: Mutex::new(()),
        })
    }

    /// The pipeline alone, once calls running on it have finished. `set_loras` either
    /// changes every weight or none, so a poisoned lock holds nothing half-written either.
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Pipeline<B>> {
        self.pipeline
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Pipeline<B>> {
        // A panic during a call is caught at the boundary; the pipeline itself is immutable
        // during reads, so a poisoned lock holds nothing half-written.
        self.pipeline
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<B: Backend> Engine for Locked<B>
where
    Pipeline<B>: Send + Sync,
{
    fn generate(
        &self,
        request: &GenerateRequest,
        prompt: Option<&HostPrompt>,
        hooks: &mut Hooks,
    ) -> Result<Vec<Image>> {
        let pipeline = self.read();
        let device = pipeline.device();
        let upload = |pair: &Option<[TensorData; 2]>| {
            pair.as_ref().map(|[uncond, cond]| StatePair::<B> {
                uncond: Tensor::from_data(uncond.clone(), &device),
                cond: Tensor::from_data(cond.clone(), &device),
            })
        };
        let states = prompt.map(|p| PromptStates {
            t5: upload(&p.t5),
            clip: upload(&p.clip),
        });
        pipeline.generate_with(request, states.as_ref(), hooks)
    }

    fn encode_prompts(&self, prompt: &str, negative: &str, mode: TokenMode) -> Result<HostPrompt> {
        let pipeline = self.read();
        let conditioning = match (pipeline.t5(), pipeline.clip()) {
            (Some(_), Some(_)) => Conditioning::EllaClip,
            (None, Some(_)) => Conditioning::Clip,
            _ => Conditioning::Ella,
        };
        let states = pipeline.encode_prompts(
            prompt,
            negative,
            T5Text {
                mode,
                ..Default::default()
            },
            conditioning,
            &Default::default(),
        )?;
        let download = |pair: Option<StatePair<B>>| {
            pair.map(|p| [p.uncond, p.cond].map(|states| states.into_data().convert::<f32>()))
        };
        Ok(HostPrompt {
            t5: download(states.t5),
            clip: download(states.clip),
        })
    }

    fn encode_t5(&self, prompt: &str, mode: TokenMode) -> Result<TensorData> {
        let states = self.read().encode_prompt(prompt, mode)?;
        Ok(states.into_data().convert::<f32>())
    }

    fn run_connector(&self, states: TensorData, timestep: f32) -> Result<TensorData> {
        let pipeline = self.read();
        let device = pipeline.device();
        let connector = pipeline.connector().ok_or_else(|| {
            Error::InvalidInput("this model was loaded without ELLA's connector".into())
        })?;
        let tokens = connector.forward(Tensor::<B, 3>::from_data(states, &device), &[timestep])?;
        Ok(tokens.into_data().convert::<f32>())
    }

    fn free_t5(&self) {
        self.write().free_t5();
    }

    fn set_loras(&self, loras: &[Lora]) -> Result<LoraReport> {
        let _one_at_a_time = self.loras.lock().unwrap_or_else(|p| p.into_inner());
        let prepared = self.read().prepare_loras(loras)?;
        self.write().apply_loras(prepared)
    }
}

/// Loads a pipeline on `backend`; GPU backends keep their kernels in `kernel_cache` (None:
/// ella's default directory).
pub fn load(
    backend: EllaBackend,
    paths: &ModelPaths,
    precision: Precision,
    memory_budget: Option<u64>,
    kernel_cache: Option<PathBuf>,
    threads: Threads,
) -> std::result::Result<Box<dyn Engine>, Failure> {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    let use_kernel_cache = || kernel_cache.map_or(Ok(()), ella_core::gpu::set_kernel_cache_dir);
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    let _ = kernel_cache;
    match backend {
        EllaBackend::Cpu => Ok(Box::new(Locked::<ella_core::DefaultBackend>::load(
            paths,
            precision,
            memory_budget,
            threads,
        )?)),
        #[cfg(feature = "wgpu")]
        EllaBackend::Wgpu => {
            if ella_core::gpu::wgpu_adapter().is_none() {
                return Err(Failure(
                    EllaStatus::Unsupported,
                    "the WGPU backend found no Vulkan adapter (no GPU driver, nor a software \
                     one such as Mesa's lavapipe)"
                        .into(),
                ));
            }
            use_kernel_cache()?;
            Ok(Box::new(Locked::<ella_core::Wgpu>::load(
                paths,
                precision,
                memory_budget,
                threads,
            )?))
        }
        #[cfg(not(feature = "wgpu"))]
        EllaBackend::Wgpu => Err(not_built("WGPU", "wgpu")),
        #[cfg(feature = "cuda")]
        EllaBackend::Cuda => {
            use_kernel_cache()?;
            Ok(Box::new(Locked::<ella_core::Cuda>::load(
                paths,
                precision,
                memory_budget,
                threads,
            )?))
        }
        #[cfg(not(feature = "cuda"))]
        EllaBackend::Cuda => Err(not_built("CUDA", "cuda")),
    }
}

#[cfg(not(all(feature = "wgpu", feature = "cuda")))]
fn not_built(name: &str, feature: &str) -> Failure {
    Failure(
        EllaStatus::Unsupported,
        format!("the {name} backend is not compiled into this library (cargo feature `{feature}`)"),
    )
}

thread_local! {
    /// The generations running on this thread, innermost last, as (context, engine)
    /// addresses: a progress callback's calls into the library see them.
    static RUNNING: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn address<T: ?Sized>(pointer: *const T) -> usize {
    pointer as *const () as usize
}

/// Refuses a call on `engine` from a progress callback of a generation running on the same
/// model: it would wait for (or re-enter) the generation it was called from.
pub fn refuse_inside_generation(engine: &Arc<dyn Engine>, what: &str) -> Result<(), Failure> {
    let engine = address(Arc::as_ptr(engine));
    match RUNNING.with(|running| running.borrow().iter().any(|&(_, e)| e == engine)) {
        true => Err(Failure(
            EllaStatus::Busy,
            format!(
                "{what} was called from a progress callback of a generation on the same model, \
                 which it would wait for; call it after ella_context_generate returns"
            ),
        )),
        false => Ok(()),
    }
}

/// A generation running on this thread, recorded until dropped.
pub struct Running(());

impl Running {
    /// Records a generation of `context` on `engine`, unless one on the same engine runs
    /// on this thread already (`what` would wait for it).
    pub fn enter<Context>(
        context: &Context,
        engine: &Arc<dyn Engine>,
        what: &str,
    ) -> Result<Self, Failure> {
        Self::enter_at(address(context as *const Context), engine, what)
    }

    /// [`Self::enter`] with the context's address (a job's worker keeps the address only).
    pub fn enter_at(context: usize, engine: &Arc<dyn Engine>, what: &str) -> Result<Self, Failure> {
        refuse_inside_generation(engine, what)?;
        let entry = (context, address(Arc::as_ptr(engine)));
        RUNNING.with(|running| running.borrow_mut().push(entry));
        Ok(Self(()))
    }

    /// Whether a generation of `context` runs on this thread (its progress callback is the
    /// caller).
    pub fn on_this_thread<Context>(context: &Context) -> bool {
        let here = address(context as *const Context);
        RUNNING.with(|running| running.borrow().iter().any(|&(c, _)| c == here))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|running| running.borrow_mut().pop());
    }
}
