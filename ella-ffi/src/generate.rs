//! Generation: a request run on a context, into a library-owned image or the host's buffer.

use std::ffi::c_char;
use std::sync::Arc;
use std::time::Instant;

use ella_core::limits::MAX_IMAGE_SIDE;
use ella_core::pipeline::ProgressFn;
use ella_core::{
    ClipText, Control, GenerateRequest, Hooks, Image, InitImage, Mask, Preview, Previews,
    PromptSyntax, SurOptions, T5Text, TimestepSchedule,
};

use crate::abi::*;
use crate::boundary::{Failure, guard, invalid};
use crate::context::EllaContext;
use crate::convert::{max_tokens, token_mode};
use crate::engine::{Engine, HostPrompt};
use crate::model::Logger;

/// Defaults of ella-core's `GenerateRequest` (the official demo's): 512×512, 25 steps,
/// guidance 10, seed 1000, DPM-Solver++ 2M (TCD's eta 0.3), flexible tokens, ELLA
/// conditioning, the whole VAE at once; RGB8 pixels. `prompt` must still be set.
#[unsafe(no_mangle)]
pub extern "C" fn ella_generate_request_default() -> EllaGenerateRequest {
    let d = GenerateRequest::default();
    let none = || Image {
        width: 0,
        height: 0,
        pixels: Vec::new(),
    };
    let control = Control::new(none());
    let init = InitImage::new(none());
    let sur = SurOptions::default();

    EllaGenerateRequest {
        struct_size: std::mem::size_of::<EllaGenerateRequest>() as u32,
        prompt: std::ptr::null(),
        negative_prompt: std::ptr::null(),
        width: d.width as u32,
        height: d.height as u32,
        steps: d.schedule.steps() as u32,
        guidance_scale: d.guidance_scale,
        seed: d.seed,
        scheduler: EllaScheduler::from(d.scheduler) as u32,
        max_tokens: max_tokens(d.t5.mode),
        pixel_format: EllaPixelFormat::Rgb8 as u32,
        vae_decode: EllaVaeDecode::from(d.vae_decode) as u32,
        prompt_cache: std::ptr::null(),
        conditioning: EllaConditioning::from(d.conditioning) as u32,
        init_image: std::ptr::null(),
        strength: init.strength,
        control_image: std::ptr::null(),
        control_scale: control.scale,
        control_start: control.start,
        control_end: control.end,
        sur_weight: sur.weight,
        sur_mode: EllaSurMode::from(sur.mode) as u32,
        init_image_size: 0,
        control_image_size: 0,
        eta: d.eta,
        seamless: EllaSeamless::from(d.seamless) as u32,
        mask: std::ptr::null(),
        mask_size: 0,
        clip_prompt: std::ptr::null(),
        clip_negative_prompt: std::ptr::null(),
        clip_skip: d.clip.skip as u32,
        controls: std::ptr::null(),
        n_controls: 0,
        t5_syntax: EllaPromptSyntax::from(d.t5.syntax) as u32,
        clip_syntax: EllaPromptSyntax::from(d.clip.syntax) as u32,
    }
}

/// The pixels of an image of the request's size, `channels` bytes a pixel (3: RGB8; 1: a
/// mask), from `size` bytes at `pixels` (NULL: none).
///
/// # Safety
/// `pixels` is NULL or points to `size` readable bytes.
unsafe fn host_pixels(
    pixels: *const u8,
    size: usize,
    request: &EllaGenerateRequest,
    what: &str,
    channels: usize,
) -> Result<Option<Vec<u8>>, Failure> {
    if pixels.is_null() {
        return Ok(None);
    }
    let (width, height) = (request.width as usize, request.height as usize);
    if width == 0 || height == 0 || width.max(height) > MAX_IMAGE_SIDE {
        return Err(invalid(format!(
            "request.{what} needs a size of 1 to {MAX_IMAGE_SIDE} a side, not {width}×{height}"
        )));
    }
    let expected = width * height * channels;
    if size != expected {
        let kind = if channels == 1 {
            "8-bit mask"
        } else {
            "RGB8 image"
        };
        return Err(invalid(format!(
            "request.{what}_size is {size} bytes; a {width}×{height} {kind} is {expected}"
        )));
    }
    // SAFETY: `size` readable bytes, per this function's contract.
    Ok(Some(
        unsafe { std::slice::from_raw_parts(pixels, size) }.to_vec(),
    ))
}

/// A C request read into owned values (ella-core's request, the prompt cache it names, its
/// pixel format): nothing of it points into the host's memory, so a job can keep it.
pub(crate) struct Request {
    pub(crate) generate: GenerateRequest,
    pub(crate) cache: Option<Arc<HostPrompt>>,
    pub(crate) format: EllaPixelFormat,
}

/// Reads and checks a request, copying what it points to (strings, image buffers) and
/// sharing the prompt cache's states.
///
/// # Safety
/// `request` points to a valid request (strings NUL-terminated, buffers of their sizes,
/// `prompt_cache` NULL or live).
pub(crate) unsafe fn read_request(request: *const EllaGenerateRequest) -> Result<Request, Failure> {
    // SAFETY: per this function's contract.
    let request = unsafe { read_struct(request, ella_generate_request_default(), "request")? };
    let format = EllaPixelFormat::decode(request.pixel_format, "request.pixel_format")?;
    // SAFETY: NULL or a live handle, per this function's contract.
    let cache = unsafe { request.prompt_cache.as_ref() }.map(|cache| Arc::clone(&cache.states));
    let optional_text = |ptr: *const c_char, what| match ptr.is_null() {
        true => Ok(String::new()),
        // SAFETY: strings per this function's contract.
        false => unsafe { text(ptr, what) }.map(str::to_string),
    };
    let prompt = match cache {
        Some(_) => optional_text(request.prompt, "request.prompt")?,
        // SAFETY: strings per this function's contract.
        None => unsafe { text(request.prompt, "request.prompt") }?.to_string(),
    };
    let clip_text = |ptr: *const c_char, what| match ptr.is_null() {
        true => Ok(None),
        false => optional_text(ptr, what).map(Some),
    };
    let clip = ClipText {
        prompt: clip_text(request.clip_prompt, "request.clip_prompt")?,
        negative: clip_text(request.clip_negative_prompt, "request.clip_negative_prompt")?,
        skip: request.clip_skip as usize,
        syntax: EllaPromptSyntax::decode(request.clip_syntax, "request.clip_syntax")?.into(),
    };
    let t5 = T5Text {
        mode: token_mode(request.max_tokens),
        syntax: EllaPromptSyntax::decode(request.t5_syntax, "request.t5_syntax")?.into(),
    };
    if cache.is_some() && (clip != ClipText::default() || t5.syntax != PromptSyntax::default()) {
        return Err(invalid(
            "request.clip_prompt, clip_negative_prompt, clip_skip, clip_syntax and t5_syntax \
             apply when the request's prompts are encoded; a prompt cache holds the states of \
             its own prompts",
        ));
    }
    let (width, height) = (request.width as usize, request.height as usize);
    let image = |pixels| Image {
        width,
        height,
        pixels,
    };
    // SAFETY (all three): buffers of the sizes given, per this function's contract.
    let init_image = unsafe {
        host_pixels(
            request.init_image,
            request.init_image_size,
            &request,
            "init_image",
            3,
        )
    }?
    .map(image);
    let control_image = unsafe {
        host_pixels(
            request.control_image,
            request.control_image_size,
            &request,
            "control_image",
            3,
        )
    }?
    .map(image);
    let mask = unsafe { host_pixels(request.mask, request.mask_size, &request, "mask", 1) }?.map(
        |pixels| Mask {
            width,
            height,
            pixels,
        },
    );
    let mut controls: Vec<Control> = control_image
        .map(|image| Control {
            scale: request.control_scale,
            start: request.control_start,
            end: request.control_end,
            ..Control::new(image)
        })
        .into_iter()
        .collect();
    // SAFETY: `n_controls` readable controls, per this function's contract.
    let more = unsafe { host_array(request.controls, request.n_controls, "request.controls") }?;
    for (i, control) in more.iter().enumerate() {
        let what = format!("controls[{i}].image");
        // SAFETY: a buffer of its size, per this function's contract.
        let pixels = unsafe { host_pixels(control.image, control.image_size, &request, &what, 3) }?
            .ok_or_else(|| invalid(format!("request.{what} is NULL")))?;
        controls.push(Control {
            controlnet: control.controlnet as usize,
            image: image(pixels),
            scale: control.scale,
            start: control.start,
            end: control.end,
        });
    }
    if mask.is_some() && init_image.is_none() {
        return Err(invalid(
            "request.mask needs request.init_image, the image to inpaint",
        ));
    }
    let generate = GenerateRequest {
        prompt,
        negative_prompt: optional_text(request.negative_prompt, "request.negative_prompt")?,
        width: request.width as usize,
        height: request.height as usize,
        schedule: TimestepSchedule::Steps(request.steps as usize),
        guidance_scale: request.guidance_scale,
        seed: request.seed,
        t5,
        scheduler: EllaScheduler::decode(request.scheduler, "request.scheduler")?.into(),
        eta: request.eta,
        seamless: EllaSeamless::decode(request.seamless, "request.seamless")?.into(),
        vae_decode: EllaVaeDecode::decode(request.vae_decode, "request.vae_decode")?.into(),
        conditioning: EllaConditioning::decode(request.conditioning, "request.conditioning")?
            .with_sur(SurOptions {
                weight: request.sur_weight,
                mode: EllaSurMode::decode(request.sur_mode, "request.sur_mode")?.into(),
            }),
        clip,
        init_image: init_image.map(|image| InitImage {
            image,
            strength: request.strength,
            mask,
        }),
        controls,
        ..GenerateRequest::default()
    };
    Ok(Request {
        generate,
        cache,
        format,
    })
}

/// An image's pixels in the requested format, with its width, height and channels.
pub(crate) struct Pixels {
    bytes: Vec<u8>,
    width: u32,
    height: u32,
    channels: u32,
}

impl Pixels {
    /// The image as a library-owned `ella_image` (freed by `ella_image_free`).
    pub(crate) fn into_c_image(self) -> *mut EllaImage {
        Box::into_raw(Box::new(EllaImage {
            width: self.width,
            height: self.height,
            channels: self.channels,
            pixels: Box::into_raw(self.bytes.into_boxed_slice()) as *mut u8,
        }))
    }
}

/// Runs a request on a context.
///
/// # Safety
/// `context` is NULL or a live handle; `request` as [`read_request`].
unsafe fn run(
    context: *mut EllaContext,
    request: *const EllaGenerateRequest,
) -> Result<Pixels, Failure> {
    // SAFETY: per this function's contract.
    unsafe {
        EllaContext::run(context, |context| {
            let request = read_request(request)?;
            let mut hooks = Hooks {
                cancel: Some(&context.cancel),
                progress: progress_callback(context.params),
                preview: preview_callback(context.params)?,
                ..Hooks::default()
            };
            render(&context.model, &context.log, &request, &mut hooks)
        })
    }
}

/// The context's preview callback as a pipeline hook, if it asks for previews.
pub(crate) fn preview_callback<'a>(
    params: EllaContextParams,
) -> Result<Option<Previews<'a>>, Failure> {
    let (Some(callback), every @ 1..) = (params.preview_callback, params.preview_every) else {
        return Ok(None);
    };
    Ok(Some(Previews {
        every: every as usize,
        method: EllaPreviewMethod::decode(params.preview_method, "params.preview_method")?.into(),
        sink: Box::new(move |preview: Preview| {
            let Some(image) = preview.images.into_iter().next() else {
                return;
            };
            let mut pixels = image.pixels;
            let view = EllaImage {
                width: image.width as u32,
                height: image.height as u32,
                channels: 3,
                pixels: pixels.as_mut_ptr(),
            };
            // SAFETY: the host's callback with the documented signature; `view` and its
            // pixels outlive the call.
            unsafe {
                callback(
                    &view,
                    preview.step as u32,
                    preview.total as u32,
                    params.preview_user_data,
                )
            }
        }),
    }))
}

/// The context's progress callback as a pipeline hook, if it has one.
pub(crate) fn progress_callback<'a>(params: EllaContextParams) -> Option<ProgressFn<'a>> {
    params.progress_callback.map(|callback| {
        Box::new(move |step: usize, total: usize| {
            // SAFETY: the host's callback with the documented signature.
            unsafe { callback(step as u32, total as u32, params.progress_user_data) }
        }) as ProgressFn
    })
}

/// The generation itself, with the given cancellation flag and progress hook (what
/// `ella_context_generate` and a job share).
pub(crate) fn render(
    model: &Arc<dyn Engine>,
    log: &Logger,
    request: &Request,
    hooks: &mut Hooks,
) -> Result<Pixels, Failure> {
    let start = Instant::now();
    let image = model
        .generate(&request.generate, request.cache.as_deref(), hooks)?
        .into_iter()
        .next()
        .ok_or_else(|| Failure(EllaStatus::Internal, "no image".into()))?;
    log.log(
        EllaLogLevel::Info,
        &format!(
            "ella: generated {}×{} in {:.2?}",
            image.width,
            image.height,
            start.elapsed()
        ),
    );
    Ok(pixels(image, request.format))
}

/// An RGB8 image in `format`.
pub(crate) fn pixels(image: Image, format: EllaPixelFormat) -> Pixels {
    let bytes = match format {
        EllaPixelFormat::Rgb8 => image.pixels,
        EllaPixelFormat::Rgba8 => image
            .pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
    };
    Pixels {
        bytes,
        width: image.width as u32,
        height: image.height as u32,
        channels: format.channels(),
    }
}

/// Generates an image; on success `*out_image` owns it (free with `ella_image_free`).
///
/// # Safety
/// `context` is a live handle, `request` a valid request, `out_image` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_context_generate(
    context: *mut EllaContext,
    request: *const EllaGenerateRequest,
    out_image: *mut *mut EllaImage,
) -> EllaStatus {
    guard(|| {
        if out_image.is_null() {
            return Err(invalid("out_image is NULL"));
        }
        // SAFETY: per this function's contract.
        let image = unsafe { run(context, request)? };
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { write_out(out_image, image.into_c_image(), "out_image") }
    })
}

/// Generates an image into the caller's buffer: `height` rows of `width * channels` bytes,
/// each starting `row_pitch` bytes after the previous one. `ELLA_STATUS_BUFFER_TOO_SMALL`
/// (checked before any work) when `row_pitch` or `buffer_size` cannot hold it.
///
/// # Safety
/// `buffer` points to `buffer_size` writable bytes; the rest as `ella_context_generate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_context_generate_into(
    context: *mut EllaContext,
    request: *const EllaGenerateRequest,
    buffer: *mut u8,
    buffer_size: usize,
    row_pitch: usize,
) -> EllaStatus {
    guard(|| {
        if buffer.is_null() {
            return Err(invalid("buffer is NULL"));
        }
        // SAFETY: per this function's contract.
        let peek = unsafe { read_struct(request, ella_generate_request_default(), "request")? };
        let format = EllaPixelFormat::decode(peek.pixel_format, "request.pixel_format")?;
        let row = peek.width as usize * format.channels() as usize;
        let needed = row_pitch
            .checked_mul(peek.height.saturating_sub(1) as usize)
            .and_then(|n| n.checked_add(row));
        if row_pitch < row || needed.is_none_or(|n| n > buffer_size) {
            return Err(Failure(
                EllaStatus::BufferTooSmall,
                format!(
                    "a {}×{} image needs a row pitch ≥ {row} and {} bytes",
                    peek.width,
                    peek.height,
                    needed.unwrap_or(usize::MAX)
                ),
            ));
        }
        // SAFETY: per this function's contract.
        let image = unsafe { run(context, request)? };
        for (y, source) in image
            .bytes
            .chunks_exact(row)
            .take(peek.height as usize)
            .enumerate()
        {
            // SAFETY: row y lies within buffer_size, checked above.
            unsafe {
                std::ptr::copy_nonoverlapping(source.as_ptr(), buffer.add(y * row_pitch), row)
            };
        }
        Ok(())
    })
}

/// Frees an image from `ella_context_generate` or `ella_job_take_image`. NULL is a no-op.
///
/// # Safety
/// `image` is NULL or from `ella_context_generate` or `ella_job_take_image`, not used after
/// this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_image_free(image: *mut EllaImage) {
    if image.is_null() {
        return;
    }
    // SAFETY: allocated by `Pixels::into_c_image` as a boxed image and a boxed slice of this
    // length.
    unsafe {
        let image = Box::from_raw(image);
        let len = (image.width * image.height * image.channels) as usize;
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
            image.pixels,
            len,
        )));
    }
}
