//! Every C ABI function's success and error paths, called as a C host would.

use std::ffi::{CStr, CString, c_void};
use std::ptr::{null, null_mut};

use ella::*;

mod common;
use common::*;

#[test]
fn model_load_refuses_null_pointers_and_bad_struct_sizes() {
    let p = paths();
    assert_eq!(load_status(null()), EllaStatus::InvalidArgument);
    assert!(last_error().contains("params is NULL"));
    assert_eq!(
        unsafe { ella_model_load(&params(&p), null_mut()) },
        EllaStatus::InvalidArgument
    );
    for size in [0u32, 4, 1 << 20] {
        let bad = EllaModelParams {
            struct_size: size,
            ..params(&p)
        };
        assert_eq!(
            load_status(&bad),
            EllaStatus::InvalidArgument,
            "struct_size {size}"
        );
    }
}

#[test]
fn model_load_refuses_missing_non_utf8_and_nonexistent_paths() {
    let p = paths();
    let no_t5 = EllaModelParams {
        t5_path: null(),
        ..params(&p)
    };
    assert_eq!(load_status(&no_t5), EllaStatus::InvalidArgument);
    assert!(last_error().contains("t5_path"));
    let not_utf8 = CString::new(vec![0xff, 0xfe, b'x']).unwrap();
    let bad = EllaModelParams {
        sd_path: not_utf8.as_ptr(),
        ..params(&p)
    };
    assert_eq!(load_status(&bad), EllaStatus::InvalidArgument);
    assert!(last_error().contains("UTF-8"));
    let missing = CString::new("/nonexistent/ella.safetensors").unwrap();
    let bad = EllaModelParams {
        ella_path: missing.as_ptr(),
        ..params(&p)
    };
    assert_eq!(load_status(&bad), EllaStatus::Io);
    assert!(
        last_error().contains("/nonexistent/ella.safetensors"),
        "{}",
        last_error()
    );
}

#[test]
fn truncated_or_mismatched_weights_are_an_invalid_model() {
    let p = paths();
    // A truncated weight file is an invalid model, not a crash.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixture("ella/ella.safetensors").to_str().unwrap()).unwrap();
    let truncated = dir.path().join("cut.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let truncated = CString::new(truncated.to_str().unwrap()).unwrap();
    let bad = EllaModelParams {
        ella_path: truncated.as_ptr(),
        ..params(&p)
    };
    assert_eq!(load_status(&bad), EllaStatus::InvalidModel);
    // The official connector's sizes on the tiny file: a mismatch names the tensor.
    let bad = EllaModelParams {
        ella_config_path: null(),
        ..params(&p)
    };
    assert_eq!(load_status(&bad), EllaStatus::InvalidModel);
    assert!(last_error().contains("shape"), "{}", last_error());
}

#[test]
fn model_load_refuses_unknown_enums_and_thread_counts() {
    let p = paths();
    let bad = EllaModelParams {
        backend: 7,
        ..params(&p)
    };
    assert_eq!(load_status(&bad), EllaStatus::InvalidArgument);
    #[cfg(not(feature = "cuda"))]
    {
        let bad = EllaModelParams {
            backend: EllaBackend::Cuda as u32,
            ..params(&p)
        };
        assert_eq!(load_status(&bad), EllaStatus::Unsupported);
        assert!(last_error().contains("`cuda`"), "{}", last_error());
    }
    let bad = EllaModelParams {
        t5_precision: 9,
        ..params(&p)
    };
    assert_eq!(load_status(&bad), EllaStatus::InvalidArgument);
    assert!(last_error().contains("t5_precision"), "{}", last_error());
    let bad = EllaModelParams {
        n_threads: 1 << 20,
        ..params(&p)
    };
    assert_eq!(load_status(&bad), EllaStatus::InvalidArgument);
    assert!(last_error().contains("threads"), "{}", last_error());
}

/// Every free function takes NULL, and so does `ella_context_cancel`.
#[test]
fn null_handles_are_no_ops_to_free_and_cancel() {
    unsafe {
        ella_model_free(null_mut());
        ella_context_free(null_mut());
        ella_context_cancel(null());
        ella_image_free(null_mut());
        ella_prompt_free(null_mut());
        ella_tensor_free(null_mut());
    }
}

#[test]
fn context_new_refuses_null_pointers_and_bad_params() {
    let model = load();
    let mut ctx = Context::null();
    assert_eq!(
        unsafe { ella_context_new(null(), null(), ctx.out()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_context_new(model.ptr(), null(), null_mut()) },
        EllaStatus::InvalidArgument
    );
    let bad_params = EllaContextParams {
        struct_size: 2,
        ..ella_context_params_default()
    };
    assert_eq!(
        unsafe { ella_context_new(model.ptr(), &bad_params, ctx.out()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_context_new(model.ptr(), null(), ctx.out()) },
        EllaStatus::Ok
    );
}

#[test]
fn generate_refuses_null_pointers() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let mut image = Image::null();
    assert_eq!(
        unsafe { ella_context_generate(null_mut(), &request(&prompt), image.out()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_context_generate(ctx.ptr(), null(), image.out()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_context_generate(ctx.ptr(), &request(&prompt), null_mut()) },
        EllaStatus::InvalidArgument
    );
}

#[test]
fn generate_refuses_invalid_requests_without_an_image() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let mut image = Image::null();
    let cases = [
        EllaGenerateRequest {
            prompt: null(),
            ..request(&prompt)
        },
        EllaGenerateRequest {
            width: 0,
            ..request(&prompt)
        },
        EllaGenerateRequest {
            height: 31,
            ..request(&prompt)
        },
        EllaGenerateRequest {
            width: 1 << 30,
            ..request(&prompt)
        },
        EllaGenerateRequest {
            steps: 0,
            ..request(&prompt)
        },
        EllaGenerateRequest {
            guidance_scale: f32::NAN,
            ..request(&prompt)
        },
        EllaGenerateRequest {
            scheduler: 9,
            ..request(&prompt)
        },
        EllaGenerateRequest {
            pixel_format: 9,
            ..request(&prompt)
        },
    ];
    for case in cases {
        assert_eq!(
            unsafe { ella_context_generate(ctx.ptr(), &case, image.out()) },
            EllaStatus::InvalidArgument,
            "{case:?}"
        );
        assert!(!last_error().is_empty());
    }
    let not_utf8 = CString::new(vec![0xc3, 0x28]).unwrap();
    let bad = EllaGenerateRequest {
        negative_prompt: not_utf8.as_ptr(),
        ..request(&prompt)
    };
    assert_eq!(
        unsafe { ella_context_generate(ctx.ptr(), &bad, image.out()) },
        EllaStatus::InvalidArgument
    );
    assert!(image.is_null());
}

/// `prompt`'s image from `ella_context_generate` on `ctx`: 32×32 RGB8 pixels.
fn generated_rgb(ctx: &Context, prompt: &CStr) -> Vec<u8> {
    let image = ctx
        .generate(&request(prompt))
        .unwrap_or_else(|status| panic!("{status:?}: {}", last_error()));
    let img = image.get();
    assert_eq!((img.width, img.height, img.channels), (32, 32, 3));
    image.pixels().to_vec()
}

#[test]
fn generate_makes_an_owned_rgb8_image() {
    let model = load();
    let ctx = Context::new(&model);
    generated_rgb(&ctx, c"a red book");
}

#[test]
fn a_request_from_an_older_header_gets_the_default_pixel_format() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let rgb = generated_rgb(&ctx, &prompt);
    // A caller built against an older header: its request ends before `pixel_format`.
    let old = EllaGenerateRequest {
        struct_size: std::mem::offset_of!(EllaGenerateRequest, pixel_format) as u32,
        pixel_format: 1,
        ..request(&prompt)
    };
    let mut buffer = vec![0u8; 32 * 32 * 3];
    assert_eq!(
        unsafe {
            ella_context_generate_into(ctx.ptr(), &old, buffer.as_mut_ptr(), buffer.len(), 96)
        },
        EllaStatus::Ok
    );
    assert_eq!(
        buffer, rgb,
        "the missing field took its default (RGB8), and the seed gives the same image"
    );
}

/// "a red book" in RGBA8.
fn rgba_request(prompt: &CStr) -> EllaGenerateRequest {
    EllaGenerateRequest {
        pixel_format: 1,
        ..request(prompt)
    }
}

/// The caller's buffer: too small is refused before any work.
#[test]
fn generate_into_refuses_a_null_or_short_buffer() {
    let model = load();
    let ctx = Context::new(&model);
    let rgba = rgba_request(c"a red book");
    let mut buffer = vec![0u8; 136 * 32];
    let into = |b: *mut u8, size: usize, pitch: usize| unsafe {
        ella_context_generate_into(ctx.ptr(), &rgba, b, size, pitch)
    };
    assert_eq!(into(null_mut(), 0, 136), EllaStatus::InvalidArgument);
    // The last row needs only width × 4 bytes, not a whole pitch.
    let needed = 136 * 31 + 128;
    assert_eq!(
        into(buffer.as_mut_ptr(), needed - 1, 136),
        EllaStatus::BufferTooSmall
    );
    assert_eq!(
        into(buffer.as_mut_ptr(), buffer.len(), 100),
        EllaStatus::BufferTooSmall
    );
    assert_eq!(
        into(buffer.as_mut_ptr(), buffer.len(), usize::MAX),
        EllaStatus::BufferTooSmall
    );
}

/// The caller's buffer: RGBA with a padded pitch.
#[test]
fn generate_into_writes_rgba_rows_at_a_padded_pitch() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = c"a red book";
    let rgb = generated_rgb(&ctx, prompt);
    let mut buffer = vec![0u8; 136 * 32];
    assert_eq!(
        unsafe {
            ella_context_generate_into(
                ctx.ptr(),
                &rgba_request(prompt),
                buffer.as_mut_ptr(),
                buffer.len(),
                136,
            )
        },
        EllaStatus::Ok
    );
    for y in 0..32 {
        for x in 0..32 {
            let px = &buffer[y * 136 + x * 4..][..4];
            assert_eq!(
                px,
                [
                    rgb[(y * 32 + x) * 3],
                    rgb[(y * 32 + x) * 3 + 1],
                    rgb[(y * 32 + x) * 3 + 2],
                    255
                ]
            );
        }
    }
}

struct CancelAfter {
    ctx: *const EllaContext,
    calls: Vec<(u32, u32)>,
}

unsafe extern "C" fn cancel_in_callback(step: u32, total: u32, user_data: *mut c_void) {
    let state = unsafe { &mut *(user_data as *mut CancelAfter) };
    state.calls.push((step, total));
    if step == 2 {
        unsafe { ella_context_cancel(state.ctx) };
    }
}

#[test]
fn progress_and_cancel_leave_the_context_usable() {
    let model = load();
    let mut state = CancelAfter {
        ctx: null(),
        calls: Vec::new(),
    };
    let params = EllaContextParams {
        progress_callback: Some(cancel_in_callback),
        progress_user_data: &mut state as *mut CancelAfter as *mut c_void,
        ..ella_context_params_default()
    };
    let ctx = Context::with_params(&model, &params);
    state.ctx = ctx.ptr();
    let prompt = CString::new("a red book").unwrap();
    let long = EllaGenerateRequest {
        steps: 6,
        ..request(&prompt)
    };
    let mut image = Image::null();
    assert_eq!(
        unsafe { ella_context_generate(ctx.ptr(), &long, image.out()) },
        EllaStatus::Cancelled
    );
    assert_eq!(
        state.calls,
        vec![(1, 6), (2, 6)],
        "stopped after the step that cancelled"
    );
    assert!(image.is_null());
    // A cancel while idle does not affect the next run; the context works again.
    unsafe { ella_context_cancel(ctx.ptr()) };
    state.calls.clear();
    let again = EllaGenerateRequest {
        steps: 3,
        ..request(&prompt)
    };
    assert_eq!(
        unsafe { ella_context_generate(ctx.ptr(), &again, image.out()) },
        EllaStatus::Cancelled,
        "step 2 cancels again"
    );
    assert_eq!(state.calls, vec![(1, 3), (2, 3)]);
    let one = EllaGenerateRequest {
        steps: 1,
        ..request(&prompt)
    };
    assert_eq!(
        unsafe { ella_context_generate(ctx.ptr(), &one, image.out()) },
        EllaStatus::Ok
    );
}

/// The prompt of the T5 and connector tests: 17 tokens.
const TABLE: &CStr = c"a red book on a wooden table";

#[test]
fn encode_t5_refuses_null_pointers() {
    let model = load();
    let mut states = Tensor::null();
    assert_eq!(
        unsafe { ella_model_encode_t5(null(), TABLE.as_ptr(), 0, states.out()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_model_encode_t5(model.ptr(), null(), 0, states.out()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_model_encode_t5(model.ptr(), TABLE.as_ptr(), 0, null_mut()) },
        EllaStatus::InvalidArgument
    );
}

#[test]
fn encode_t5_pads_to_max_tokens_or_keeps_the_prompts_length() {
    let model = load();
    let states = Tensor::encode_t5(&model, TABLE, 128);
    assert_eq!(
        states.get().shape,
        [1, 128, 32, 0],
        "fixed mode pads to 128"
    );
    let states = Tensor::encode_t5(&model, TABLE, 0);
    let s = states.get();
    assert_eq!((s.rank, s.shape), (3, [1, 17, 32, 0]));
}

/// `ella_model_run_connector` on `model`.
fn connector_step(
    model: &Model,
    data: *const f32,
    tokens: usize,
    width: usize,
    timestep: f32,
    out: *mut *mut EllaTensor,
) -> EllaStatus {
    unsafe { ella_model_run_connector(model.ptr(), data, tokens, width, timestep, out) }
}

#[test]
fn connector_step_refuses_bad_states_widths_and_timesteps() {
    let model = load();
    let states = Tensor::encode_t5(&model, TABLE, 0);
    let s = states.get();
    let step = |data, n, w, t, out| connector_step(&model, data, n, w, t, out);
    let mut tokens = Tensor::null();
    assert_eq!(
        step(null(), 17, 32, 1.0, tokens.out()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, 17, 32, 1.0, null_mut()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, 0, 32, 1.0, tokens.out()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, usize::MAX, 2, 1.0, tokens.out()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, 16, 34, 1.0, tokens.out()),
        EllaStatus::InvalidArgument,
        "wrong width"
    );
    assert_eq!(
        step(s.data, 17, 32, f32::INFINITY, tokens.out()),
        EllaStatus::InvalidArgument
    );
}

#[test]
fn connector_step_makes_the_condition_tokens() {
    let model = load();
    let states = Tensor::encode_t5(&model, TABLE, 0);
    let mut tokens = Tensor::null();
    assert_eq!(
        connector_step(&model, states.get().data, 17, 32, 999.0, tokens.out()),
        EllaStatus::Ok
    );
    let t = tokens.get();
    assert_eq!((t.rank, t.shape), (3, [1, 8, 32, 0]));
}

#[test]
fn a_model_is_shared_by_contexts_on_several_threads() {
    let model = load();
    let images: Vec<Vec<u8>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|seed| {
                let model = &model;
                scope.spawn(move || {
                    let ctx = Context::new(model);
                    let prompt = CString::new("a red book").unwrap();
                    let r = EllaGenerateRequest {
                        seed,
                        steps: 1,
                        ..request(&prompt)
                    };
                    ctx.generate_32(&r).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_ne!(images[0], images[1], "different seeds");
}

/// A model on one thread of its own makes the same image as one on every core.
#[test]
fn n_threads_changes_where_not_what() {
    let p = paths();
    let prompt = CString::new("a red book").unwrap();
    let image = |n_threads: u32| {
        let model = Model::load(&EllaModelParams {
            n_threads,
            ..params(&p)
        });
        let ctx = Context::new(&model);
        let r = EllaGenerateRequest {
            steps: 2,
            ..request(&prompt)
        };
        ctx.generate_32(&r).unwrap()
    };
    assert_eq!(image(1), image(0));
}

#[test]
fn half_precision_model() {
    // The same request in F32 and in F16 (the official ELLA setting): the F16 image stays
    // within the tolerance the Rust parity test allows half precision (mean |Δpixel| ≤ 2).
    let p = paths();
    let prompt = CString::new("a red book").unwrap();
    let r = EllaGenerateRequest {
        steps: 1,
        ..request(&prompt)
    };
    let image = |precision: EllaPrecision| {
        let model = Model::load(&EllaModelParams {
            precision: precision as u32,
            ..params(&p)
        });
        Context::new(&model).generate_32(&r).unwrap()
    };
    let (full, half) = (image(EllaPrecision::F32), image(EllaPrecision::F16));
    let errors: Vec<u8> = full
        .iter()
        .zip(&half)
        .map(|(a, b)| a.abs_diff(*b))
        .collect();
    let mean = errors.iter().map(|&e| f64::from(e)).sum::<f64>() / errors.len() as f64;
    println!(
        "F16 vs F32 through the C ABI: mean |Δpixel| {mean:.2}, max {}",
        errors.iter().max().unwrap()
    );
    assert!(mean <= 2.0, "mean pixel error {mean:.2}");
    assert!(full.iter().any(|&v| v != full[0]), "a non-constant image");
}

const RED_BOOK: &CStr = c"a red book";
const BLURRY: &CStr = c"blurry";

/// "a red book", not "blurry", from its text.
fn red_book_not_blurry() -> EllaGenerateRequest {
    EllaGenerateRequest {
        negative_prompt: BLURRY.as_ptr(),
        ..request(RED_BOOK)
    }
}

/// The same request from `cache`.
fn from_cache(r: EllaGenerateRequest, cache: &Prompt) -> EllaGenerateRequest {
    EllaGenerateRequest {
        prompt: null(),
        negative_prompt: null(),
        prompt_cache: cache.ptr(),
        ..r
    }
}

#[test]
fn prompt_new_refuses_null_pointers() {
    let model = load();
    let mut cache = Prompt::null();
    let encode = |p, n, out| unsafe { ella_prompt_new(model.ptr(), p, n, 0, out) };
    assert_eq!(
        encode(null(), BLURRY.as_ptr(), cache.out()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        encode(RED_BOOK.as_ptr(), BLURRY.as_ptr(), null_mut()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_prompt_new(null(), RED_BOOK.as_ptr(), null(), 0, cache.out()) },
        EllaStatus::InvalidArgument
    );
}

#[test]
fn a_prompt_cache_gives_the_image_of_its_text() {
    let model = load();
    let ctx = Context::new(&model);
    let r = red_book_not_blurry();
    let direct = ctx.generate_32(&r).unwrap();
    let cache = Prompt::new(&model, RED_BOOK, Some(BLURRY));
    assert_eq!(
        ctx.generate_32(&from_cache(r, &cache)).unwrap(),
        direct,
        "same states"
    );
}

#[test]
fn freeing_t5_refuses_text_prompts_but_not_prompt_caches() {
    let model = load();
    let ctx = Context::new(&model);
    let r = red_book_not_blurry();
    let direct = ctx.generate_32(&r).unwrap();
    let cache = Prompt::new(&model, RED_BOOK, Some(BLURRY));
    assert_eq!(
        unsafe { ella_model_free_t5(null()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(unsafe { ella_model_free_t5(model.ptr()) }, EllaStatus::Ok);
    let error = ctx.generate_32(&r).unwrap_err();
    assert!(error.contains("text encoder was freed"), "{error}");
    let mut states = Tensor::null();
    assert_eq!(
        unsafe { ella_model_encode_t5(model.ptr(), RED_BOOK.as_ptr(), 0, states.out()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        ctx.generate_32(&from_cache(r, &cache)).unwrap(),
        direct,
        "the cache outlives T5"
    );
}

#[test]
fn vae_decode_modes() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let whole = ctx.generate_32(&request(&prompt)).unwrap();
    for mode in [EllaVaeDecode::Sliced, EllaVaeDecode::Tiled] {
        let r = EllaGenerateRequest {
            vae_decode: mode as u32,
            ..request(&prompt)
        };
        // 32×32 is one tile of the tiny VAE: every mode gives the same pixels.
        assert_eq!(ctx.generate_32(&r).unwrap(), whole, "{mode:?}");
    }
    let bad = EllaGenerateRequest {
        vae_decode: 99,
        ..request(&prompt)
    };
    assert!(ctx.generate_32(&bad).unwrap_err().contains("vae_decode"));
    // TAESD decoding needs a model loaded with TAESD.
    let tiny = EllaGenerateRequest {
        vae_decode: EllaVaeDecode::Tiny as u32,
        ..request(&prompt)
    };
    assert!(ctx.generate_32(&tiny).unwrap_err().contains("TAESD"));
}

/// The same request on the wgpu backend (Vulkan; lavapipe in CI) as on the CPU; a kernel
/// cache directory that cannot be made fails the GPU load with its name (the CPU ignores it).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_backend_matches_the_cpu() {
    if !wgpu_usable() {
        return;
    }
    let p = paths();
    let file = tempfile::NamedTempFile::new().unwrap();
    let unwritable = file.path().join("kernels");
    let unwritable_c = CString::new(unwritable.to_str().unwrap()).unwrap();
    for (backend, status) in [
        (EllaBackend::Wgpu, EllaStatus::Io),
        (EllaBackend::Cpu, EllaStatus::Ok),
    ] {
        let params = EllaModelParams {
            backend: backend as u32,
            kernel_cache_path: unwritable_c.as_ptr(),
            ..params(&p)
        };
        assert_eq!(load_status(&params), status);
        if status != EllaStatus::Ok {
            assert!(
                last_error().contains(unwritable.to_str().unwrap()),
                "{}",
                last_error()
            );
        }
    }
    let prompt = CString::new("a red book").unwrap();
    let mut images = Vec::new();
    for backend in [EllaBackend::Cpu, EllaBackend::Wgpu] {
        let model = Model::load(&EllaModelParams {
            backend: backend as u32,
            ..params(&p)
        });
        let ctx = Context::new(&model);
        images.push(ctx.generate_32(&request(&prompt)).unwrap());
    }
    let max_diff = images[0]
        .iter()
        .zip(&images[1])
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(max_diff <= 1, "wgpu and CPU pixels differ by {max_diff}");
}

/// One 32×32 image of "the red hat" per conditioning from a new context on `model`.
fn images_by_conditioning(
    model: &Model,
    conditionings: &[EllaConditioning],
) -> Vec<Result<Vec<u8>, String>> {
    let ctx = Context::new(model);
    let prompt = CString::new("the red hat").unwrap();
    conditionings
        .iter()
        .map(|&conditioning| {
            let r = EllaGenerateRequest {
                conditioning: conditioning as u32,
                ..request(&prompt)
            };
            ctx.generate_32(&r)
        })
        .collect()
}

/// The tiny models (from the folder) with CLIP.
fn with_clip(p: &Paths) -> EllaModelParams {
    EllaModelParams {
        load_clip: 1,
        ..params(p)
    }
}

/// CLIP only: no T5, no connector.
fn clip_only(p: &Paths) -> EllaModelParams {
    EllaModelParams {
        t5_path: null(),
        ella_path: null(),
        ..with_clip(p)
    }
}

const CONDITIONINGS: [EllaConditioning; 3] = [
    EllaConditioning::Ella,
    EllaConditioning::EllaClip,
    EllaConditioning::Clip,
];

/// The folder models' images for [`CONDITIONINGS`].
fn folder_images() -> Vec<Vec<u8>> {
    let folder = Model::load(&with_clip(&paths()));
    images_by_conditioning(&folder, &CONDITIONINGS)
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn ella_clip_and_concat_conditioning_give_three_images() {
    let expected = folder_images();
    assert!(
        expected[0] != expected[1] && expected[1] != expected[2],
        "each conditioning gives another image"
    );
}

#[test]
fn an_unknown_conditioning_is_refused() {
    let folder = Model::load(&with_clip(&paths()));
    let ctx = Context::new(&folder);
    let prompt = CString::new("x").unwrap();
    let r = EllaGenerateRequest {
        conditioning: 3,
        ..request(&prompt)
    };
    assert!(ctx.generate_32(&r).unwrap_err().contains("conditioning"));
}

#[test]
fn a_single_file_checkpoint_makes_the_folders_images() {
    let expected = folder_images();
    // The same models from the single-file checkpoint (whose VAE the LDM VAE file replaces).
    let p = paths();
    let (single, vae) = (
        fixture("sd-single-file.safetensors"),
        fixture("vae-ldm.safetensors"),
    );
    let model = Model::load(&EllaModelParams {
        sd_path: single.as_ptr(),
        sd_config_path: p.sd.as_ptr(),
        vae_path: vae.as_ptr(),
        ..with_clip(&p)
    });
    let images = images_by_conditioning(&model, &CONDITIONINGS);
    for (image, expected) in images.into_iter().zip(&expected) {
        assert_eq!(&image.unwrap(), expected);
    }
}

/// CLIP only: no T5, no connector; ELLA requests are refused.
#[test]
fn a_clip_only_model_refuses_ella_conditioning() {
    let expected = folder_images();
    let clip_only = Model::load(&clip_only(&paths()));
    let images = images_by_conditioning(&clip_only, &CONDITIONINGS);
    assert!(images[0].as_ref().unwrap_err().contains("T5"));
    assert!(images[1].is_err());
    assert_eq!(images[2].as_ref().unwrap(), &expected[2]);
}

/// CLIP only: prompt caches work.
#[test]
fn a_clip_only_model_generates_from_a_prompt_cache() {
    let expected = folder_images();
    let clip_only = Model::load(&clip_only(&paths()));
    let the_red_hat = CString::new("the red hat").unwrap();
    let cache = Prompt::new(&clip_only, &the_red_hat, None);
    let ctx = Context::new(&clip_only);
    let cached = EllaGenerateRequest {
        prompt: null(),
        prompt_cache: cache.ptr(),
        conditioning: EllaConditioning::Clip as u32,
        ..request(&the_red_hat)
    };
    assert_eq!(&ctx.generate_32(&cached).unwrap(), &expected[2]);
}

#[test]
fn a_file_without_a_unet_is_not_a_checkpoint() {
    let p = paths();
    let not_a_checkpoint = fixture("ella/ella.safetensors");
    let status = load_status(&EllaModelParams {
        sd_path: not_a_checkpoint.as_ptr(),
        ..with_clip(&p)
    });
    assert_eq!(status, EllaStatus::Unsupported);
    assert!(
        last_error().contains("model.diffusion_model"),
        "{}",
        last_error()
    );
}

#[test]
fn load_clip_is_0_or_1_and_some_text_encoder_is_loaded() {
    let p = paths();
    let status = load_status(&EllaModelParams {
        load_clip: 2,
        ..with_clip(&p)
    });
    assert_eq!(status, EllaStatus::InvalidArgument);
    let status = load_status(&EllaModelParams {
        load_clip: 0,
        ..clip_only(&p)
    });
    assert_eq!(status, EllaStatus::InvalidArgument);
}

#[test]
fn image_to_image() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let text_to_image = ctx.generate_32(&request(&prompt)).unwrap();
    let other = CString::new("two cats on a sofa").unwrap();
    let img2img = EllaGenerateRequest {
        init_image: text_to_image.as_ptr(),
        init_image_size: text_to_image.len(),
        strength: 0.5,
        steps: 4,
        ..request(&other)
    };
    let first = ctx.generate_32(&img2img).unwrap();
    assert_eq!(ctx.generate_32(&img2img).unwrap(), first, "reproducible");
    assert_ne!(first, text_to_image);
    // (The numbers are the Rust pipeline's, parity-tested against diffusers' img2img.)
    let all_steps = EllaGenerateRequest {
        strength: 1.0,
        ..img2img
    };
    assert_ne!(ctx.generate_32(&all_steps).unwrap(), first);
    for strength in [0.0, 1.5, f32::NAN] {
        let bad = EllaGenerateRequest {
            strength,
            ..img2img
        };
        assert!(ctx.generate_32(&bad).unwrap_err().contains("strength"));
    }
    let huge = EllaGenerateRequest {
        width: 1 << 20,
        ..img2img
    };
    assert_eq!(ctx.status_of(&huge), EllaStatus::InvalidArgument);
    assert!(last_error().contains("init_image"), "{}", last_error());
}

#[test]
fn loras_change_the_image_until_they_are_set_to_none() {
    let model = Model::load(&with_clip(&paths()));
    let conditionings = [EllaConditioning::EllaClip];
    let base = images_by_conditioning(&model, &conditionings)
        .remove(0)
        .unwrap();
    let (kohya, peft) = (
        fixture("lora/kohya.safetensors"),
        fixture("lora/peft.safetensors"),
    );
    let paths = [kohya.as_ptr(), peft.as_ptr()];
    let scales = [0.7f32, 1.3];
    let set = |count: usize| unsafe {
        ella_model_set_loras(model.ptr(), paths.as_ptr(), scales.as_ptr(), count)
    };
    assert_eq!(set(2), EllaStatus::Ok, "{}", last_error());
    let both = images_by_conditioning(&model, &conditionings)
        .remove(0)
        .unwrap();
    assert_ne!(both, base);
    assert_eq!(set(1), EllaStatus::Ok);
    let kohya_only = images_by_conditioning(&model, &conditionings)
        .remove(0)
        .unwrap();
    assert!(kohya_only != both && kohya_only != base);
    assert_eq!(set(0), EllaStatus::Ok);
    assert_eq!(
        images_by_conditioning(&model, &conditionings)
            .remove(0)
            .unwrap(),
        base,
        "no LoRA: the original weights"
    );
}

/// Every LoRA kind from C (kohya on LDM names, LoHa, LoKr, LoCon with a Tucker core, PEFT with
/// `alpha_pattern`) changes the image; an (IA)³ file is refused by name and leaves the LoRAs
/// set before in place.
#[test]
fn every_lora_kind_from_c() {
    let model = Model::load(&with_clip(&paths()));
    let conditionings = [EllaConditioning::EllaClip];
    let image = || {
        images_by_conditioning(&model, &conditionings)
            .remove(0)
            .unwrap()
    };
    let base = image();
    let set = |name: &str| {
        let file = fixture(&format!("lora/{name}.safetensors"));
        unsafe { ella_model_set_loras(model.ptr(), &file.as_ptr(), &1.0f32, 1) }
    };
    let mut last = base.clone();
    for kind in [
        "kohya-ldm",
        "loha",
        "lokr",
        "locon-tucker",
        "peft-alpha-pattern",
    ] {
        assert_eq!(set(kind), EllaStatus::Ok, "{kind}: {}", last_error());
        last = image();
        assert_ne!(last, base, "{kind}");
    }
    assert_eq!(set("unsupported-ia3"), EllaStatus::InvalidModel);
    assert!(last_error().contains("(IA)³"), "{}", last_error());
    assert_eq!(image(), last, "the PEFT LoRA still applied");
}

#[test]
fn set_loras_refuses_null_pointers_missing_files_and_other_models() {
    let model = Model::load(&with_clip(&paths()));
    let (kohya, peft) = (
        fixture("lora/kohya.safetensors"),
        fixture("lora/peft.safetensors"),
    );
    let paths = [kohya.as_ptr(), peft.as_ptr()];
    let scales = [0.7f32, 1.3];
    assert_eq!(
        unsafe { ella_model_set_loras(model.ptr(), null(), scales.as_ptr(), 1) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_model_set_loras(null(), paths.as_ptr(), scales.as_ptr(), 1) },
        EllaStatus::InvalidArgument
    );
    let missing = fixture("lora/missing.safetensors");
    assert_eq!(
        unsafe { ella_model_set_loras(model.ptr(), &missing.as_ptr(), scales.as_ptr(), 1) },
        EllaStatus::Io
    );
    // A file of another model: no LoRA of this one.
    let connector = fixture("ella/ella.safetensors");
    assert_eq!(
        unsafe { ella_model_set_loras(model.ptr(), &connector.as_ptr(), scales.as_ptr(), 1) },
        EllaStatus::InvalidModel
    );
    assert!(
        last_error().contains("matches no weight"),
        "{}",
        last_error()
    );
}

/// The tiny models with the tiny ControlNet.
fn with_controlnet() -> Model {
    let p = paths();
    let controlnet = fixture("controlnet");
    Model::load(&EllaModelParams {
        controlnet_path: controlnet.as_ptr(),
        ..params(&p)
    })
}

/// A control image: a vertical line at x = 8.
fn edges() -> Vec<u8> {
    (0..32 * 32 * 3)
        .map(|i| if (i / 3) % 32 == 8 { 255 } else { 0 })
        .collect()
}

/// "a red book" guided by `edges` at scale 0.8.
fn controlled(edges: &[u8]) -> EllaGenerateRequest {
    EllaGenerateRequest {
        control_image: edges.as_ptr(),
        control_image_size: edges.len(),
        control_scale: 0.8,
        ..request(RED_BOOK)
    }
}

#[test]
fn a_controlnet_guides_the_steps_in_its_range() {
    let model = with_controlnet();
    let ctx = Context::new(&model);
    let plain = ctx.generate_32(&request(RED_BOOK)).unwrap();
    let edges = edges();
    let guided = ctx.generate_32(&controlled(&edges)).unwrap();
    assert_ne!(guided, plain);
    let never = EllaGenerateRequest {
        control_start: 1.0,
        ..controlled(&edges)
    };
    assert_eq!(ctx.generate_32(&never).unwrap(), plain, "acting in no step");
}

#[test]
fn a_reversed_control_range_is_refused() {
    let model = with_controlnet();
    let ctx = Context::new(&model);
    let edges = edges();
    let reversed = EllaGenerateRequest {
        control_start: 0.9,
        control_end: 0.1,
        ..controlled(&edges)
    };
    assert!(ctx.generate_32(&reversed).unwrap_err().contains("start"));
}

/// Without a ControlNet, a control image is refused.
#[test]
fn a_control_image_without_a_controlnet_is_refused() {
    let model = load();
    let ctx = Context::new(&model);
    let edges = edges();
    assert!(
        ctx.generate_32(&controlled(&edges))
            .unwrap_err()
            .contains("ControlNet")
    );
}

/// Two ControlNets (the first an original-layout single file, the second a diffusers folder)
/// guide one request together, each from its own image; the second alone or both differ from
/// the first alone; a control naming a ControlNet the model lacks, a NULL or short control
/// array, and extra paths without the first are refused.
#[test]
fn several_controlnets_guide_one_request() {
    let p = paths();
    let first = fixture("controlnet-ldm.safetensors");
    let second = fixture("controlnet-b");
    let extra = [second.as_ptr()];
    let params = EllaModelParams {
        controlnet_path: first.as_ptr(),
        extra_controlnet_paths: extra.as_ptr(),
        n_extra_controlnet_paths: 1,
        ..params(&p)
    };
    let model = Model::load(&params);
    let ctx = Context::new(&model);
    let edges = edges();
    let dots: Vec<u8> = (0..32 * 32 * 3).map(|i| ((i * 37) % 256) as u8).collect();
    let control = |controlnet: u32, image: &[u8]| EllaControl {
        controlnet,
        image: image.as_ptr(),
        image_size: image.len(),
        scale: 0.7,
        start: 0.0,
        end: 1.0,
    };
    let first_alone = ctx.generate_32(&controlled(&edges)).unwrap();
    let second_only = [control(1, &dots)];
    let second_alone = ctx
        .generate_32(&EllaGenerateRequest {
            controls: second_only.as_ptr(),
            n_controls: 1,
            ..request(RED_BOOK)
        })
        .unwrap();
    let both = ctx
        .generate_32(&EllaGenerateRequest {
            controls: second_only.as_ptr(),
            n_controls: 1,
            ..controlled(&edges)
        })
        .unwrap();
    assert_ne!(both, first_alone);
    assert_ne!(both, second_alone);
    assert_ne!(first_alone, second_alone);
    let third = [control(2, &dots)];
    let err = ctx
        .generate_32(&EllaGenerateRequest {
            controls: third.as_ptr(),
            n_controls: 1,
            ..request(RED_BOOK)
        })
        .unwrap_err();
    assert!(err.contains("ControlNet 2"), "{err}");
    let err = ctx
        .generate_32(&EllaGenerateRequest {
            controls: null(),
            n_controls: 1,
            ..request(RED_BOOK)
        })
        .unwrap_err();
    assert!(err.contains("request.controls is NULL"), "{err}");
    let short = [EllaControl {
        image_size: 10,
        ..control(1, &dots)
    }];
    let err = ctx
        .generate_32(&EllaGenerateRequest {
            controls: short.as_ptr(),
            n_controls: 1,
            ..request(RED_BOOK)
        })
        .unwrap_err();
    assert!(err.contains("controls[0].image_size"), "{err}");
    let without_first = EllaModelParams {
        controlnet_path: null(),
        ..params
    };
    assert_eq!(load_status(&without_first), EllaStatus::InvalidArgument);
    assert!(
        last_error().contains("needs params.controlnet_path"),
        "{}",
        last_error()
    );
}

/// CLIP's own prompt and CLIP skip change the image of a CLIP-conditioned request; a skip of
/// more layers than CLIP has, and either with a prompt cache, are refused.
#[test]
fn clip_prompt_and_clip_skip_from_c() {
    let p = paths();
    let model = Model::load(&clip_only(&p));
    let ctx = Context::new(&model);
    let clip = |r: EllaGenerateRequest| EllaGenerateRequest {
        conditioning: EllaConditioning::Clip as u32,
        ..r
    };
    let plain = ctx.generate_32(&clip(request(RED_BOOK))).unwrap();
    let own_prompt = ctx
        .generate_32(&clip(EllaGenerateRequest {
            clip_prompt: c"red book, table, sks".as_ptr(),
            ..request(RED_BOOK)
        }))
        .unwrap();
    assert_ne!(own_prompt, plain);
    let skipped = ctx
        .generate_32(&clip(EllaGenerateRequest {
            clip_skip: 1,
            ..request(RED_BOOK)
        }))
        .unwrap();
    assert_ne!(skipped, plain);
    let err = ctx
        .generate_32(&clip(EllaGenerateRequest {
            clip_skip: 3,
            ..request(RED_BOOK)
        }))
        .unwrap_err();
    assert!(err.contains("2 layers"), "{err}");
    let cache = Prompt::new(&model, RED_BOOK, None);
    let err = ctx
        .generate_32(&clip(EllaGenerateRequest {
            prompt_cache: cache.ptr(),
            clip_skip: 1,
            ..request(RED_BOOK)
        }))
        .unwrap_err();
    assert!(err.contains("prompt cache"), "{err}");
}

/// The weight syntax from C: by default CLIP applies `(red:1.4)` and T5 reads `red` (so an
/// ELLA image equals the plain prompt's); `ELLA_PROMPT_SYNTAX_LITERAL` reads the brackets as
/// text. An unknown value, and a syntax with a prompt cache, are refused.
#[test]
fn prompt_syntax_from_c() {
    let p = paths();
    let weighted = c"a (red:1.4) book";
    let model = Model::load(&clip_only(&p));
    let ctx = Context::new(&model);
    let clip = |prompt: &CStr, syntax: EllaPromptSyntax| EllaGenerateRequest {
        conditioning: EllaConditioning::Clip as u32,
        clip_syntax: syntax as u32,
        ..request(prompt)
    };
    let a1111 = ctx
        .generate_32(&clip(weighted, EllaPromptSyntax::A1111))
        .unwrap();
    let literal = ctx
        .generate_32(&clip(weighted, EllaPromptSyntax::Literal))
        .unwrap();
    let plain = ctx
        .generate_32(&clip(c"a red book", EllaPromptSyntax::A1111))
        .unwrap();
    assert_ne!(a1111, literal);
    assert_ne!(a1111, plain);
    let err = ctx
        .generate_32(&EllaGenerateRequest {
            clip_syntax: 7,
            ..clip(weighted, EllaPromptSyntax::A1111)
        })
        .unwrap_err();
    assert!(err.contains("request.clip_syntax 7"), "{err}");

    let model = Model::load(&params(&p));
    let ctx = Context::new(&model);
    let ella = |prompt: &CStr, syntax: EllaPromptSyntax| EllaGenerateRequest {
        t5_syntax: syntax as u32,
        ..request(prompt)
    };
    let stripped = ctx
        .generate_32(&ella(weighted, EllaPromptSyntax::A1111))
        .unwrap();
    let plain = ctx
        .generate_32(&ella(c"a red book", EllaPromptSyntax::A1111))
        .unwrap();
    assert_eq!(stripped, plain, "T5 reads `a red book`");
    let literal = ctx
        .generate_32(&ella(weighted, EllaPromptSyntax::Literal))
        .unwrap();
    assert_ne!(literal, plain);
    let cache = Prompt::new(&model, weighted, None);
    let err = ctx
        .generate_32(&EllaGenerateRequest {
            prompt_cache: cache.ptr(),
            ..ella(weighted, EllaPromptSyntax::Literal)
        })
        .unwrap_err();
    assert!(err.contains("prompt cache"), "{err}");
}

/// A textual-inversion embedding from C: its name in the negative prompt changes the image;
/// a missing file fails the load; NULL paths with a count are refused.
#[test]
fn embeddings_from_c() {
    let p = paths();
    let easyneg = fixture("embeddings/easyneg.safetensors");
    let files = [easyneg.as_ptr()];
    let with_embedding = EllaModelParams {
        embedding_paths: files.as_ptr(),
        n_embedding_paths: 1,
        ..clip_only(&p)
    };
    let clip = |negative: &CStr| EllaGenerateRequest {
        conditioning: EllaConditioning::Clip as u32,
        negative_prompt: negative.as_ptr(),
        ..request(RED_BOOK)
    };
    let plain = Context::new(&Model::load(&clip_only(&p)))
        .generate_32(&clip(c"easyneg"))
        .unwrap();
    let model = Model::load(&with_embedding);
    let ctx = Context::new(&model);
    assert_ne!(ctx.generate_32(&clip(c"easyneg")).unwrap(), plain);
    assert_eq!(
        ctx.generate_32(&clip(c"bad hat")).unwrap(),
        Context::new(&Model::load(&clip_only(&p)))
            .generate_32(&clip(c"bad hat"))
            .unwrap(),
        "unused, the embedding changes nothing"
    );
    let missing = fixture("embeddings/none.safetensors");
    let files = [missing.as_ptr()];
    let params = EllaModelParams {
        embedding_paths: files.as_ptr(),
        ..with_embedding
    };
    assert_eq!(load_status(&params), EllaStatus::Io);
    let params = EllaModelParams {
        embedding_paths: null(),
        ..with_embedding
    };
    assert_eq!(load_status(&params), EllaStatus::InvalidArgument);
    assert!(
        last_error().contains("embedding_paths is NULL"),
        "{}",
        last_error()
    );
}

/// CLIP and the tiny SUR adapter, no T5.
fn with_sur_adapter() -> Model {
    let p = paths();
    let sur = fixture("sur/adapter.safetensors");
    Model::load(&EllaModelParams {
        sur_adapter_path: sur.as_ptr(),
        ..clip_only(&p)
    })
}

/// "the red hat" with SUR conditioning at weight 0.5.
fn sur_request(prompt: &CStr) -> EllaGenerateRequest {
    EllaGenerateRequest {
        conditioning: EllaConditioning::ClipSur as u32,
        sur_weight: 0.5,
        ..request(prompt)
    }
}

#[test]
fn sur_conditioning_changes_clips_image_by_mode_and_weight() {
    let model = with_sur_adapter();
    let ctx = Context::new(&model);
    let prompt = CString::new("the red hat").unwrap();
    let clip = EllaGenerateRequest {
        conditioning: EllaConditioning::Clip as u32,
        ..request(&prompt)
    };
    let sur = sur_request(&prompt);
    let plain = ctx.generate_32(&clip).unwrap();
    let faithful = ctx.generate_32(&sur).unwrap();
    let per_token = ctx
        .generate_32(&EllaGenerateRequest {
            sur_mode: EllaSurMode::PerToken as u32,
            ..sur
        })
        .unwrap();
    assert!(faithful != plain && per_token != faithful);
    let no_weight = EllaGenerateRequest {
        sur_weight: 0.0,
        ..sur
    };
    assert_eq!(ctx.generate_32(&no_weight).unwrap(), plain, "w = 0 is CLIP");
}

#[test]
fn sur_conditioning_refuses_bad_weights_and_modes() {
    let model = with_sur_adapter();
    let ctx = Context::new(&model);
    let prompt = CString::new("the red hat").unwrap();
    let sur = sur_request(&prompt);
    for bad in [
        EllaGenerateRequest {
            sur_weight: 2.0,
            ..sur
        },
        EllaGenerateRequest { sur_mode: 2, ..sur },
    ] {
        assert!(
            ctx.generate_32(&bad)
                .unwrap_err()
                .to_lowercase()
                .contains("sur")
        );
    }
}

/// What a preview callback saw: `(step, total, width, height, channels, distinct pixels)`.
unsafe extern "C" fn record_preview(
    image: *const EllaImage,
    step: u32,
    total: u32,
    user_data: *mut std::ffi::c_void,
) {
    let seen = unsafe { &mut *(user_data as *mut Vec<(u32, u32, u32, u32, u32, bool)>) };
    let image = unsafe { &*image };
    let len = (image.width * image.height * image.channels) as usize;
    let pixels = unsafe { std::slice::from_raw_parts(image.pixels, len) };
    let varied = pixels.chunks(3).any(|p| p != &pixels[..3]);
    seen.push((
        step,
        total,
        image.width,
        image.height,
        image.channels,
        varied,
    ));
}

#[test]
fn previews_reach_the_callback_every_n_steps() {
    let model = load();
    let mut seen: Vec<(u32, u32, u32, u32, u32, bool)> = Vec::new();
    let params = EllaContextParams {
        preview_callback: Some(record_preview),
        preview_user_data: &mut seen as *mut _ as *mut std::ffi::c_void,
        preview_every: 2,
        preview_method: EllaPreviewMethod::Linear as u32,
        ..ella_context_params_default()
    };
    let ctx = Context::with_params(&model, &params);
    let prompt = CString::new("a red book").unwrap();
    let request = EllaGenerateRequest {
        steps: 5,
        ..request(&prompt)
    };
    ctx.generate(&request).unwrap();
    assert_eq!(seen, vec![(2, 5, 16, 16, 3, true), (4, 5, 16, 16, 3, true)]);
    // TAESD previews without TAESD, and an unknown method, are refused.
    let tiny = EllaContextParams {
        preview_method: EllaPreviewMethod::Tiny as u32,
        ..params
    };
    let ctx = Context::with_params(&model, &tiny);
    assert_eq!(ctx.status_of(&request), EllaStatus::InvalidArgument);
    assert!(last_error().contains("TAESD"), "{}", last_error());
    let unknown = EllaContextParams {
        preview_method: 7,
        ..params
    };
    assert!(Context::try_with_params(&model, &unknown).is_err());
}

#[test]
fn inpainting_takes_an_8_bit_mask() {
    let model = load();
    let ctx = Context::new(&model);
    let prompt = CString::new("a red book").unwrap();
    let image = vec![90u8; 32 * 32 * 3];
    // The left half kept, the right half repainted.
    let mask: Vec<u8> = (0..32 * 32)
        .map(|p| if p % 32 < 16 { 0 } else { 255 })
        .collect();
    let request = EllaGenerateRequest {
        init_image: image.as_ptr(),
        init_image_size: image.len(),
        strength: 1.0,
        mask: mask.as_ptr(),
        mask_size: mask.len(),
        ..request(&prompt)
    };
    let inpainted = ctx.generate_32(&request).unwrap();
    let unmasked = ctx
        .generate_32(&EllaGenerateRequest {
            mask: null(),
            mask_size: 0,
            ..request
        })
        .unwrap();
    assert_ne!(inpainted, unmasked);
    for bad in [
        EllaGenerateRequest {
            mask_size: 32 * 32 * 3,
            ..request
        },
        EllaGenerateRequest {
            init_image: null(),
            init_image_size: 0,
            ..request
        },
    ] {
        assert_eq!(ctx.status_of(&bad), EllaStatus::InvalidArgument);
        assert!(last_error().contains("mask"), "{}", last_error());
    }
}
