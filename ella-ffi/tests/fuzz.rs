//! Fuzzing the C structs the library reads through `struct_size` (the engine is
//! ella-core's `tests/common/fuzz.rs`): every size, enum value, number and string a host
//! can put in `ella_model_params`, `ella_context_params` and `ella_generate_request`, with
//! the pointers valid or NULL (a wild pointer is the host's undefined behaviour, not
//! ours). Each call must return a status: a panic, an abort, a hang or an allocation peak
//! over the limit fails.

mod common;
// ella-core's test helpers, of which this binary uses a part.
#[allow(dead_code)]
#[path = "../../ella-core/tests/common/counting.rs"]
mod counting;
#[allow(dead_code)]
#[path = "../../ella-core/tests/common/fuzz.rs"]
mod fuzz;

use std::ffi::{CString, c_char, c_void};
use std::ptr::{null, null_mut};

use arbitrary::Unstructured;
use common::*;
use counting::Counting;
use ella::*;
use fuzz::Fuzzer;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The run's choices are the input itself: 512 random bytes read by [`Unstructured`].
fn choices(u: &mut Unstructured, _seed: &[u8]) -> Vec<u8> {
    (0..512).map(|_| u.arbitrary().unwrap_or(0)).collect()
}

/// A `u32` field: a valid enum value, a near miss, or anything.
fn small(u: &mut Unstructured) -> u32 {
    match u.int_in_range(0..=3).unwrap_or(0) {
        0 | 1 => u.int_in_range(0..=5).unwrap_or(0),
        2 => *u.choose(&[7, 8, 64, 4096, u32::MAX]).unwrap_or(&0),
        _ => u.arbitrary().unwrap_or(0),
    }
}

fn float(u: &mut Unstructured) -> f32 {
    *u.choose(&[
        0.0,
        0.5,
        1.0,
        7.5,
        -1.0,
        1.5,
        3e38,
        f32::NAN,
        f32::INFINITY,
        f32::MIN_POSITIVE,
    ])
    .unwrap_or(&0.0)
}

/// A `struct_size`: the full size, a field boundary, inside a field, or absurd.
fn struct_size(u: &mut Unstructured, full: usize) -> u32 {
    match u.int_in_range(0..=3).unwrap_or(0) {
        0 => full as u32,
        1 | 2 => u.int_in_range(0..=full as u32 + 16).unwrap_or(0),
        _ => u.arbitrary().unwrap_or(0),
    }
}

/// Strings a host may pass: NULL, valid, empty, not UTF-8, very long.
struct Strings {
    pool: Vec<CString>,
}

impl Strings {
    fn new(valid: &[CString]) -> Self {
        let mut pool = valid.to_vec();
        pool.push(CString::new("").unwrap());
        pool.push(CString::new(vec![0xff, 0xfe, b'x']).unwrap());
        pool.push(CString::new("a red book ".repeat(10_000)).unwrap());
        pool.push(CString::new("/nonexistent/path").unwrap());
        Self { pool }
    }

    fn pick(&self, u: &mut Unstructured) -> *const c_char {
        match u.ratio(1, 4).unwrap_or(false) {
            true => null(),
            false => self.pool[u.choose_index(self.pool.len()).unwrap_or(0)].as_ptr(),
        }
    }
}

#[test]
fn model_params() {
    let p = paths();
    let strings = Strings::new(&[p.t5.clone(), p.ella.clone(), p.config.clone(), p.sd.clone()]);
    let full = std::mem::size_of::<EllaModelParams>();
    let seed = [Vec::new()];
    Fuzzer::new("c-model-params").run(&seed, choices, |input| {
        let mut u = Unstructured::new(input);
        let mut params = params(&p);
        params.struct_size = struct_size(&mut u, full);
        // Each field is kept valid or replaced.
        if u.ratio(1, 3).unwrap_or(false) {
            params.t5_path = strings.pick(&mut u);
        }
        if u.ratio(1, 3).unwrap_or(false) {
            params.ella_path = strings.pick(&mut u);
        }
        if u.ratio(1, 4).unwrap_or(false) {
            params.sd_path = strings.pick(&mut u);
        }
        if u.ratio(1, 4).unwrap_or(false) {
            params.ella_config_path = strings.pick(&mut u);
        }
        for field in [
            &mut params.backend,
            &mut params.precision,
            &mut params.t5_precision,
            &mut params.load_clip,
        ] {
            if u.ratio(1, 3).unwrap_or(false) {
                *field = small(&mut u);
            }
        }
        params.memory_budget = *u.choose(&[0, 1, 1 << 20, 1 << 30, u64::MAX]).unwrap_or(&0);
        Model::try_load(&params).is_ok()
    });
}

/// Cancels the context whose address is in the slot `user_data` points to.
unsafe extern "C" fn cancel_at_step_one(_step: u32, _total: u32, user_data: *mut c_void) {
    unsafe { ella_context_cancel(*(user_data as *const *mut EllaContext)) };
}

/// A context on `model` that cancels its generations at their first step; its callback
/// reads the context from the box (an owner is the handle, `#[repr(transparent)]`).
fn cancelling_context(model: &Model) -> Box<Context> {
    let mut slot = Box::new(Context::null());
    let params = EllaContextParams {
        progress_callback: Some(cancel_at_step_one),
        progress_user_data: slot.out() as *mut c_void,
        ..ella_context_params_default()
    };
    assert_eq!(
        unsafe { ella_context_new(model.ptr(), &params, slot.out()) },
        EllaStatus::Ok
    );
    slot
}

#[test]
fn context_params() {
    let model = load();
    let full = std::mem::size_of::<EllaContextParams>();
    Fuzzer::new("c-context-params").run(&[Vec::new()], choices, |input| {
        let mut u = Unstructured::new(input);
        let params = EllaContextParams {
            struct_size: struct_size(&mut u, full),
            progress_callback: None,
            progress_user_data: null_mut(),
            preview_callback: None,
            preview_user_data: null_mut(),
            preview_every: u.arbitrary().unwrap_or(0),
            preview_method: u.arbitrary().unwrap_or(0),
        };
        Context::try_with_params(&model, &params).is_ok()
    });
}

/// Requests run on a context that cancels at the first step, under a 64 MiB budget: a
/// valid request costs one step, a large one is refused before it allocates.
#[test]
fn requests() {
    let p = paths();
    let budget = EllaModelParams {
        memory_budget: 64 << 20,
        ..params(&p)
    };
    let small_model = Model::load(&budget);
    let ctx = cancelling_context(&small_model);
    let strings = Strings::new(&[CString::new("a red book").unwrap()]);
    let prompt = CString::new("a red book").unwrap();
    let cache = Prompt::new(&small_model, &prompt, None);
    let pixels = vec![100u8; 1 << 16];
    let full = std::mem::size_of::<EllaGenerateRequest>();
    Fuzzer::new("c-request").run(&[Vec::new()], choices, |input| {
        let mut u = Unstructured::new(input);
        let side = |u: &mut Unstructured| -> u32 {
            *u.choose(&[0, 8, 16, 24, 32, 33, 4096, 4104, 1 << 20, u32::MAX])
                .unwrap_or(&16)
        };
        // Start from a valid request; each field is replaced with probability 1/4.
        let mut r = request(&prompt);
        let change = |u: &mut Unstructured| u.ratio(1, 4).unwrap_or(false);
        if change(&mut u) {
            r.struct_size = struct_size(&mut u, full);
        }
        if change(&mut u) {
            r.prompt = strings.pick(&mut u);
        }
        if change(&mut u) {
            r.negative_prompt = strings.pick(&mut u);
        }
        if change(&mut u) {
            r.width = side(&mut u);
        }
        if change(&mut u) {
            r.height = side(&mut u);
        }
        if change(&mut u) {
            r.steps = *u
                .choose(&[0, 1, 2, 25, 999, 1000, 1001, u32::MAX])
                .unwrap_or(&2);
        }
        if change(&mut u) {
            r.guidance_scale = float(&mut u);
        }
        if change(&mut u) {
            r.seed = u.arbitrary().unwrap_or(0);
        }
        for field in [
            &mut r.scheduler,
            &mut r.pixel_format,
            &mut r.vae_decode,
            &mut r.conditioning,
            &mut r.sur_mode,
        ] {
            if change(&mut u) {
                *field = small(&mut u);
            }
        }
        if change(&mut u) {
            r.max_tokens = *u
                .choose(&[0, 1, 7, 128, 4096, 4097, u32::MAX])
                .unwrap_or(&0);
        }
        if change(&mut u) {
            r.prompt_cache = cache.ptr();
        }
        // Buffers are always as long as their stated size (a longer claim is the host's
        // undefined behaviour); the size itself is anything up to that, or exact.
        let buffer = |u: &mut Unstructured, what: &mut *const u8, size: &mut usize| {
            *what = pixels.as_ptr();
            *size = match u.arbitrary().unwrap_or(false) {
                true => (r.width as usize * r.height as usize * 3).min(pixels.len()),
                false => u.int_in_range(0..=pixels.len()).unwrap_or(0),
            };
        };
        if change(&mut u) {
            let (mut image, mut size) = (null(), 0);
            buffer(&mut u, &mut image, &mut size);
            (r.init_image, r.init_image_size) = (image, size);
        }
        if change(&mut u) {
            let (mut image, mut size) = (null(), 0);
            buffer(&mut u, &mut image, &mut size);
            (r.control_image, r.control_image_size) = (image, size);
        }
        for field in [&mut r.strength, &mut r.sur_weight, &mut r.control_scale] {
            if change(&mut u) {
                *field = float(&mut u);
            }
        }
        matches!(ctx.status_of(&r), EllaStatus::Ok | EllaStatus::Cancelled)
    });
}
