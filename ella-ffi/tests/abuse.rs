//! The C ABI under abuse, as a careless or hostile host would call it (issue #12): struct
//! sizes that end inside a field, one context from two threads, callbacks that call back
//! into their own model or context, image buffers of the wrong length, absurd prompts and
//! budgets, and model changes while another thread generates. Each was a crash, a hang, a
//! deadlock or a silent wrong image before; each is a status now.

use std::ffi::{CString, c_void};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use ella::*;

mod common;
use common::*;

/// The byte ranges of a struct's fields, from the struct's own layout (so that the test
/// does not trust the library's list).
macro_rules! field_ranges {
    ($value:expr, $t:ident { $($field:ident),* $(,)? }) => {{
        let $t { $($field),* } = &$value;
        vec![$({
            let start = std::mem::offset_of!($t, $field);
            start..start + std::mem::size_of_val($field)
        }),*]
    }};
}

/// A new context on `model` whose progress callback gets `user_data`.
fn context_with_progress<T>(
    model: &Model,
    callback: EllaProgressCallback,
    user_data: &Arc<T>,
) -> Context {
    let params = EllaContextParams {
        progress_callback: callback,
        progress_user_data: Arc::as_ptr(user_data) as *mut c_void,
        ..ella_context_params_default()
    };
    Context::with_params(model, &params)
}

/// A generation of "a red book" in `steps` steps on `ctx`, on another thread.
fn generate_on_thread(
    ctx: &Context,
    steps: u32,
) -> std::thread::JoinHandle<Result<Vec<u8>, String>> {
    let shared = ctx.ptr() as usize;
    std::thread::spawn(move || {
        let prompt = CString::new("a red book").unwrap();
        let r = EllaGenerateRequest {
            steps,
            ..request(&prompt)
        };
        generate_32(shared as *mut EllaContext, &r)
    })
}

/// Whether `size` ends inside one of `fields`.
fn inside(size: usize, fields: &[std::ops::Range<usize>]) -> bool {
    fields.iter().any(|f| f.start < size && size < f.end)
}

/// Sizes that end inside a pointer field (12, 20, 28, 36 … for the model params) read half
/// a pointer and crashed the host; every size that ends inside any field is refused, every
/// other size is read (fields past it keep their defaults).
#[test]
fn struct_sizes_that_end_inside_a_field_are_refused_in_model_params() {
    let p = paths();
    let full = params(&p);
    let fields = field_ranges!(
        full,
        EllaModelParams {
            struct_size,
            t5_path,
            ella_path,
            ella_config_path,
            sd_path,
            backend,
            precision,
            log_callback,
            log_user_data,
            t5_precision,
            sd_config_path,
            vae_path,
            load_clip,
            controlnet_path,
            sur_adapter_path,
            memory_budget,
            kernel_cache_path,
            n_threads,
            taesd_path,
            extra_controlnet_paths,
            n_extra_controlnet_paths,
            embedding_paths,
            n_embedding_paths,
        }
    );
    for size in [12, 20, 28, 36] {
        assert!(inside(size, &fields), "the probe's size {size}");
    }
    let mut refused = 0;
    for size in 0..std::mem::size_of::<EllaModelParams>() + 16 {
        let bad = EllaModelParams {
            struct_size: size as u32,
            ..full
        };
        let status = load_status(&bad);
        let size_error = last_error().contains("struct_size");
        let expected = size < 4 || inside(size, &fields);
        assert_eq!(
            size_error,
            expected,
            "model params size {size}: {status:?} {}",
            last_error()
        );
        refused += usize::from(size_error);
    }
    assert!(refused > 40, "{refused} sizes refused");
}

/// Every context params size that ends inside a field is refused, every other is read.
#[test]
fn struct_sizes_that_end_inside_a_field_are_refused_in_context_params() {
    let defaults = ella_context_params_default();
    let fields = field_ranges!(
        defaults,
        EllaContextParams {
            struct_size,
            progress_callback,
            progress_user_data,
            preview_callback,
            preview_user_data,
            preview_every,
            preview_method,
        }
    );
    let model = load();
    for size in 0..std::mem::size_of::<EllaContextParams>() + 16 {
        let params = EllaContextParams {
            struct_size: size as u32,
            ..defaults
        };
        let ctx = Context::try_with_params(&model, &params);
        let expected_ok = size >= 4 && !inside(size, &fields);
        assert_eq!(ctx.is_ok(), expected_ok, "context params size {size}");
    }
}

/// Request sizes that end inside a field (12, 68, 84, 100 …) are refused; every other size
/// is read, 16 (a whole default request) and 20 (half a pointer) included.
#[test]
fn struct_sizes_that_end_inside_a_field_are_refused_in_requests() {
    let prompt = CString::new("a red book").unwrap();
    let full = request(&prompt);
    let fields = field_ranges!(
        full,
        EllaGenerateRequest {
            struct_size,
            prompt,
            negative_prompt,
            width,
            height,
            steps,
            guidance_scale,
            seed,
            scheduler,
            max_tokens,
            pixel_format,
            vae_decode,
            prompt_cache,
            conditioning,
            init_image,
            strength,
            control_image,
            control_scale,
            control_start,
            control_end,
            sur_weight,
            sur_mode,
            init_image_size,
            control_image_size,
            eta,
            seamless,
            mask,
            mask_size,
            clip_prompt,
            clip_negative_prompt,
            clip_skip,
            controls,
            n_controls,
            t5_syntax,
            clip_syntax,
        }
    );
    for size in [12, 68, 84, 100] {
        assert!(inside(size, &fields), "the probe's size {size}");
    }
    let model = load();
    let ctx = Context::new(&model);
    for size in 0..std::mem::size_of::<EllaGenerateRequest>() + 16 {
        let r = EllaGenerateRequest {
            struct_size: size as u32,
            ..full
        };
        // An accepted request is refused next for the buffer, before any work.
        let mut byte = 0u8;
        let status = unsafe { ella_context_generate_into(ctx.ptr(), &r, &mut byte, 1, 96) };
        let expected = match size < 4 || inside(size, &fields) {
            true => EllaStatus::InvalidArgument,
            false => EllaStatus::BufferTooSmall,
        };
        assert_eq!(status, expected, "request size {size}: {}", last_error());
    }
}

/// What a progress callback saw when it called back into the library.
struct Reentry {
    model: *const EllaModel,
    ctx: *mut EllaContext,
    other_ctx: *mut EllaContext,
    statuses: Vec<(&'static str, EllaStatus)>,
}

unsafe extern "C" fn call_back_in(step: u32, _total: u32, user_data: *mut c_void) {
    let state = unsafe { &mut *(user_data as *mut Reentry) };
    if step != 1 {
        return;
    }
    let prompt = CString::new("a red book").unwrap();
    let r = request(&prompt);
    // One owner per call: a call that wrongly succeeded leaks nothing, and no slot is reused
    // (a panic here, in a C callback, would abort the test binary).
    let (mut image, mut other_image) = (Image::null(), Image::null());
    let (mut encoded, mut stepped) = (Tensor::null(), Tensor::null());
    let mut cached = Prompt::null();
    let states = [0f32; 64];
    let lora = fixture("lora/kohya.safetensors");
    let (paths, scales) = ([lora.as_ptr()], [1.0f32]);
    let calls: [(&str, EllaStatus); 7] = unsafe {
        [
            (
                "generate, same context",
                ella_context_generate(state.ctx, &r, image.out()),
            ),
            (
                "generate, other context",
                ella_context_generate(state.other_ctx, &r, other_image.out()),
            ),
            (
                "set_loras",
                ella_model_set_loras(state.model, paths.as_ptr(), scales.as_ptr(), 1),
            ),
            ("free_t5", ella_model_free_t5(state.model)),
            (
                "encode_prompt",
                ella_model_encode_t5(state.model, prompt.as_ptr(), 0, encoded.out()),
            ),
            (
                "prompt_encode",
                ella_prompt_new(state.model, prompt.as_ptr(), null(), 0, cached.out()),
            ),
            (
                "connector_step",
                ella_model_run_connector(state.model, states.as_ptr(), 2, 32, 500.0, stepped.out()),
            ),
        ]
    };
    state.statuses.extend(calls);
    unsafe { ella_context_cancel(state.ctx) };
}

/// A progress callback that called `ella_model_set_loras` or
/// `ella_model_free_t5` on its own model deadlocked; any call that would wait for
/// (or re-enter) the running generation is refused with `ELLA_STATUS_BUSY`, and
/// `ella_context_cancel` from the callback works.
#[test]
fn callbacks_that_call_back_into_their_model_are_refused() {
    let model = load();
    let mut state = Reentry {
        model: model.ptr(),
        ctx: null_mut(),
        other_ctx: null_mut(),
        statuses: Vec::new(),
    };
    let params = EllaContextParams {
        progress_callback: Some(call_back_in),
        progress_user_data: &mut state as *mut Reentry as *mut c_void,
        ..ella_context_params_default()
    };
    let ctx = Context::with_params(&model, &params);
    let other = Context::new(&model);
    state.ctx = ctx.ptr();
    state.other_ctx = other.ptr();
    let prompt = CString::new("a red book").unwrap();
    let r = EllaGenerateRequest {
        steps: 3,
        ..request(&prompt)
    };
    assert_eq!(ctx.status_of(&r), EllaStatus::Cancelled);
    assert_eq!(state.statuses.len(), 7);
    for (call, status) in &state.statuses {
        assert_eq!(*status, EllaStatus::Busy, "{call} from the callback");
    }
    // Afterwards every one of them works again.
    assert_eq!(other.generate_32(&request(&prompt)).map(|_| ()), Ok(()));
    assert_eq!(unsafe { ella_model_free_t5(model.ptr()) }, EllaStatus::Ok);
}

/// Two threads on one context: the second call is refused with `ELLA_STATUS_BUSY` while
/// the first runs, never undefined behaviour.
#[test]
fn a_context_used_from_two_threads_at_once_is_busy() {
    struct Gate {
        inside: Barrier,
        tried: Barrier,
    }
    unsafe extern "C" fn wait_at_step_one(step: u32, _: u32, user_data: *mut c_void) {
        if step == 1 {
            let gate = unsafe { &*(user_data as *const Gate) };
            gate.inside.wait();
            gate.tried.wait();
        }
    }
    let model = load();
    let gate = Arc::new(Gate {
        inside: Barrier::new(2),
        tried: Barrier::new(2),
    });
    let ctx = context_with_progress(&model, Some(wait_at_step_one), &gate);
    let first = generate_on_thread(&ctx, 2);
    gate.inside.wait();
    let prompt = CString::new("two cats").unwrap();
    let second = ctx.generate_32(&request(&prompt));
    // The first call is released before any assertion: a failing one must not leave it
    // waiting (the context's owner would wait for it).
    gate.tried.wait();
    let second = second.unwrap_err();
    assert!(second.starts_with("Busy"), "{second}");
    assert!(first.join().unwrap().is_ok());
}

/// `ella_context_free` from the context's own progress callback frees it when the call
/// returns.
#[test]
fn a_context_freed_from_its_own_callback_is_freed_when_the_call_returns() {
    unsafe extern "C" fn free_self(step: u32, _: u32, user_data: *mut c_void) {
        if step == 1 {
            unsafe { ella_context_free(*(user_data as *const *mut EllaContext)) };
        }
    }
    let model = load();
    let mut slot: *mut EllaContext = null_mut();
    let params = EllaContextParams {
        progress_callback: Some(free_self),
        progress_user_data: &mut slot as *mut *mut EllaContext as *mut c_void,
        ..ella_context_params_default()
    };
    assert_eq!(
        unsafe { ella_context_new(model.ptr(), &params, &mut slot) },
        EllaStatus::Ok
    );
    let prompt = CString::new("a red book").unwrap();
    assert_eq!(generate_32(slot, &request(&prompt)).map(|_| ()), Ok(()));
}

/// `ella_context_free` from another thread while the context runs cancels the call and
/// waits for it.
#[test]
fn a_context_freed_from_another_thread_cancels_its_call_and_waits() {
    unsafe extern "C" fn signal(_: u32, _: u32, user_data: *mut c_void) {
        unsafe { &*(user_data as *const AtomicU32) }.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    }
    let model = load();
    let steps = Arc::new(AtomicU32::new(0));
    let ctx = context_with_progress(&model, Some(signal), &steps);
    let running = generate_on_thread(&ctx, 200);
    while steps.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    unsafe { ella_context_free(ctx.into_raw()) };
    let result = running.join().unwrap().unwrap_err();
    assert!(result.starts_with("Cancelled"), "{result}");
    assert!(steps.load(Ordering::SeqCst) < 200);
}

/// `init_image` and `control_image` had no length: a short buffer was read past its end
/// (init) or aborted the host (control). Their lengths are fields now, checked.
#[test]
fn image_buffers_must_have_their_stated_length() {
    let p = paths();
    let controlnet = fixture("controlnet");
    let with_controlnet = EllaModelParams {
        controlnet_path: controlnet.as_ptr(),
        ..params(&p)
    };
    let model = Model::load(&with_controlnet);
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let pixels = vec![128u8; 32 * 32 * 3];
    for size in [0, 1, pixels.len() - 1, pixels.len() + 1, usize::MAX] {
        let init = EllaGenerateRequest {
            init_image: pixels.as_ptr(),
            init_image_size: size,
            ..request(&prompt)
        };
        let err = ctx.generate_32(&init).unwrap_err();
        assert!(err.contains("init_image_size"), "{size}: {err}");
        let control = EllaGenerateRequest {
            control_image: pixels.as_ptr(),
            control_image_size: size,
            ..request(&prompt)
        };
        let err = ctx.generate_32(&control).unwrap_err();
        assert!(err.contains("control_image_size"), "{size}: {err}");
    }
    let both = EllaGenerateRequest {
        init_image: pixels.as_ptr(),
        init_image_size: pixels.len(),
        control_image: pixels.as_ptr(),
        control_image_size: pixels.len(),
        ..request(&prompt)
    };
    assert_eq!(ctx.generate_32(&both).map(|_| ()), Ok(()));
}

/// A 100,000-character prompt.
fn long_prompt() -> CString {
    CString::new("a".repeat(100_000)).unwrap()
}

/// A 100,000-character prompt or `max_tokens` = 2³² − 1 aborted the host through
/// `ella_model_encode_t5` and `ella_prompt_new`; so did more T5 states than T5 makes
/// through `ella_model_run_connector`.
#[test]
fn absurd_prompts_and_token_counts_are_refused_by_the_encoders() {
    let model = load();
    let long = long_prompt();
    let short = CString::new("a red book").unwrap();
    let mut tensor = Tensor::null();
    let mut cached = Prompt::null();
    unsafe {
        assert_eq!(
            ella_model_encode_t5(model.ptr(), long.as_ptr(), 0, tensor.out()),
            EllaStatus::InvalidArgument
        );
        assert_eq!(
            ella_model_encode_t5(model.ptr(), short.as_ptr(), u32::MAX, tensor.out()),
            EllaStatus::InvalidArgument
        );
        assert_eq!(
            ella_prompt_new(model.ptr(), long.as_ptr(), null(), 0, cached.out()),
            EllaStatus::InvalidArgument
        );
        assert_eq!(
            ella_prompt_new(model.ptr(), short.as_ptr(), long.as_ptr(), 0, cached.out()),
            EllaStatus::InvalidArgument
        );
    }
    let states = vec![0f32; 4097 * 32];
    assert_eq!(
        unsafe {
            ella_model_run_connector(model.ptr(), states.as_ptr(), 4097, 32, 500.0, tensor.out())
        },
        EllaStatus::InvalidArgument,
        "more tokens than T5 makes"
    );
    assert!(tensor.is_null() && cached.is_null());
}

/// A 100,000-character prompt or `max_tokens` = 2³² − 1 aborted the host through
/// `ella_context_generate`.
#[test]
fn absurd_prompts_and_max_tokens_are_refused_by_generate() {
    let model = load();
    let ctx = Context::new(&model);
    let long = long_prompt();
    assert_eq!(ctx.status_of(&request(&long)), EllaStatus::InvalidArgument);
    let short = CString::new("a red book").unwrap();
    let max_tokens = EllaGenerateRequest {
        max_tokens: u32::MAX,
        ..request(&short)
    };
    assert_eq!(ctx.status_of(&max_tokens), EllaStatus::InvalidArgument);
}

/// An absurd guidance made a black image "successfully".
#[test]
fn an_absurd_guidance_is_a_numerical_error() {
    let model = load();
    let ctx = Context::new(&model);
    let short = CString::new("a red book").unwrap();
    let guidance = EllaGenerateRequest {
        guidance_scale: 3e38,
        ..request(&short)
    };
    assert_eq!(ctx.status_of(&guidance), EllaStatus::Numerical);
    assert!(last_error().contains("step 1 of 2"), "{}", last_error());
}

/// A prompt cache encoded flexibly, used by a request with `max_tokens` 7, panicked.
#[test]
fn a_flexible_prompt_cache_serves_a_request_of_7_tokens() {
    let model = load();
    let ctx = Context::new(&model);
    let short = CString::new("a red book").unwrap();
    let cached = Prompt::new(&model, &short, None);
    let from_cache = EllaGenerateRequest {
        prompt_cache: cached.ptr(),
        max_tokens: 7,
        ..request(&short)
    };
    assert_eq!(
        ctx.status_of(&from_cache),
        EllaStatus::Ok,
        "{}",
        last_error()
    );
}

/// A request over the memory budget could not be refused.
#[test]
fn a_request_over_the_memory_budget_is_out_of_memory() {
    let p = paths();
    let tiny_budget = EllaModelParams {
        memory_budget: 1 << 20,
        ..params(&p)
    };
    let model = Model::load(&tiny_budget);
    let ctx = Context::new(&model);
    let short = CString::new("a red book").unwrap();
    assert_eq!(ctx.status_of(&request(&short)), EllaStatus::OutOfMemory);
    assert!(last_error().contains("MiB"), "{}", last_error());
}

/// `ella_model_set_loras` and `ella_model_free_t5` while another thread
/// generates wait for that generation: it ends with the weights it started with, never a
/// mix; the next one sees the change.
#[test]
fn model_changes_wait_for_running_generations() {
    struct Slow {
        steps: AtomicU32,
    }
    unsafe extern "C" fn slow_steps(_: u32, _: u32, user_data: *mut c_void) {
        unsafe { &*(user_data as *const Slow) }
            .steps
            .fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
    let model = load();
    let prompt = CString::new("a red book").unwrap();
    let r = EllaGenerateRequest {
        steps: 4,
        ..request(&prompt)
    };
    let plain_ctx = Context::new(&model);
    let lora = fixture("lora/kohya.safetensors");
    let (paths, scales) = ([lora.as_ptr()], [1.0f32]);

    let mut befores = Vec::new();
    for change in ["set_loras", "free_t5"] {
        let before = plain_ctx.generate_32(&r).unwrap();
        befores.push(before.clone());
        let slow = Arc::new(Slow {
            steps: AtomicU32::new(0),
        });
        let ctx = context_with_progress(&model, Some(slow_steps), &slow);
        let running = generate_on_thread(&ctx, 4);
        while slow.steps.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = match change {
            "set_loras" => unsafe {
                ella_model_set_loras(model.ptr(), paths.as_ptr(), scales.as_ptr(), 1)
            },
            _ => unsafe { ella_model_free_t5(model.ptr()) },
        };
        assert_eq!(status, EllaStatus::Ok, "{change}: {}", last_error());
        assert_eq!(
            slow.steps.load(Ordering::SeqCst),
            4,
            "{change} returned before the generation's last step"
        );
        let image = running.join().unwrap().unwrap();
        assert!(
            image == before,
            "{change}: the running generation kept the model it started with"
        );
    }
    // The generations after each change see it: the LoRA, then no T5 to encode with.
    assert!(befores[0] != befores[1], "the LoRA changed the next image");
    let err = plain_ctx.generate_32(&r).unwrap_err();
    assert!(err.contains("T5"), "{err}");
}
