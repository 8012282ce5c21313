//! The context: one call at a time on a model, with its cancellation flag, progress
//! callback and the worker thread of its jobs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ella_core::PreviewMethod;

use crate::abi::*;
use crate::boundary::{Failure, guard, invalid};
use crate::engine::{Engine, Running};
use crate::job::Jobs;
use crate::model::{EllaModel, Logger};

/// Where generations run on a model: one call at a time (a second call while one runs gets
/// `ELLA_STATUS_BUSY`, `ella_context_cancel` excepted), and the queue of its jobs with their
/// worker thread.
pub struct EllaContext {
    pub(crate) model: Arc<dyn Engine>,
    pub(crate) log: Logger,
    pub(crate) params: EllaContextParams,
    pub(crate) cancel: AtomicBool,
    /// Set while a call or a job runs on the context (shared with its jobs' worker).
    pub(crate) busy: Arc<AtomicBool>,
    /// Set by `ella_context_free` from the context's own progress callback: the running
    /// call frees the context when it returns.
    free_when_done: AtomicBool,
    /// The jobs submitted on the context and their worker thread.
    pub(crate) jobs: Jobs,
}

// SAFETY: the progress callback is only called from the thread running the generation (the
// caller's, or the worker thread of the context's jobs).
unsafe impl Send for EllaContext {}
unsafe impl Sync for EllaContext {}

/// A call running on a context: marks it busy (and running on this thread) until dropped,
/// however the call ends, a caught panic included.
struct Session<'a> {
    context: &'a EllaContext,
    _running: Running,
}

impl<'a> Session<'a> {
    fn begin(context: &'a EllaContext) -> Result<Self, Failure> {
        let running = Running::enter(context, &context.model, "ella_context_generate")?;
        if context.busy.swap(true, Ordering::SeqCst) {
            return Err(Failure(
                EllaStatus::Busy,
                "another call is running on this context; use one context per thread".into(),
            ));
        }
        Ok(Self {
            context,
            _running: running,
        })
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.context.busy.store(false, Ordering::SeqCst);
    }
}

impl EllaContext {
    /// Runs `work` on a live context marked busy; frees the context afterwards when its
    /// progress callback asked to (`ella_context_free`).
    ///
    /// # Safety
    /// `context` is NULL or a live handle.
    pub(crate) unsafe fn run<T>(
        context: *mut EllaContext,
        work: impl FnOnce(&EllaContext) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        // SAFETY: NULL or a live handle.
        let live = unsafe { context.as_ref() }.ok_or_else(|| invalid("context is NULL"))?;
        let session = Session::begin(live)?;
        live.cancel.store(false, Ordering::SeqCst);
        let result = work(live);
        let free = live.free_when_done.load(Ordering::SeqCst);
        drop(session);
        if free {
            // SAFETY: the handle's last use: `ella_context_free` left it to this call.
            drop(unsafe { Box::from_raw(context) });
        }
        result
    }
}

/// Defaults: no progress callback, no previews.
#[unsafe(no_mangle)]
pub extern "C" fn ella_context_params_default() -> EllaContextParams {
    EllaContextParams {
        struct_size: std::mem::size_of::<EllaContextParams>() as u32,
        progress_callback: None,
        progress_user_data: std::ptr::null_mut(),
        preview_callback: None,
        preview_user_data: std::ptr::null_mut(),
        preview_every: 0,
        preview_method: EllaPreviewMethod::from(PreviewMethod::default()) as u32,
    }
}

/// Makes a context (one job at a time) on a model; `*out_context` owns it (free with
/// `ella_context_free`). `params` may be NULL for the defaults.
///
/// # Safety
/// `model` is a live handle; `params` is NULL or valid; `out_context` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_context_new(
    model: *const EllaModel,
    params: *const EllaContextParams,
    out_context: *mut *mut EllaContext,
) -> EllaStatus {
    guard(|| {
        if out_context.is_null() {
            return Err(invalid("out_context is NULL"));
        }
        // SAFETY: NULL or a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        let params = match params.is_null() {
            true => ella_context_params_default(),
            // SAFETY: per this function's contract.
            false => unsafe { read_struct(params, ella_context_params_default(), "params")? },
        };
        EllaPreviewMethod::decode(params.preview_method, "params.preview_method")?;
        let context = Box::new(EllaContext {
            model: Arc::clone(&model.engine),
            log: model.log,
            params,
            cancel: AtomicBool::new(false),
            busy: Arc::new(AtomicBool::new(false)),
            free_when_done: AtomicBool::new(false),
            jobs: Jobs::default(),
        });
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { write_out(out_context, Box::into_raw(context), "out_context") }
    })
}

/// Asks the generation running on `context` to stop, a call's or a job's: it returns
/// `ELLA_STATUS_CANCELLED` (the job ends CANCELLED) within one model block (a U-Net block, a
/// VAE level or tile, a T5 layer), and the context stays usable. Queued jobs are not
/// touched. Safe from any thread and from the progress callback; no effect when nothing
/// runs.
///
/// # Safety
/// `context` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_context_cancel(context: *const EllaContext) {
    // SAFETY: NULL or a live handle; only the atomic flags are touched.
    if let Some(context) = unsafe { context.as_ref() } {
        context.cancel.store(true, Ordering::SeqCst);
        context.jobs.cancel_running();
    }
}

impl Drop for EllaContext {
    fn drop(&mut self) {
        self.jobs.stop();
    }
}

/// Frees a context. NULL is a no-op. Its jobs that have not finished are cancelled (their
/// handles stay valid and report CANCELLED) and its worker thread ends; this waits for the
/// running job to stop (one model block), except from a progress callback of that job.
/// While a call runs on it from another thread, cancels that call and waits for it to
/// return; from the context's own progress callback, the running call frees the context
/// when it returns.
///
/// # Safety
/// `context` is NULL or a handle from `ella_context_new`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_context_free(context: *mut EllaContext) {
    // SAFETY: NULL or a live handle.
    let Some(live) = (unsafe { context.as_ref() }) else {
        return;
    };
    if live.jobs.on_worker_thread() {
        // From a callback of one of its jobs: the worker keeps nothing of the context (its
        // running job is cancelled and the thread ends after it).
        // SAFETY: a handle from ella_context_new, freed once; the job running on this
        // thread does not read it.
        drop(unsafe { Box::from_raw(context) });
        return;
    }
    if Running::on_this_thread(live) {
        live.free_when_done.store(true, Ordering::SeqCst);
        return;
    }
    // The worker first: the job it runs holds `busy` until it stops.
    live.jobs.stop();
    if live.busy.load(Ordering::SeqCst) {
        live.cancel.store(true, Ordering::SeqCst);
        while live.busy.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    // SAFETY: a handle from ella_context_new, freed once, no call running on it.
    drop(unsafe { Box::from_raw(context) });
}
