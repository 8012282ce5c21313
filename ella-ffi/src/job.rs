//! Jobs: a request submitted on a context returns at once. The context's worker thread
//! (started by its first job, owned by the library, ended by `ella_context_free`) runs its
//! jobs one after the other in submission order, while the host polls, waits with a
//! timeout, cancels, takes the image and frees the job.
//!
//! A job handle and the worker share the job's state ([`JobState`], behind an `Arc`), so
//! either may let go first: `ella_job_free` while the job runs cancels it and drops the
//! handle's share, and the worker drops its own when the job has stopped. The worker never
//! reads the context either: it keeps copies and shares of what a run needs ([`Setup`]), so
//! a job's progress callback may free the context it runs on.

use std::collections::VecDeque;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use ella_core::{Hooks, Image, Preview, Previews};

use crate::abi::*;
use crate::boundary::{Failure, guard, invalid, panic_message};
use crate::context::EllaContext;
use crate::engine::{Engine, Running, address};
use crate::generate::{
    Pixels, Request, pixels, preview_callback, progress_callback, read_request, render,
};
use crate::model::Logger;

/// `ella_job_wait`'s timeout that never passes.
pub const ELLA_WAIT_FOREVER: u32 = 0xFFFFFFFF;

/// A request submitted on a context, queued or running on the context's worker thread, or
/// finished with its image or error. Free with `ella_job_free` (at any time).
pub struct EllaJob {
    state: Arc<JobState>,
}

/// Locks a mutex whose holder may have panicked: every update under these locks is a
/// plain assignment, so a poisoned lock holds nothing half-written.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a job handle and the worker share.
struct JobState {
    /// Checked by the pipeline between model blocks while the job runs.
    cancel: AtomicBool,
    step: AtomicU32,
    total: AtomicU32,
    /// The thread that runs the job: waiting for the job there would never end.
    worker: ThreadId,
    inner: Mutex<JobInner>,
    /// Notified when the job finishes.
    finished: Condvar,
    /// The latest live preview (of a context with `preview_every`) and its step.
    preview: Mutex<Option<(u32, Image)>>,
}

struct JobInner {
    state: EllaJobState,
    /// The request until the worker starts the job (dropped by a cancel before that).
    request: Option<Request>,
    /// A DONE job's image until `ella_job_take_image`.
    image: Option<Pixels>,
    /// A finished job's status and message ("" for DONE).
    status: EllaStatus,
    message: CString,
}

impl JobState {
    fn progress(&self) -> EllaJobProgress {
        let inner = lock(&self.inner);
        EllaJobProgress {
            struct_size: std::mem::size_of::<EllaJobProgress>() as u32,
            state: inner.state as u32,
            step: self.step.load(Ordering::SeqCst),
            total: self.total.load(Ordering::SeqCst),
            status: inner.status as u32,
        }
    }

    /// Cancels the job: a queued one ends CANCELLED now (its request dropped), a running one
    /// at the pipeline's next check; a finished one stays as it is.
    fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        let mut inner = lock(&self.inner);
        if inner.state == EllaJobState::Queued {
            inner.request = None;
            self.finish_locked(
                &mut inner,
                Err(Failure(
                    EllaStatus::Cancelled,
                    "the job was cancelled before it started".into(),
                )),
            );
        }
    }

    /// Marks a queued job running and hands over its request; None when it was cancelled.
    fn start(&self) -> Option<Request> {
        let mut inner = lock(&self.inner);
        match inner.state {
            EllaJobState::Queued => {
                inner.state = EllaJobState::Running;
                inner.request.take()
            }
            _ => None,
        }
    }

    fn finish(&self, result: Result<Pixels, Failure>) {
        let mut inner = lock(&self.inner);
        self.finish_locked(&mut inner, result);
    }

    fn finish_locked(&self, inner: &mut JobInner, result: Result<Pixels, Failure>) {
        match result {
            Ok(pixels) => {
                inner.state = EllaJobState::Done;
                inner.image = Some(pixels);
            }
            Err(Failure(status, message)) => {
                inner.state = match status {
                    EllaStatus::Cancelled => EllaJobState::Cancelled,
                    _ => EllaJobState::Failed,
                };
                inner.status = status;
                inner.message = CString::new(message.replace('\0', " ")).unwrap_or_default();
            }
        }
        self.finished.notify_all();
    }

    /// A finished job's outcome: Ok for DONE, else its status and message.
    fn outcome(inner: &JobInner) -> Result<(), Failure> {
        match inner.state {
            EllaJobState::Done => Ok(()),
            _ => Err(Self::failure(inner)),
        }
    }

    /// The status and message of a FAILED or CANCELLED job.
    fn failure(inner: &JobInner) -> Failure {
        Failure(inner.status, inner.message.to_string_lossy().into_owned())
    }

    fn wait(&self, timeout_ms: u32) -> Result<(), Failure> {
        let deadline = (timeout_ms != ELLA_WAIT_FOREVER)
            .then(|| Instant::now() + Duration::from_millis(timeout_ms.into()));
        let mut inner = lock(&self.inner);
        while !inner.state.is_final() {
            if timeout_ms > 0 && std::thread::current().id() == self.worker {
                return Err(Failure(
                    EllaStatus::Busy,
                    "ella_job_wait was called from a callback on the worker thread of the \
                     job's context, where the job cannot advance while it waits"
                        .into(),
                ));
            }
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Err(not_ready(timeout_ms)),
                },
            };
            inner = match left {
                None => self
                    .finished
                    .wait(inner)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
                Some(left) => {
                    self.finished
                        .wait_timeout(inner, left)
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
            };
        }
        Self::outcome(&inner)
    }

    fn take_image(&self) -> Result<Pixels, Failure> {
        let mut inner = lock(&self.inner);
        match inner.state {
            EllaJobState::Queued | EllaJobState::Running => Err(Failure(
                EllaStatus::NotReady,
                "the job has not finished (ella_job_poll or ella_job_wait say when it has)".into(),
            )),
            EllaJobState::Done => inner
                .image
                .take()
                .ok_or_else(|| invalid("the job's image was taken already")),
            EllaJobState::Failed | EllaJobState::Cancelled => Err(Self::failure(&inner)),
        }
    }

    /// The message of a FAILED or CANCELLED job, "" otherwise. Set once when the job
    /// finishes and never changed after, so the pointer lives as long as the job.
    fn message(&self) -> *const c_char {
        let inner = lock(&self.inner);
        match inner.state {
            EllaJobState::Failed | EllaJobState::Cancelled => inner.message.as_ptr(),
            _ => c"".as_ptr(),
        }
    }
}

impl EllaJobState {
    fn is_final(self) -> bool {
        !matches!(self, EllaJobState::Queued | EllaJobState::Running)
    }
}

fn not_ready(timeout_ms: u32) -> Failure {
    Failure(
        EllaStatus::NotReady,
        format!("the job has not finished within {timeout_ms} ms"),
    )
}

/// The jobs of one context: its worker thread, started by the first job.
#[derive(Default)]
pub(crate) struct Jobs {
    worker: Mutex<Option<Worker>>,
}

struct Worker {
    queue: Arc<Queue>,
    thread: JoinHandle<()>,
}

/// The jobs waiting for the worker, the one it runs, and whether it must end.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// Notified when a job is queued or the worker must end.
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Arc<JobState>>,
    running: Option<Arc<JobState>>,
    stop: bool,
}

/// What the worker needs of its context, copied or shared: it never reads the context
/// itself.
struct Setup {
    engine: Arc<dyn Engine>,
    log: Logger,
    params: EllaContextParams,
    busy: Arc<AtomicBool>,
    /// The context's address, for [`Running`] (calls from a job's callback that would wait
    /// for the job are refused).
    context: usize,
}

// SAFETY: the host's progress callback and user data, called on the worker thread as the
// header says.
unsafe impl Send for Setup {}

impl Jobs {
    /// Queues a job, starting the worker thread first if needed.
    fn submit(&self, context: &EllaContext, request: Request) -> Result<Arc<JobState>, Failure> {
        let mut worker = lock(&self.worker);
        if worker.is_none() {
            *worker = Some(Worker::start(Setup {
                engine: Arc::clone(&context.model),
                log: context.log,
                params: context.params,
                busy: Arc::clone(&context.busy),
                context: address(context as *const EllaContext),
            })?);
        }
        let worker = worker.as_ref().expect("started above");
        let job = Arc::new(JobState {
            cancel: AtomicBool::new(false),
            step: AtomicU32::new(0),
            total: AtomicU32::new(0),
            worker: worker.thread.thread().id(),
            preview: Mutex::new(None),
            inner: Mutex::new(JobInner {
                state: EllaJobState::Queued,
                request: Some(request),
                image: None,
                status: EllaStatus::Ok,
                message: CString::default(),
            }),
            finished: Condvar::new(),
        });
        lock(&worker.queue.state)
            .pending
            .push_back(Arc::clone(&job));
        worker.queue.wake.notify_all();
        Ok(job)
    }

    /// Cancels the job running now, if any (`ella_context_cancel`).
    pub(crate) fn cancel_running(&self) {
        if let Some(worker) = lock(&self.worker).as_ref()
            && let Some(job) = &lock(&worker.queue.state).running
        {
            job.cancel.store(true, Ordering::SeqCst);
        }
    }

    /// Whether the caller runs on the worker thread (a callback of one of the jobs).
    pub(crate) fn on_worker_thread(&self) -> bool {
        lock(&self.worker)
            .as_ref()
            .is_some_and(|worker| worker.thread.thread().id() == std::thread::current().id())
    }

    /// Ends the worker: cancels the queued jobs and the running one, then waits for the
    /// thread to end, unless the caller is that thread (a job's callback freeing the
    /// context), which then ends after the job returns.
    pub(crate) fn stop(&self) {
        let Some(worker) = lock(&self.worker).take() else {
            return;
        };
        let pending = {
            let mut queue = lock(&worker.queue.state);
            queue.stop = true;
            if let Some(job) = &queue.running {
                job.cancel.store(true, Ordering::SeqCst);
            }
            std::mem::take(&mut queue.pending)
        };
        worker.queue.wake.notify_all();
        // Outside the queue's lock: a cancel drops the request (its prompt cache share).
        for job in pending {
            job.cancel();
        }
        if worker.thread.thread().id() != std::thread::current().id() {
            // A panic on the worker was caught around each job; nothing else can panic.
            let _ = worker.thread.join();
        }
    }
}

impl Worker {
    fn start(setup: Setup) -> Result<Self, Failure> {
        let queue = Arc::new(Queue::default());
        let shared = Arc::clone(&queue);
        // Forward passes recurse deep in unoptimised builds: a large stack, as the load's.
        let thread = std::thread::Builder::new()
            .name("ella-job".into())
            .stack_size(ella_core::threads::STACK_BYTES)
            .spawn(move || work(&shared, &setup))
            .map_err(|e| {
                Failure(
                    EllaStatus::Internal,
                    format!("cannot start the job thread: {e}"),
                )
            })?;
        Ok(Self { queue, thread })
    }
}

/// The worker thread: runs the queued jobs in order until told to stop.
fn work(queue: &Queue, setup: &Setup) {
    while let Some((job, request)) = next(queue) {
        let result = catch_unwind(AssertUnwindSafe(|| run(setup, &job, request)))
            .unwrap_or_else(|panic| Err(Failure(EllaStatus::Internal, panic_message(&*panic))));
        job.finish(result);
        lock(&queue.state).running = None;
    }
}

/// The next job to run and its request; None when the worker must end.
fn next(queue: &Queue) -> Option<(Arc<JobState>, Request)> {
    let mut state = lock(&queue.state);
    loop {
        if state.stop {
            return None;
        }
        match state.pending.pop_front() {
            Some(job) => {
                if let Some(request) = job.start() {
                    state.running = Some(Arc::clone(&job));
                    return Some((job, request));
                }
            }
            None => {
                state = queue
                    .wake
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            }
        }
    }
}

/// Clears the context's busy flag when dropped.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Runs one job on the worker thread.
fn run(setup: &Setup, job: &JobState, request: Request) -> Result<Pixels, Failure> {
    // One call at a time on a context: a job waits for a call made on it from another
    // thread to return.
    while setup.busy.swap(true, Ordering::SeqCst) {
        if job.cancel.load(Ordering::SeqCst) {
            return Err(Failure(EllaStatus::Cancelled, "cancelled".into()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _busy = Busy(&setup.busy);
    let _running = Running::enter_at(setup.context, &setup.engine, "a job")?;
    let mut callback = progress_callback(setup.params);
    // The latest preview is kept for `ella_job_preview`, then passed to the host's
    // callback (if it has one).
    let mut host_previews = preview_callback(setup.params)?;
    let preview = match setup.params.preview_every {
        0 => None,
        every => Some(Previews {
            every: every as usize,
            method: EllaPreviewMethod::decode(
                setup.params.preview_method,
                "params.preview_method",
            )?
            .into(),
            sink: Box::new(|preview: Preview| {
                if let Some(image) = preview.images.first() {
                    *lock(&job.preview) = Some((preview.step as u32, image.clone()));
                }
                if let Some(host) = &mut host_previews {
                    (host.sink)(preview);
                }
            }),
        }),
    };
    let mut hooks = Hooks {
        preview,
        cancel: Some(&job.cancel),
        progress: Some(Box::new(|step, total| {
            job.step.store(step as u32, Ordering::SeqCst);
            job.total.store(total as u32, Ordering::SeqCst);
            if let Some(callback) = &mut callback {
                callback(step, total);
            }
        })),
        ..Hooks::default()
    };
    render(&setup.engine, &setup.log, &request, &mut hooks)
}

/// Submits a request on a context and returns at once; `*out_job` owns the job (free with
/// `ella_job_free`). The request is copied, strings, image buffers and all, and its
/// `prompt_cache` shared: free them whenever you like. What is read here (NULL pointers,
/// `struct_size`, UTF-8, enum values, buffer sizes) fails the call and makes no job; the
/// rest is checked when the job runs, which then ends FAILED with the status and message
/// `ella_context_generate` would have returned. The context's jobs run one after the other
/// in submission order on its worker thread, which the first job starts and
/// `ella_context_free` ends; its progress callback and the model's log callback are called
/// on that thread.
///
/// # Safety
/// `context` is a live handle, `request` a valid request, `out_job` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_submit(
    context: *mut EllaContext,
    request: *const EllaGenerateRequest,
    out_job: *mut *mut EllaJob,
) -> EllaStatus {
    guard(|| {
        if out_job.is_null() {
            return Err(invalid("out_job is NULL"));
        }
        // SAFETY: NULL or a live handle.
        let context = unsafe { context.as_ref() }.ok_or_else(|| invalid("context is NULL"))?;
        // SAFETY: per this function's contract.
        let request = unsafe { read_request(request)? };
        let state = context.jobs.submit(context, request)?;
        let job = Box::into_raw(Box::new(EllaJob { state }));
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { write_out(out_job, job, "out_job") }
    })
}

/// Writes the job's state, step, total and status to `*out_progress` without waiting (set
/// its `struct_size` first). Safe from any thread, also while the job runs.
///
/// # Safety
/// `job` is NULL or a live handle; `out_progress` is NULL or points to `struct_size`
/// writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_poll(
    job: *const EllaJob,
    out_progress: *mut EllaJobProgress,
) -> EllaStatus {
    guard(|| {
        // SAFETY: NULL or a live handle.
        let job = unsafe { job.as_ref() }.ok_or_else(|| invalid("job is NULL"))?;
        // SAFETY: per this function's contract.
        unsafe { write_struct(out_progress, job.state.progress(), "out_progress") }
    })
}

/// Waits up to `timeout_ms` milliseconds (0: not at all; `ELLA_WAIT_FOREVER`: until it
/// finishes) for the job to finish, and returns its outcome: `ELLA_STATUS_OK` (DONE: take
/// the image), `ELLA_STATUS_CANCELLED`, or the status a FAILED job ended with, its message
/// then being this thread's `ella_last_error_message()` as well as the job's
/// `ella_job_error_message()`. `ELLA_STATUS_NOT_READY` when the time passed first (the job
/// goes on). From a callback on the worker thread of the job's context, a wait that would
/// block returns `ELLA_STATUS_BUSY`.
///
/// # Safety
/// `job` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_wait(job: *const EllaJob, timeout_ms: u32) -> EllaStatus {
    guard(|| {
        // SAFETY: NULL or a live handle.
        let job = unsafe { job.as_ref() }.ok_or_else(|| invalid("job is NULL"))?;
        job.state.wait(timeout_ms)
    })
}

/// Cancels the job: a queued job never starts and is CANCELLED at once; a running one stops
/// within one model block and ends CANCELLED; a finished one stays as it was (a cancel that
/// comes after the last block leaves it DONE). Safe from any thread and from callbacks.
///
/// # Safety
/// `job` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_cancel(job: *const EllaJob) {
    // SAFETY: NULL or a live handle.
    if let Some(job) = unsafe { job.as_ref() } {
        job.state.cancel();
    }
}

/// Hands a DONE job's image to the caller: `*out_image` owns it (free with
/// `ella_image_free`), and the job no longer has it (a second call is
/// `ELLA_STATUS_INVALID_ARGUMENT`). `ELLA_STATUS_NOT_READY` while the job is queued or
/// running; for a CANCELLED or FAILED job, its status (and message).
///
/// # Safety
/// `job` is NULL or a live handle; `out_image` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_take_image(
    job: *mut EllaJob,
    out_image: *mut *mut EllaImage,
) -> EllaStatus {
    guard(|| {
        if out_image.is_null() {
            return Err(invalid("out_image is NULL"));
        }
        // SAFETY: NULL or a live handle.
        let job = unsafe { job.as_ref() }.ok_or_else(|| invalid("job is NULL"))?;
        let image = job.state.take_image()?.into_c_image();
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { write_out(out_image, image, "out_image") }
    })
}

/// Copies the job's latest live preview (made after every `preview_every`-th step, as the
/// context's params say, whether or not they name a preview callback) into an RGB8 image
/// `*out_image` owns (free with `ella_image_free`), and the step it followed into
/// `*out_step` (if not NULL). `ELLA_STATUS_NOT_READY` until the first preview.
///
/// # Safety
/// `job` is NULL or a live handle; `out_image` is writable; `out_step` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_preview(
    job: *const EllaJob,
    out_image: *mut *mut EllaImage,
    out_step: *mut u32,
) -> EllaStatus {
    guard(|| {
        if out_image.is_null() {
            return Err(invalid("out_image is NULL"));
        }
        // SAFETY: NULL or a live handle.
        let job = unsafe { job.as_ref() }.ok_or_else(|| invalid("job is NULL"))?;
        let (step, image) = lock(&job.state.preview)
            .clone()
            .ok_or_else(|| Failure(EllaStatus::NotReady, "no preview yet".into()))?;
        // SAFETY: NULL or writable per this function's contract.
        if let Some(out_step) = unsafe { out_step.as_mut() } {
            *out_step = step;
        }
        let image = pixels(image, EllaPixelFormat::Rgb8).into_c_image();
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { write_out(out_image, image, "out_image") }
    })
}

/// The message a FAILED or CANCELLED job ended with, whichever thread asks; "" while it is
/// queued, running or DONE. Valid until `ella_job_free`; do not free it.
///
/// # Safety
/// `job` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_error_message(job: *const EllaJob) -> *const c_char {
    // SAFETY: NULL or a live handle.
    match unsafe { job.as_ref() } {
        Some(job) => job.state.message(),
        None => c"job is NULL".as_ptr(),
    }
}

/// Frees a job at any time, without waiting: a queued job never starts, a running one is
/// cancelled (its worker lets go of it when it stops), a DONE job's image not taken is
/// freed. NULL is a no-op.
///
/// # Safety
/// `job` is NULL or a handle from `ella_job_submit`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_job_free(job: *mut EllaJob) {
    if job.is_null() {
        return;
    }
    // SAFETY: a handle from ella_job_submit, freed once.
    let job = unsafe { Box::from_raw(job) };
    job.state.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn job_handles_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EllaJob>();
    }

    #[test]
    fn the_message_of_a_null_job_is_static() {
        let message = unsafe { CStr::from_ptr(ella_job_error_message(std::ptr::null())) };
        assert_eq!(message.to_str(), Ok("job is NULL"));
    }
}
