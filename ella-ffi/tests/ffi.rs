//! Every C ABI function's success and error paths, called as a C host would.

use std::ffi::{CString, c_void};
use std::ptr::{null, null_mut};

use ella::*;

mod common;
use common::*;

#[test]
fn model_load_error_paths() {
    let p = paths();
    let mut model = null_mut();
    let status = |params: &EllaModelParams, out: *mut *mut EllaModel| unsafe {
        ella_model_load(params, out)
    };
    assert_eq!(
        unsafe { ella_model_load(null(), &mut model) },
        EllaStatus::InvalidArgument
    );
    assert!(last_error().contains("params is NULL"));
    assert_eq!(status(&params(&p), null_mut()), EllaStatus::InvalidArgument);
    for size in [0u32, 4, 1 << 20] {
        let bad = EllaModelParams {
            struct_size: size,
            ..params(&p)
        };
        assert_eq!(
            status(&bad, &mut model),
            EllaStatus::InvalidArgument,
            "struct_size {size}"
        );
    }
    let no_t5 = EllaModelParams {
        t5_path: null(),
        ..params(&p)
    };
    assert_eq!(status(&no_t5, &mut model), EllaStatus::InvalidArgument);
    assert!(last_error().contains("t5_path"));
    let not_utf8 = CString::new(vec![0xff, 0xfe, b'x']).unwrap();
    let bad = EllaModelParams {
        sd_path: not_utf8.as_ptr(),
        ..params(&p)
    };
    assert_eq!(status(&bad, &mut model), EllaStatus::InvalidArgument);
    assert!(last_error().contains("UTF-8"));
    let missing = CString::new("/nonexistent/ella.safetensors").unwrap();
    let bad = EllaModelParams {
        ella_path: missing.as_ptr(),
        ..params(&p)
    };
    assert_eq!(status(&bad, &mut model), EllaStatus::Io);
    assert!(
        last_error().contains("/nonexistent/ella.safetensors"),
        "{}",
        last_error()
    );
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
    assert_eq!(status(&bad, &mut model), EllaStatus::InvalidModel);
    // The official connector's sizes on the tiny file: a mismatch names the tensor.
    let bad = EllaModelParams {
        ella_config_path: null(),
        ..params(&p)
    };
    assert_eq!(status(&bad, &mut model), EllaStatus::InvalidModel);
    assert!(last_error().contains("shape"), "{}", last_error());
    let bad = EllaModelParams {
        backend: 7,
        ..params(&p)
    };
    assert_eq!(status(&bad, &mut model), EllaStatus::InvalidArgument);
    #[cfg(not(feature = "cuda"))]
    {
        let bad = EllaModelParams {
            backend: EllaBackend::Cuda as u32,
            ..params(&p)
        };
        assert_eq!(status(&bad, &mut model), EllaStatus::Unsupported);
        assert!(last_error().contains("`cuda`"), "{}", last_error());
    }
    let bad = EllaModelParams {
        t5_precision: 9,
        ..params(&p)
    };
    assert_eq!(status(&bad, &mut model), EllaStatus::InvalidArgument);
    assert!(last_error().contains("t5_precision"), "{}", last_error());
    let bad = EllaModelParams {
        n_threads: 1 << 20,
        ..params(&p)
    };
    assert_eq!(status(&bad, &mut model), EllaStatus::InvalidArgument);
    assert!(last_error().contains("threads"), "{}", last_error());
    assert!(model.is_null(), "no handle on failure");
    unsafe { ella_model_free(null_mut()) };
}

#[test]
fn generate_error_paths_and_success() {
    let model = load();
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(null(), null(), &mut ctx) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_context_new(model, null(), null_mut()) },
        EllaStatus::InvalidArgument
    );
    let bad_params = EllaContextParams {
        struct_size: 2,
        ..ella_context_params_default()
    };
    assert_eq!(
        unsafe { ella_context_new(model, &bad_params, &mut ctx) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );

    let prompt = CString::new("a red book").unwrap();
    let mut image = null_mut();
    let generate = |r: &EllaGenerateRequest, out: *mut *mut EllaImage| unsafe {
        ella_context_generate(ctx, r, out)
    };
    assert_eq!(
        unsafe { ella_context_generate(null_mut(), &request(&prompt), &mut image) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_context_generate(ctx, null(), &mut image) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        generate(&request(&prompt), null_mut()),
        EllaStatus::InvalidArgument
    );
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
            generate(&case, &mut image),
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
    assert_eq!(generate(&bad, &mut image), EllaStatus::InvalidArgument);
    assert!(image.is_null());

    assert_eq!(
        generate(&request(&prompt), &mut image),
        EllaStatus::Ok,
        "{}",
        last_error()
    );
    let img = unsafe { &*image };
    assert_eq!((img.width, img.height, img.channels), (32, 32, 3));
    let rgb = unsafe { std::slice::from_raw_parts(img.pixels, 32 * 32 * 3) }.to_vec();
    unsafe { ella_image_free(image) };

    // A caller built against an older header: its request ends before `pixel_format`.
    let old = EllaGenerateRequest {
        struct_size: std::mem::offset_of!(EllaGenerateRequest, pixel_format) as u32,
        pixel_format: 1,
        ..request(&prompt)
    };
    let mut buffer = vec![0u8; 32 * 32 * 3];
    assert_eq!(
        unsafe { ella_context_generate_into(ctx, &old, buffer.as_mut_ptr(), buffer.len(), 96) },
        EllaStatus::Ok
    );
    assert_eq!(
        buffer, rgb,
        "the missing field took its default (RGB8), and the seed gives the same image"
    );

    // The caller's buffer: RGBA with a padded pitch; too small is refused before any work.
    let rgba = EllaGenerateRequest {
        pixel_format: 1,
        ..request(&prompt)
    };
    let mut buffer = vec![0u8; 136 * 32];
    let into = |b: *mut u8, size: usize, pitch: usize| unsafe {
        ella_context_generate_into(ctx, &rgba, b, size, pitch)
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
    assert_eq!(into(buffer.as_mut_ptr(), buffer.len(), 136), EllaStatus::Ok);
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
    unsafe {
        ella_context_free(ctx);
        ella_model_free(model);
        ella_context_free(null_mut());
        ella_image_free(null_mut());
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
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, &params, &mut ctx) },
        EllaStatus::Ok
    );
    state.ctx = ctx;
    let prompt = CString::new("a red book").unwrap();
    let long = EllaGenerateRequest {
        steps: 6,
        ..request(&prompt)
    };
    let mut image = null_mut();
    assert_eq!(
        unsafe { ella_context_generate(ctx, &long, &mut image) },
        EllaStatus::Cancelled
    );
    assert_eq!(
        state.calls,
        vec![(1, 6), (2, 6)],
        "stopped after the step that cancelled"
    );
    assert!(image.is_null());
    // A cancel while idle does not affect the next run; the context works again.
    unsafe { ella_context_cancel(ctx) };
    state.calls.clear();
    let again = EllaGenerateRequest {
        steps: 3,
        ..request(&prompt)
    };
    assert_eq!(
        unsafe { ella_context_generate(ctx, &again, &mut image) },
        EllaStatus::Cancelled,
        "step 2 cancels again"
    );
    assert_eq!(state.calls, vec![(1, 3), (2, 3)]);
    let one = EllaGenerateRequest {
        steps: 1,
        ..request(&prompt)
    };
    assert_eq!(
        unsafe { ella_context_generate(ctx, &one, &mut image) },
        EllaStatus::Ok
    );
    unsafe {
        ella_image_free(image);
        ella_context_cancel(null());
        ella_context_free(ctx);
        ella_model_free(model);
    }
}

#[test]
fn encode_and_connector_step() {
    let model = load();
    let prompt = CString::new("a red book on a wooden table").unwrap();
    let mut states = null_mut();
    assert_eq!(
        unsafe { ella_model_encode_t5(null(), prompt.as_ptr(), 0, &mut states) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_model_encode_t5(model, null(), 0, &mut states) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_model_encode_t5(model, prompt.as_ptr(), 0, null_mut()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_model_encode_t5(model, prompt.as_ptr(), 128, &mut states) },
        EllaStatus::Ok
    );
    assert_eq!(
        unsafe { (*states).shape },
        [1, 128, 32, 0],
        "fixed mode pads to 128"
    );
    unsafe { ella_tensor_free(states) };
    assert_eq!(
        unsafe { ella_model_encode_t5(model, prompt.as_ptr(), 0, &mut states) },
        EllaStatus::Ok
    );
    let s = unsafe { &*states };
    assert_eq!((s.rank, s.shape), (3, [1, 17, 32, 0]));
    let mut tokens = null_mut();
    let step = |data: *const f32, n: usize, w: usize, t: f32, out: *mut *mut EllaTensor| unsafe {
        ella_model_run_connector(model, data, n, w, t, out)
    };
    assert_eq!(
        step(null(), 17, 32, 1.0, &mut tokens),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, 17, 32, 1.0, null_mut()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, 0, 32, 1.0, &mut tokens),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, usize::MAX, 2, 1.0, &mut tokens),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        step(s.data, 16, 34, 1.0, &mut tokens),
        EllaStatus::InvalidArgument,
        "wrong width"
    );
    assert_eq!(
        step(s.data, 17, 32, f32::INFINITY, &mut tokens),
        EllaStatus::InvalidArgument
    );
    assert_eq!(step(s.data, 17, 32, 999.0, &mut tokens), EllaStatus::Ok);
    assert_eq!(
        unsafe { ((*tokens).rank, (*tokens).shape) },
        (3, [1, 8, 32, 0])
    );
    unsafe {
        ella_tensor_free(tokens);
        ella_tensor_free(states);
        ella_tensor_free(null_mut());
        ella_model_free(model);
    }
}

#[test]
fn a_model_is_shared_by_contexts_on_several_threads() {
    let model = load() as usize;
    let handles: Vec<_> = (0..2)
        .map(|seed| {
            std::thread::spawn(move || {
                let model = model as *const EllaModel;
                let mut ctx = null_mut();
                assert_eq!(
                    unsafe { ella_context_new(model, null(), &mut ctx) },
                    EllaStatus::Ok
                );
                let prompt = CString::new("a red book").unwrap();
                let r = EllaGenerateRequest {
                    seed,
                    steps: 1,
                    ..request(&prompt)
                };
                let mut buffer = vec![0u8; 32 * 32 * 3];
                let status = unsafe {
                    ella_context_generate_into(ctx, &r, buffer.as_mut_ptr(), buffer.len(), 96)
                };
                unsafe { ella_context_free(ctx) };
                assert_eq!(status, EllaStatus::Ok);
                buffer
            })
        })
        .collect();
    let images: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_ne!(images[0], images[1], "different seeds");
    unsafe { ella_model_free(model as *mut EllaModel) };
}

/// A model on one thread of its own makes the same image as one on every core.
#[test]
fn n_threads_changes_where_not_what() {
    let p = paths();
    let prompt = CString::new("a red book").unwrap();
    let image = |n_threads: u32| {
        let model = load_with(&EllaModelParams {
            n_threads,
            ..params(&p)
        });
        let mut ctx = null_mut();
        assert_eq!(
            unsafe { ella_context_new(model, null(), &mut ctx) },
            EllaStatus::Ok
        );
        let mut buffer = vec![0u8; 32 * 32 * 3];
        let r = EllaGenerateRequest {
            steps: 2,
            ..request(&prompt)
        };
        let status =
            unsafe { ella_context_generate_into(ctx, &r, buffer.as_mut_ptr(), buffer.len(), 96) };
        assert_eq!(status, EllaStatus::Ok, "{}", last_error());
        unsafe {
            ella_context_free(ctx);
            ella_model_free(model);
        }
        buffer
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
        let mut model = null_mut();
        let params = EllaModelParams {
            precision: precision as u32,
            ..params(&p)
        };
        assert_eq!(
            unsafe { ella_model_load(&params, &mut model) },
            EllaStatus::Ok,
            "{}",
            last_error()
        );
        let mut ctx = null_mut();
        assert_eq!(
            unsafe { ella_context_new(model, null(), &mut ctx) },
            EllaStatus::Ok
        );
        let pixels = generate_32(ctx, &r);
        unsafe {
            ella_context_free(ctx);
            ella_model_free(model);
        }
        pixels.unwrap()
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

#[test]
fn prompt_cache_and_freed_text_encoder() {
    let model = load();
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let prompt = CString::new("a red book").unwrap();
    let negative = CString::new("blurry").unwrap();
    let r = EllaGenerateRequest {
        negative_prompt: negative.as_ptr(),
        ..request(&prompt)
    };
    let direct = generate_32(ctx, &r).unwrap();

    let mut cache = null_mut();
    let encode = |p, n, out| unsafe { ella_prompt_new(model, p, n, 0, out) };
    assert_eq!(
        encode(null(), negative.as_ptr(), &mut cache),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        encode(prompt.as_ptr(), negative.as_ptr(), null_mut()),
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_prompt_new(null(), prompt.as_ptr(), null(), 0, &mut cache) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        encode(prompt.as_ptr(), negative.as_ptr(), &mut cache),
        EllaStatus::Ok
    );
    let cached = EllaGenerateRequest {
        prompt: null(),
        negative_prompt: null(),
        prompt_cache: cache,
        ..r
    };
    assert_eq!(generate_32(ctx, &cached).unwrap(), direct, "same states");

    assert_eq!(
        unsafe { ella_model_free_t5(null()) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(unsafe { ella_model_free_t5(model) }, EllaStatus::Ok);
    let error = generate_32(ctx, &r).unwrap_err();
    assert!(error.contains("text encoder was freed"), "{error}");
    let mut states = null_mut();
    assert_eq!(
        unsafe { ella_model_encode_t5(model, prompt.as_ptr(), 0, &mut states) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        generate_32(ctx, &cached).unwrap(),
        direct,
        "the cache outlives T5"
    );
    unsafe {
        ella_prompt_free(cache);
        ella_prompt_free(null_mut());
        ella_context_free(ctx);
        ella_model_free(model);
    }
}

#[test]
fn vae_decode_modes() {
    let model = load();
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let prompt = CString::new("a red book").unwrap();
    let whole = generate_32(ctx, &request(&prompt)).unwrap();
    for mode in [EllaVaeDecode::Sliced, EllaVaeDecode::Tiled] {
        let r = EllaGenerateRequest {
            vae_decode: mode as u32,
            ..request(&prompt)
        };
        // 32×32 is one tile of the tiny VAE: every mode gives the same pixels.
        assert_eq!(generate_32(ctx, &r).unwrap(), whole, "{mode:?}");
    }
    let bad = EllaGenerateRequest {
        vae_decode: 3,
        ..request(&prompt)
    };
    assert!(generate_32(ctx, &bad).unwrap_err().contains("vae_decode"));
    unsafe {
        ella_context_free(ctx);
        ella_model_free(model);
    }
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
        let mut model = null_mut();
        let params = EllaModelParams {
            backend: backend as u32,
            kernel_cache_path: unwritable_c.as_ptr(),
            ..params(&p)
        };
        assert_eq!(unsafe { ella_model_load(&params, &mut model) }, status);
        if status == EllaStatus::Ok {
            unsafe { ella_model_free(model) };
        } else {
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
        let mut model = null_mut();
        let params = EllaModelParams {
            backend: backend as u32,
            ..params(&p)
        };
        assert_eq!(
            unsafe { ella_model_load(&params, &mut model) },
            EllaStatus::Ok,
            "{}",
            last_error()
        );
        let mut ctx = null_mut();
        assert_eq!(
            unsafe { ella_context_new(model, null(), &mut ctx) },
            EllaStatus::Ok
        );
        images.push(generate_32(ctx, &request(&prompt)).unwrap());
        unsafe {
            ella_context_free(ctx);
            ella_model_free(model);
        }
    }
    let max_diff = images[0]
        .iter()
        .zip(&images[1])
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(max_diff <= 1, "wgpu and CPU pixels differ by {max_diff}");
}

/// Loads `params` or fails with the library's message.
fn load_with(params: &EllaModelParams) -> *mut EllaModel {
    let mut model = null_mut();
    let status = unsafe { ella_model_load(params, &mut model) };
    assert_eq!(status, EllaStatus::Ok, "{}", last_error());
    model
}

/// One 32×32 image per conditioning from a new context on `model`.
fn images_by_conditioning(
    model: *mut EllaModel,
    conditionings: &[EllaConditioning],
) -> Vec<Result<Vec<u8>, String>> {
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let prompt = CString::new("the red hat").unwrap();
    let images = conditionings
        .iter()
        .map(|&conditioning| {
            let r = EllaGenerateRequest {
                conditioning: conditioning as u32,
                ..request(&prompt)
            };
            generate_32(ctx, &r)
        })
        .collect();
    unsafe { ella_context_free(ctx) };
    images
}

#[test]
fn single_file_checkpoint_clip_and_concat_conditioning() {
    use EllaConditioning::{Clip, Ella, EllaClip};
    let p = paths();
    let (single, vae) = (
        fixture("sd-single-file.safetensors"),
        fixture("vae-ldm.safetensors"),
    );
    let with_clip = EllaModelParams {
        load_clip: 1,
        ..params(&p)
    };
    let folder = load_with(&with_clip);
    let expected = images_by_conditioning(folder, &[Ella, EllaClip, Clip]);
    let expected: Vec<Vec<u8>> = expected.into_iter().map(Result::unwrap).collect();
    assert!(
        expected[0] != expected[1] && expected[1] != expected[2],
        "each conditioning gives another image"
    );
    let prompt = CString::new("x").unwrap();
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(folder, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let r = EllaGenerateRequest {
        conditioning: 3,
        ..request(&prompt)
    };
    assert!(generate_32(ctx, &r).unwrap_err().contains("conditioning"));
    unsafe { ella_context_free(ctx) };

    // The same models from the single-file checkpoint (whose VAE the LDM VAE file replaces).
    let single_params = EllaModelParams {
        sd_path: single.as_ptr(),
        sd_config_path: p.sd.as_ptr(),
        vae_path: vae.as_ptr(),
        ..with_clip
    };
    let model = load_with(&single_params);
    let images = images_by_conditioning(model, &[Ella, EllaClip, Clip]);
    for (image, expected) in images.into_iter().zip(&expected) {
        assert_eq!(&image.unwrap(), expected);
    }
    unsafe { ella_model_free(model) };

    // CLIP only: no T5, no connector; ELLA requests are refused; prompt caches work.
    let clip_only = load_with(&EllaModelParams {
        t5_path: null(),
        ella_path: null(),
        ..with_clip
    });
    let images = images_by_conditioning(clip_only, &[Ella, EllaClip, Clip]);
    assert!(images[0].as_ref().unwrap_err().contains("T5"));
    assert!(images[1].is_err());
    assert_eq!(images[2].as_ref().unwrap(), &expected[2]);
    let the_red_hat = CString::new("the red hat").unwrap();
    let mut cache = null_mut();
    assert_eq!(
        unsafe { ella_prompt_new(clip_only, the_red_hat.as_ptr(), null(), 0, &mut cache) },
        EllaStatus::Ok,
        "{}",
        last_error()
    );
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(clip_only, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let cached = EllaGenerateRequest {
        prompt: null(),
        prompt_cache: cache,
        conditioning: Clip as u32,
        ..request(&the_red_hat)
    };
    assert_eq!(&generate_32(ctx, &cached).unwrap(), &expected[2]);
    unsafe {
        ella_context_free(ctx);
        ella_prompt_free(cache);
        ella_model_free(clip_only);
        ella_model_free(folder);
    }

    // Refusals.
    let mut model = null_mut();
    let load = |params: &EllaModelParams, model: &mut *mut EllaModel| unsafe {
        ella_model_load(params, model)
    };
    let not_a_checkpoint = fixture("ella/ella.safetensors");
    let status = load(
        &EllaModelParams {
            sd_path: not_a_checkpoint.as_ptr(),
            ..with_clip
        },
        &mut model,
    );
    assert_eq!(status, EllaStatus::Unsupported);
    assert!(
        last_error().contains("model.diffusion_model"),
        "{}",
        last_error()
    );
    let status = load(
        &EllaModelParams {
            load_clip: 2,
            ..with_clip
        },
        &mut model,
    );
    assert_eq!(status, EllaStatus::InvalidArgument);
    let status = load(
        &EllaModelParams {
            t5_path: null(),
            ella_path: null(),
            load_clip: 0,
            ..with_clip
        },
        &mut model,
    );
    assert_eq!(status, EllaStatus::InvalidArgument);
    assert!(model.is_null());
}

#[test]
fn image_to_image() {
    let model = load();
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let prompt = CString::new("a red book").unwrap();
    let text_to_image = generate_32(ctx, &request(&prompt)).unwrap();
    let other = CString::new("two cats on a sofa").unwrap();
    let img2img = EllaGenerateRequest {
        init_image: text_to_image.as_ptr(),
        init_image_size: text_to_image.len(),
        strength: 0.5,
        steps: 4,
        ..request(&other)
    };
    let first = generate_32(ctx, &img2img).unwrap();
    assert_eq!(generate_32(ctx, &img2img).unwrap(), first, "reproducible");
    assert_ne!(first, text_to_image);
    // (The numbers are the Rust pipeline's, parity-tested against diffusers' img2img.)
    let all_steps = EllaGenerateRequest {
        strength: 1.0,
        ..img2img
    };
    assert_ne!(generate_32(ctx, &all_steps).unwrap(), first);
    for strength in [0.0, 1.5, f32::NAN] {
        let bad = EllaGenerateRequest {
            strength,
            ..img2img
        };
        assert!(generate_32(ctx, &bad).unwrap_err().contains("strength"));
    }
    let huge = EllaGenerateRequest {
        width: 1 << 20,
        ..img2img
    };
    let mut image = null_mut();
    assert_eq!(
        unsafe { ella_context_generate(ctx, &huge, &mut image) },
        EllaStatus::InvalidArgument
    );
    assert!(last_error().contains("init_image"), "{}", last_error());
    unsafe {
        ella_context_free(ctx);
        ella_model_free(model);
    }
}

#[test]
fn loras_at_run_time() {
    let p = paths();
    let model = load_with(&EllaModelParams {
        load_clip: 1,
        ..params(&p)
    });
    let conditionings = [EllaConditioning::EllaClip];
    let base = images_by_conditioning(model, &conditionings)
        .remove(0)
        .unwrap();
    let (kohya, peft) = (
        fixture("lora/kohya.safetensors"),
        fixture("lora/peft.safetensors"),
    );
    let paths = [kohya.as_ptr(), peft.as_ptr()];
    let scales = [0.7f32, 1.3];
    let set = |count: usize| unsafe {
        ella_model_set_loras(model, paths.as_ptr(), scales.as_ptr(), count)
    };
    assert_eq!(set(2), EllaStatus::Ok, "{}", last_error());
    let both = images_by_conditioning(model, &conditionings)
        .remove(0)
        .unwrap();
    assert_ne!(both, base);
    assert_eq!(set(1), EllaStatus::Ok);
    let kohya_only = images_by_conditioning(model, &conditionings)
        .remove(0)
        .unwrap();
    assert!(kohya_only != both && kohya_only != base);
    assert_eq!(set(0), EllaStatus::Ok);
    assert_eq!(
        images_by_conditioning(model, &conditionings)
            .remove(0)
            .unwrap(),
        base,
        "no LoRA: the original weights"
    );

    assert_eq!(
        unsafe { ella_model_set_loras(model, null(), scales.as_ptr(), 1) },
        EllaStatus::InvalidArgument
    );
    assert_eq!(
        unsafe { ella_model_set_loras(null(), paths.as_ptr(), scales.as_ptr(), 1) },
        EllaStatus::InvalidArgument
    );
    let missing = fixture("lora/missing.safetensors");
    assert_eq!(
        unsafe { ella_model_set_loras(model, &missing.as_ptr(), scales.as_ptr(), 1) },
        EllaStatus::Io
    );
    // A file of another model: no LoRA of this one.
    let connector = fixture("ella/ella.safetensors");
    assert_eq!(
        unsafe { ella_model_set_loras(model, &connector.as_ptr(), scales.as_ptr(), 1) },
        EllaStatus::InvalidModel
    );
    assert!(
        last_error().contains("matches no weight"),
        "{}",
        last_error()
    );
    unsafe { ella_model_free(model) };
}

#[test]
fn controlnet_guidance() {
    let p = paths();
    let controlnet = fixture("controlnet");
    let model = load_with(&EllaModelParams {
        controlnet_path: controlnet.as_ptr(),
        ..params(&p)
    });
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let prompt = CString::new("a red book").unwrap();
    let plain = generate_32(ctx, &request(&prompt)).unwrap();
    let edges: Vec<u8> = (0..32 * 32 * 3)
        .map(|i| if (i / 3) % 32 == 8 { 255 } else { 0 })
        .collect();
    let controlled = EllaGenerateRequest {
        control_image: edges.as_ptr(),
        control_image_size: edges.len(),
        control_scale: 0.8,
        ..request(&prompt)
    };
    let guided = generate_32(ctx, &controlled).unwrap();
    assert_ne!(guided, plain);
    let never = EllaGenerateRequest {
        control_start: 1.0,
        ..controlled
    };
    assert_eq!(
        generate_32(ctx, &never).unwrap(),
        plain,
        "acting in no step"
    );
    let reversed = EllaGenerateRequest {
        control_start: 0.9,
        control_end: 0.1,
        ..controlled
    };
    assert!(generate_32(ctx, &reversed).unwrap_err().contains("start"));
    unsafe {
        ella_context_free(ctx);
        ella_model_free(model);
    }
    // Without a ControlNet, a control image is refused.
    let model = load();
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );
    assert!(
        generate_32(ctx, &controlled)
            .unwrap_err()
            .contains("ControlNet")
    );
    unsafe {
        ella_context_free(ctx);
        ella_model_free(model);
    }
}

#[test]
fn sur_adapter_conditioning() {
    let p = paths();
    let sur = fixture("sur/adapter.safetensors");
    let model = load_with(&EllaModelParams {
        t5_path: null(),
        ella_path: null(),
        load_clip: 1,
        sur_adapter_path: sur.as_ptr(),
        ..params(&p)
    });
    let mut ctx = null_mut();
    assert_eq!(
        unsafe { ella_context_new(model, null(), &mut ctx) },
        EllaStatus::Ok
    );
    let prompt = CString::new("the red hat").unwrap();
    let clip = EllaGenerateRequest {
        conditioning: EllaConditioning::Clip as u32,
        ..request(&prompt)
    };
    let sur = EllaGenerateRequest {
        conditioning: EllaConditioning::ClipSur as u32,
        sur_weight: 0.5,
        ..request(&prompt)
    };
    let plain = generate_32(ctx, &clip).unwrap();
    let faithful = generate_32(ctx, &sur).unwrap();
    let per_token = generate_32(
        ctx,
        &EllaGenerateRequest {
            sur_mode: EllaSurMode::PerToken as u32,
            ..sur
        },
    )
    .unwrap();
    assert!(faithful != plain && per_token != faithful);
    let no_weight = EllaGenerateRequest {
        sur_weight: 0.0,
        ..sur
    };
    assert_eq!(
        generate_32(ctx, &no_weight).unwrap(),
        plain,
        "w = 0 is CLIP"
    );
    for bad in [
        EllaGenerateRequest {
            sur_weight: 2.0,
            ..sur
        },
        EllaGenerateRequest { sur_mode: 2, ..sur },
    ] {
        assert!(
            generate_32(ctx, &bad)
                .unwrap_err()
                .to_lowercase()
                .contains("sur")
        );
    }
    unsafe {
        ella_context_free(ctx);
        ella_model_free(model);
    }
}
