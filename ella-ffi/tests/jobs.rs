//! Jobs (`ella_job_*`) called as a C host would: submit and return at once, poll, wait with
//! a timeout, cancel before and while running, free at any time, run in order, fail with
//! their own message. A gate in the progress callback holds the worker at a step, so that
//! "queued" and "running" are states the tests choose rather than race for.

use std::ffi::{CStr, CString, c_void};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ella::*;

mod common;
use common::*;

/// A progress callback's state: every `(step, total)` it saw, and a hold: the first call
/// at step `hold_at` waits there until [`Gate::release`].
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    hold_at: u32,
    holding: bool,
    released: bool,
    calls: Vec<(u32, u32)>,
}

impl Gate {
    fn holding_at(step: u32) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        gate.state.lock().unwrap().hold_at = step;
        gate
    }

    /// Waits until the worker is held in the callback.
    fn wait_held(&self) {
        let mut state = self.state.lock().unwrap();
        while !state.holding {
            state = self.changed.wait(state).unwrap();
        }
    }

    fn release(&self) {
        self.state.lock().unwrap().released = true;
        self.changed.notify_all();
    }

    fn calls(&self) -> Vec<(u32, u32)> {
        self.state.lock().unwrap().calls.clone()
    }
}

unsafe extern "C" fn gate_callback(step: u32, total: u32, user_data: *mut c_void) {
    let gate = unsafe { &*(user_data as *const Gate) };
    let mut state = gate.state.lock().unwrap();
    state.calls.push((step, total));
    if step == state.hold_at && !state.released {
        state.holding = true;
        gate.changed.notify_all();
        while !state.released {
            state = gate.changed.wait(state).unwrap();
        }
        state.holding = false;
    }
}

/// The tests' set-up: the test model and a context whose worker the gate holds at step
/// `hold_at` of its first job (its progress callback is the gate's). Dropping it releases
/// the gate first, so that a failed assertion never leaves the worker held (the context's
/// owner would wait for it).
struct Held {
    ctx: Context,
    gate: Arc<Gate>,
    model: Model,
    prompt: CString,
}

impl Held {
    fn at(hold_at: u32) -> Held {
        let model = load();
        let gate = Gate::holding_at(hold_at);
        let params = EllaContextParams {
            progress_callback: Some(gate_callback),
            progress_user_data: Arc::as_ptr(&gate) as *mut c_void,
            ..ella_context_params_default()
        };
        Held {
            ctx: Context::with_params(&model, &params),
            gate,
            model,
            prompt: CString::new("a red book").unwrap(),
        }
    }

    /// The test request (32×32, "a red book") with `steps` steps.
    fn request(&self, steps: u32) -> EllaGenerateRequest {
        EllaGenerateRequest {
            steps,
            ..request(&self.prompt)
        }
    }

    /// Submits [`Held::request`] on the context.
    fn submit(&self, steps: u32) -> Job {
        submit(&self.ctx, &self.request(steps))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gate.release();
    }
}

fn submit(ctx: &Context, request: &EllaGenerateRequest) -> Job {
    submit_raw(ctx.ptr(), request)
}

fn submit_raw(ctx: *mut EllaContext, request: &EllaGenerateRequest) -> Job {
    let mut job = Job::null();
    assert_eq!(
        unsafe { ella_job_submit(ctx, request, job.out()) },
        EllaStatus::Ok,
        "{}",
        last_error()
    );
    job
}

fn poll(job: &Job) -> EllaJobProgress {
    let mut progress = EllaJobProgress {
        struct_size: std::mem::size_of::<EllaJobProgress>() as u32,
        state: 99,
        step: 99,
        total: 99,
        status: 99,
    };
    assert_eq!(
        unsafe { ella_job_poll(job.ptr(), &mut progress) },
        EllaStatus::Ok
    );
    progress
}

fn state(job: &Job) -> EllaJobState {
    match poll(job).state {
        0 => EllaJobState::Queued,
        1 => EllaJobState::Running,
        2 => EllaJobState::Done,
        3 => EllaJobState::Failed,
        4 => EllaJobState::Cancelled,
        other => panic!("state {other}"),
    }
}

fn wait(job: &Job, timeout_ms: u32) -> EllaStatus {
    unsafe { ella_job_wait(job.ptr(), timeout_ms) }
}

fn message(job: &Job) -> String {
    unsafe { CStr::from_ptr(ella_job_error_message(job.ptr())) }
        .to_str()
        .unwrap()
        .to_string()
}

/// The job's image as RGB8 bytes, or its status.
fn take_image(job: &Job) -> Result<Vec<u8>, EllaStatus> {
    let mut image = Image::null();
    match unsafe { ella_job_take_image(job.ptr(), image.out()) } {
        EllaStatus::Ok => Ok(image.pixels().to_vec()),
        status => {
            assert!(image.is_null(), "no image with {status:?}");
            Err(status)
        }
    }
}

#[test]
fn submit_refuses_null_pointers_and_unreadable_requests_without_a_job() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let good = request(&prompt);
    let mut job = Job::null();
    let status = |ctx: *mut EllaContext, request: *const EllaGenerateRequest, job: &mut Job| {
        let status = unsafe { ella_job_submit(ctx, request, job.out()) };
        assert!(job.is_null(), "no job on failure");
        status
    };
    assert_eq!(
        unsafe { ella_job_submit(ctx.ptr(), &good, null_mut()) },
        EllaStatus::InvalidArgument
    );
    assert!(last_error().contains("out_job"));
    assert_eq!(
        status(null_mut(), &good, &mut job),
        EllaStatus::InvalidArgument
    );
    assert!(last_error().contains("context is NULL"));
    assert_eq!(
        status(ctx.ptr(), null(), &mut job),
        EllaStatus::InvalidArgument
    );
    let no_prompt = EllaGenerateRequest {
        prompt: null(),
        ..good
    };
    assert_eq!(
        status(ctx.ptr(), &no_prompt, &mut job),
        EllaStatus::InvalidArgument
    );
    assert!(last_error().contains("request.prompt"), "{}", last_error());
    let bad_enum = EllaGenerateRequest {
        scheduler: 42,
        ..good
    };
    assert_eq!(
        status(ctx.ptr(), &bad_enum, &mut job),
        EllaStatus::InvalidArgument
    );
    let short_image = [0u8; 10];
    let bad_buffer = EllaGenerateRequest {
        init_image: short_image.as_ptr(),
        init_image_size: short_image.len(),
        ..good
    };
    assert_eq!(
        status(ctx.ptr(), &bad_buffer, &mut job),
        EllaStatus::InvalidArgument
    );
}

#[test]
fn null_jobs_are_refused_or_ignored() {
    let mut progress = EllaJobProgress {
        struct_size: std::mem::size_of::<EllaJobProgress>() as u32,
        state: 0,
        step: 0,
        total: 0,
        status: 0,
    };
    assert_eq!(
        unsafe { ella_job_poll(null(), &mut progress) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_job_wait(null(), 0) },
        EllaStatus::InvalidArgument
    );
    let mut image = Image::null();
    assert_eq!(
        unsafe { ella_job_take_image(null_mut(), image.out()) },
        EllaStatus::InvalidArgument
    );
    let message = unsafe { CStr::from_ptr(ella_job_error_message(null())) };
    assert_eq!(message.to_str().unwrap(), "job is NULL");
    unsafe {
        ella_job_cancel(null());
        ella_job_free(null_mut());
    }
}

#[test]
fn a_job_runs_to_the_image_the_synchronous_call_makes() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let request = request(&prompt);
    let expected = Context::new(&model).generate_32(&request).unwrap();
    let job = submit(&ctx, &request);
    assert_eq!(wait(&job, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    let progress = poll(&job);
    assert_eq!(progress.state, EllaJobState::Done as u32);
    assert_eq!(progress.status, EllaStatus::Ok as u32);
    assert_eq!((progress.step, progress.total), (2, 2));
    assert_eq!(message(&job), "");
    assert_eq!(take_image(&job), Ok(expected));
    assert_eq!(take_image(&job), Err(EllaStatus::InvalidArgument));
    assert!(last_error().contains("taken already"), "{}", last_error());
    assert_eq!(wait(&job, 0), EllaStatus::Ok, "still DONE");
}

#[test]
fn poll_and_wait_do_not_block_while_the_job_runs() {
    let held = Held::at(1);
    let job = held.submit(3);
    held.gate.wait_held();
    let progress = poll(&job);
    assert_eq!(progress.state, EllaJobState::Running as u32);
    assert_eq!((progress.step, progress.total), (1, 3));
    assert_eq!(progress.status, EllaStatus::Ok as u32);
    assert_eq!(wait(&job, 0), EllaStatus::NotReady);
    let start = Instant::now();
    assert_eq!(wait(&job, 30), EllaStatus::NotReady);
    assert!(start.elapsed() >= Duration::from_millis(30));
    assert!(last_error().contains("within 30 ms"), "{}", last_error());
    assert_eq!(take_image(&job), Err(EllaStatus::NotReady));
    assert_eq!(message(&job), "");
    held.gate.release();
    assert_eq!(wait(&job, 60_000), EllaStatus::Ok);
    assert_eq!(held.gate.calls(), vec![(1, 3), (2, 3), (3, 3)]);
    assert!(take_image(&job).is_ok());
}

#[test]
fn poll_writes_only_the_fields_the_callers_struct_size_covers() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let job = submit(&ctx, &request(&prompt));
    assert_eq!(wait(&job, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    // An older header's struct: struct_size and state only.
    let mut old = EllaJobProgress {
        struct_size: 8,
        state: 99,
        step: 99,
        total: 99,
        status: 99,
    };
    assert_eq!(
        unsafe { ella_job_poll(job.ptr(), &mut old) },
        EllaStatus::Ok
    );
    assert_eq!(
        (old.struct_size, old.state, old.step, old.total, old.status),
        (8, EllaJobState::Done as u32, 99, 99, 99)
    );
    for size in [0, 6, 1 << 20] {
        let mut bad = EllaJobProgress {
            struct_size: size,
            ..old
        };
        assert_eq!(
            unsafe { ella_job_poll(job.ptr(), &mut bad) },
            EllaStatus::InvalidArgument,
            "struct_size {size}"
        );
        assert_eq!(bad.state, EllaJobState::Done as u32, "untouched");
    }
    assert_eq!(
        unsafe { ella_job_poll(job.ptr(), null_mut()) },
        EllaStatus::InvalidArgument
    );
}

#[test]
fn jobs_on_a_context_run_in_submission_order() {
    let held = Held::at(0); // never holds: steps count from 1
    let jobs: Vec<Job> = (1..=4)
        .map(|steps| {
            submit(
                &held.ctx,
                &EllaGenerateRequest {
                    seed: steps as u64,
                    ..held.request(steps)
                },
            )
        })
        .collect();
    for job in jobs.iter().rev() {
        assert_eq!(wait(job, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    }
    let totals: Vec<u32> = held.gate.calls().iter().map(|&(_, total)| total).collect();
    assert_eq!(totals, [1, 2, 2, 3, 3, 3, 4, 4, 4, 4]);
}

#[test]
fn a_queued_job_cancelled_or_freed_never_starts() {
    let held = Held::at(1);
    let first = held.submit(2);
    held.gate.wait_held();
    let cancelled = held.submit(2);
    let freed = held.submit(2);
    let last = held.submit(2);
    assert_eq!(state(&cancelled), EllaJobState::Queued);
    assert_eq!(poll(&cancelled).total, 0);
    unsafe { ella_job_cancel(cancelled.ptr()) };
    assert_eq!(state(&cancelled), EllaJobState::Cancelled, "at once");
    assert_eq!(poll(&cancelled).status, EllaStatus::Cancelled as u32);
    assert_eq!(wait(&cancelled, 0), EllaStatus::Cancelled);
    assert!(
        last_error().contains("before it started"),
        "{}",
        last_error()
    );
    assert!(message(&cancelled).contains("before it started"));
    assert_eq!(take_image(&cancelled), Err(EllaStatus::Cancelled));
    unsafe { ella_job_free(freed.into_raw()) };
    held.gate.release();
    assert_eq!(wait(&last, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    assert_eq!(wait(&first, 0), EllaStatus::Ok);
    // Two jobs of two steps ran; the other two never started.
    assert_eq!(held.gate.calls(), vec![(1, 2), (2, 2), (1, 2), (2, 2)]);
}

#[test]
fn a_running_job_cancelled_stops_at_the_next_block_and_the_context_goes_on() {
    let held = Held::at(1);
    let job = held.submit(6);
    let next = held.submit(2);
    held.gate.wait_held();
    unsafe { ella_job_cancel(job.ptr()) };
    assert_eq!(state(&job), EllaJobState::Running, "until its next check");
    held.gate.release();
    assert_eq!(wait(&job, ELLA_WAIT_FOREVER), EllaStatus::Cancelled);
    let progress = poll(&job);
    assert_eq!(progress.state, EllaJobState::Cancelled as u32);
    assert_eq!(
        (progress.step, progress.total),
        (1, 6),
        "stopped after step 1"
    );
    assert_eq!(take_image(&job), Err(EllaStatus::Cancelled));
    assert_eq!(wait(&next, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    assert_eq!(held.gate.calls(), vec![(1, 6), (1, 2), (2, 2)]);
}

#[test]
fn context_cancel_stops_the_running_job_not_the_queued_ones() {
    let held = Held::at(1);
    let running = held.submit(2);
    let queued = held.submit(2);
    held.gate.wait_held();
    unsafe { ella_context_cancel(held.ctx.ptr()) };
    held.gate.release();
    assert_eq!(wait(&running, ELLA_WAIT_FOREVER), EllaStatus::Cancelled);
    assert_eq!(wait(&queued, ELLA_WAIT_FOREVER), EllaStatus::Ok);
}

#[test]
fn a_running_job_freed_is_cancelled_and_the_worker_goes_on() {
    let held = Held::at(1);
    let freed = held.submit(6);
    held.gate.wait_held();
    unsafe { ella_job_free(freed.into_raw()) };
    held.gate.release();
    let next = held.submit(2);
    assert_eq!(wait(&next, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    assert_eq!(
        held.gate.calls(),
        vec![(1, 6), (1, 2), (2, 2)],
        "cancelled at step 1"
    );
}

#[test]
fn a_bad_request_fails_its_job_with_its_own_message() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let bad = submit(
        &ctx,
        &EllaGenerateRequest {
            width: 33,
            ..request(&prompt)
        },
    );
    let good = submit(&ctx, &request(&prompt));
    assert_eq!(wait(&bad, ELLA_WAIT_FOREVER), EllaStatus::InvalidArgument);
    assert!(last_error().contains("width 33"), "{}", last_error());
    let progress = poll(&bad);
    assert_eq!(progress.state, EllaJobState::Failed as u32);
    assert_eq!(progress.status, EllaStatus::InvalidArgument as u32);
    assert_eq!(take_image(&bad), Err(EllaStatus::InvalidArgument));
    // The job's message, whichever thread reads it (not a thread's last error).
    let address = bad.ptr() as usize;
    let from_another_thread = std::thread::spawn(move || {
        let job = address as *const EllaJob;
        let message = unsafe { CStr::from_ptr(ella_job_error_message(job)) };
        (message.to_str().unwrap().to_string(), last_error())
    })
    .join()
    .unwrap();
    assert!(from_another_thread.0.contains("width 33"));
    assert_eq!(from_another_thread.1, "");
    assert_eq!(
        wait(&good, ELLA_WAIT_FOREVER),
        EllaStatus::Ok,
        "the next job runs"
    );
}

#[test]
fn the_request_is_copied_and_its_prompt_cache_kept_at_submit() {
    let held = Held::at(1);
    let init = Context::new(&held.model)
        .generate_32(&held.request(2))
        .unwrap();
    let other = CString::new("two cats on a sofa").unwrap();
    let cache = Prompt::new(&held.model, &other, None);
    let img2img = EllaGenerateRequest {
        prompt: null(),
        prompt_cache: cache.ptr(),
        init_image: init.as_ptr(),
        init_image_size: init.len(),
        strength: 0.5,
        ..held.request(4)
    };
    let expected = Context::new(&held.model).generate_32(&img2img).unwrap();
    let blocker = held.submit(2);
    held.gate.wait_held();
    // Queued behind the held job while its inputs go away: the job has a copy of the
    // image buffer and a share of the prompt cache.
    let mut init = init;
    let job = submit(&held.ctx, &img2img);
    init.fill(0);
    drop(init);
    drop(cache);
    held.gate.release();
    assert_eq!(wait(&job, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    assert_eq!(take_image(&job), Ok(expected));
    assert_eq!(wait(&blocker, 0), EllaStatus::Ok);
}

#[test]
fn freeing_the_context_cancels_its_jobs_whose_handles_stay_valid() {
    let mut held = Held::at(1);
    let running = held.submit(6);
    let queued = held.submit(2);
    held.gate.wait_held();
    let releaser = {
        let gate = Arc::clone(&held.gate);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            gate.release();
        })
    };
    // Waits for the running job to stop (the gate holds it for 50 ms).
    let ctx = std::mem::replace(&mut held.ctx, Context::null());
    unsafe { ella_context_free(ctx.into_raw()) };
    releaser.join().unwrap();
    assert_eq!(state(&running), EllaJobState::Cancelled);
    assert_eq!(poll(&running).step, 1);
    assert_eq!(state(&queued), EllaJobState::Cancelled);
    assert_eq!(wait(&queued, ELLA_WAIT_FOREVER), EllaStatus::Cancelled);
    assert_eq!(held.gate.calls(), vec![(1, 6)]);
}

#[test]
fn a_job_callback_may_free_its_context_and_poll_but_not_wait() {
    struct Calls {
        ctx: AtomicPtr<EllaContext>,
        queued: AtomicPtr<EllaJob>,
        statuses: Mutex<Vec<EllaStatus>>,
    }
    unsafe extern "C" fn callback(step: u32, _: u32, user_data: *mut c_void) {
        let calls = unsafe { &*(user_data as *const Calls) };
        if step == 1 {
            let queued = loop {
                match calls.queued.load(Ordering::SeqCst) {
                    job if job.is_null() => std::thread::sleep(Duration::from_millis(1)),
                    job => break job,
                }
            };
            let mut statuses = calls.statuses.lock().unwrap();
            statuses.push(unsafe { ella_job_wait(queued, 0) });
            statuses.push(unsafe { ella_job_wait(queued, 1000) });
            unsafe { ella_context_free(calls.ctx.swap(null_mut(), Ordering::SeqCst)) };
        }
    }
    let model = load();
    let calls = Calls {
        ctx: AtomicPtr::new(null_mut()),
        queued: AtomicPtr::new(null_mut()),
        statuses: Mutex::new(Vec::new()),
    };
    let ctx = Context::with_params(
        &model,
        &EllaContextParams {
            progress_callback: Some(callback),
            progress_user_data: &calls as *const Calls as *mut c_void,
            ..ella_context_params_default()
        },
    )
    .into_raw();
    calls.ctx.store(ctx, Ordering::SeqCst);
    let prompt = CString::new("a red book").unwrap();
    let running = submit_raw(
        ctx,
        &EllaGenerateRequest {
            steps: 6,
            ..request(&prompt)
        },
    );
    let queued = submit_raw(ctx, &request(&prompt));
    calls.queued.store(queued.ptr(), Ordering::SeqCst);
    assert_eq!(wait(&running, ELLA_WAIT_FOREVER), EllaStatus::Cancelled);
    assert_eq!(poll(&running).step, 1);
    assert_eq!(wait(&queued, ELLA_WAIT_FOREVER), EllaStatus::Cancelled);
    assert_eq!(
        *calls.statuses.lock().unwrap(),
        [EllaStatus::NotReady, EllaStatus::Busy]
    );
    assert!(calls.ctx.load(Ordering::SeqCst).is_null(), "freed");
}

#[test]
fn a_synchronous_call_on_a_context_running_a_job_is_busy() {
    let held = Held::at(1);
    let job = held.submit(2);
    held.gate.wait_held();
    let busy = held.ctx.generate_32(&held.request(2));
    held.gate.release();
    assert!(busy.unwrap_err().starts_with("Busy"));
    assert_eq!(wait(&job, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    assert!(held.ctx.generate_32(&held.request(2)).is_ok(), "free again");
}

#[test]
fn a_job_keeps_its_latest_preview() {
    let model = load();
    let params = EllaContextParams {
        preview_every: 2,
        ..ella_context_params_default()
    };
    let ctx = Context::with_params(&model, &params);
    let prompt = CString::new("a red book").unwrap();
    let request = EllaGenerateRequest {
        steps: 5,
        ..request(&prompt)
    };
    let job = submit(&ctx, &request);
    assert_eq!(wait(&job, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    let mut image = Image::null();
    let mut step = 0u32;
    assert_eq!(
        unsafe { ella_job_preview(job.ptr(), image.out(), &mut step) },
        EllaStatus::Ok,
        "{}",
        last_error()
    );
    // After steps 2 and 4 of 5 (none after the last): the linear preview, the latents' size.
    assert_eq!(step, 4);
    let preview = image.get();
    assert_eq!(
        (preview.width, preview.height, preview.channels),
        (16, 16, 3)
    );
    assert_eq!(image.pixels().len(), 16 * 16 * 3);
    // Without previews there is none.
    let plain_ctx = Context::new(&model);
    let plain = submit(&plain_ctx, &request);
    assert_eq!(wait(&plain, ELLA_WAIT_FOREVER), EllaStatus::Ok);
    let mut none = Image::null();
    assert_eq!(
        unsafe { ella_job_preview(plain.ptr(), none.out(), null_mut()) },
        EllaStatus::NotReady
    );
    assert!(none.is_null());
    assert_eq!(
        unsafe { ella_job_preview(null(), none.out(), null_mut()) },
        EllaStatus::InvalidArgument
    );
}
