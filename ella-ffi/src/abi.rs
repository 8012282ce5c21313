//! The types of the C ABI (enums passed as `u32` fields, `struct_size`-versioned params
//! structs, library-owned results) and the reading and writing of them across the boundary.

use std::ffi::{CStr, c_char, c_void};

use crate::boundary::{Failure, invalid};
use crate::prompt::EllaPrompt;

/// The result of every fallible call. Details: `ella_last_error_message()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaStatus {
    Ok = 0,
    /// A null pointer, invalid UTF-8, an out-of-range number or size, a wrong `struct_size`.
    InvalidArgument = 1,
    /// A file is missing or unreadable.
    Io = 2,
    /// A weight or config file is damaged or does not match the model (names the tensor).
    InvalidModel = 3,
    /// The request needs something this build does not have (e.g. a backend, a precision).
    Unsupported = 4,
    /// `ella_context_cancel` stopped the generation; the context stays usable.
    Cancelled = 5,
    /// The caller's buffer is too small for the image.
    BufferTooSmall = 6,
    /// A bug in ella (a caught panic); the message says where.
    Internal = 7,
    /// The request (or model) needs more working memory than `memory_budget` allows; the
    /// message says how much. Nothing was allocated for it.
    OutOfMemory = 8,
    /// The computation produced NaN or infinite values (the message names the step): bad
    /// weights, an overflow in F16, an absurd guidance or LoRA scale. No image is returned.
    Numerical = 9,
    /// The context is running another call (from another thread), or a callback called a
    /// function that would wait for the generation it was called from.
    Busy = 10,
    /// The job has not finished: `ella_job_wait`'s timeout passed, or `ella_job_take_image`
    /// was called while it was queued or running. It goes on.
    NotReady = 11,
}

/// Compute backend. A backend not compiled into the library (cargo features `wgpu`,
/// `cuda`) is refused with `ELLA_STATUS_UNSUPPORTED`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaBackend {
    /// Burn's `flex` CPU backend (or `ndarray` in builds without `flex`).
    Cpu = 0,
    /// Vulkan, Metal or DX12 through wgpu (F32 and F16).
    Wgpu = 1,
    /// NVIDIA GPUs (F32, F16 and BF16); needs the driver and NVRTC at run time only.
    Cuda = 2,
}

/// Sampler; the other scheduler settings come from the SD folder's scheduler config.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaScheduler {
    /// DPM-Solver++ 2M (the official ELLA demo's).
    DpmSolverMultistep = 0,
    DpmSolverMultistepKarras = 1,
    Euler = 2,
    Ddim = 3,
    /// Latent Consistency Models' sampler: LCM models and LCM-LoRAs, 2–8 steps, guidance 1–2.
    Lcm = 4,
    /// Trajectory Consistency Distillation's: TCD-LoRAs, 2–8 steps, with `eta`.
    Tcd = 5,
}

/// Seamless textures: the axes along which the image wraps around (its copies tile).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaSeamless {
    /// A normal image (default).
    Off = 0,
    /// The left and right edges meet.
    X = 1,
    /// The top and bottom edges meet.
    Y = 2,
    /// Both: tiles in every direction.
    XY = 3,
}

/// Float type of the weights and the computation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaPrecision {
    F32 = 0,
    /// Half precision (the official ELLA setting on GPUs); on the CPU only with the `flex` backend.
    F16 = 1,
    Bf16 = 2,
}

/// Precision of the T5 encoder.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaT5Precision {
    /// The model's `precision`, the whole encoder (F16 is what the official ELLA code runs).
    Auto = 0,
    F32 = 1,
    F16 = 2,
    /// F16 with the feed-forward output projections in F32 (transformers' F16 loading).
    F16WoF32 = 3,
    Bf16 = 4,
}

/// How the VAE decodes (memory against speed).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaVaeDecode {
    /// Everything at once (fastest).
    Whole = 0,
    /// One image at a time: same pixels.
    Sliced = 1,
    /// Overlapping 512×512 tiles (diffusers' tiling): bounded memory for any size, pixels
    /// differ slightly near tile seams.
    Tiled = 2,
    /// TAESD (the model's `taesd_path`): a fraction of the time and memory, softer images.
    Tiny = 3,
}

/// What the U-Net is conditioned on.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaConditioning {
    /// ELLA's 64 tokens from T5 (the official way; the default).
    Ella = 0,
    /// ELLA's tokens followed by CLIP's 77 (ComfyUI-ELLA's concat mode: LoRA trigger words
    /// keep working). Needs `load_clip`.
    EllaClip = 1,
    /// SD1.5's own CLIP conditioning (plain SD). Needs `load_clip`.
    Clip = 2,
    /// CLIP's states rewritten by a SUR-adapter (`sur_weight`, `sur_mode`). Needs `load_clip`
    /// and `sur_adapter_path`.
    ClipSur = 3,
}

/// How a SUR-adapter sees the negative and positive prompt.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaSurMode {
    /// As the official pipeline: the two prompts attend to each other (reproduces its images).
    Faithful = 0,
    /// As the adapter was trained: each prompt alone.
    PerToken = 1,
}

/// How a text encoder reads AUTOMATIC1111's weight syntax: `(word:1.3)`, `(word)`,
/// `[word]`, `\(` escapes and `BREAK`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaPromptSyntax {
    /// As A1111 and ComfyUI-ELLA (default): CLIP applies the weights and reads prompts of any
    /// length in 75-token chunks; T5 reads the text with the syntax removed.
    A1111 = 0,
    /// The text as written: CLIP truncates it to 77 tokens (diffusers); T5 reads brackets and
    /// weights as words (ELLA's own code).
    Literal = 1,
}

/// Pixel layout of an image.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaPixelFormat {
    Rgb8 = 0,
    /// RGB8 plus an opaque alpha channel (255).
    Rgba8 = 1,
}

/// Where a job stands (`ella_job_progress.state`). QUEUED and RUNNING change; the other
/// three are final.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaJobState {
    /// Submitted, waiting for the jobs before it on its context.
    Queued = 0,
    /// On the context's worker thread now.
    Running = 1,
    /// Finished with an image: take it with `ella_job_take_image`.
    Done = 2,
    /// Ended with an error: `ella_job_progress.status` and `ella_job_error_message` say which.
    Failed = 3,
    /// Cancelled (`ella_job_cancel`, `ella_job_free`, `ella_context_cancel` or
    /// `ella_context_free`) before it finished.
    Cancelled = 4,
}

/// Severity of a log message.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaLogLevel {
    Info = 0,
    Warning = 1,
}

/// Receives log messages of one model handle (`message` is valid during the call only).
pub type EllaLogCallback = Option<
    unsafe extern "C" fn(level: EllaLogLevel, message: *const c_char, user_data: *mut c_void),
>;

/// Called after every denoising step, on the thread that runs `ella_context_generate` (for a
/// job: the context's worker thread).
pub type EllaProgressCallback =
    Option<unsafe extern "C" fn(step: u32, total: u32, user_data: *mut c_void)>;

/// Receives a live preview after every `preview_every`-th step, on the thread that runs
/// `ella_context_generate`: `image` (RGB8) is valid during the call only.
pub type EllaPreviewCallback = Option<
    unsafe extern "C" fn(image: *const EllaImage, step: u32, total: u32, user_data: *mut c_void),
>;

/// How a live preview turns latents into pixels.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaPreviewMethod {
    /// A fixed linear latent→RGB projection: nearly free, 1/8 of the request's size.
    Linear = 0,
    /// TAESD (the model's `taesd_path`): the request's size, a few percent of a step.
    Tiny = 1,
}

/// How to load a model. Start from `ella_model_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EllaModelParams {
    /// `sizeof(ella_model_params)`.
    pub struct_size: u32,
    /// T5 encoder folder (`config.json`, `tokenizer.json`, `model.safetensors`); NULL
    /// together with `ella_path` to load SD with CLIP only.
    pub t5_path: *const c_char,
    /// ELLA connector file (`ella-sd1.5-tsc-t5xl.safetensors`).
    pub ella_path: *const c_char,
    /// JSON file with the connector's sizes; NULL for the official connector.
    pub ella_config_path: *const c_char,
    /// SD1.5: a folder in the diffusers layout (`unet/`, `vae/`, `scheduler/`, and
    /// `text_encoder/` + `tokenizer/` for CLIP) or a single-file checkpoint (`.safetensors`,
    /// LDM layout, as from CivitAI; SD2.x and SDXL files are refused as UNSUPPORTED).
    pub sd_path: *const c_char,
    /// An `ella_backend` (a plain integer here, so that any value is safe to pass).
    pub backend: u32,
    /// An `ella_precision` of the connector, U-Net and VAE; default F32.
    pub precision: u32,
    pub log_callback: EllaLogCallback,
    pub log_user_data: *mut c_void,
    /// An `ella_t5_precision`; default AUTO (the same as `precision`).
    pub t5_precision: u32,
    /// For a single-file `sd_path`: a diffusers-layout folder with its configs and CLIP
    /// tokenizer; NULL for SD1.5's built-in configs (then CLIP cannot load).
    pub sd_config_path: *const c_char,
    /// A VAE replacing SD's (diffusers folder or file, or an LDM-layout file); NULL for none.
    pub vae_path: *const c_char,
    /// 1: also load SD's CLIP text encoder (for `ELLA_CONDITIONING_ELLA_CLIP` and `_CLIP`);
    /// default 0.
    pub load_clip: u32,
    /// ControlNet 0, for requests with a `control_image` (or `controls` naming it): a
    /// diffusers folder, or a single file in the diffusers or the original layout
    /// (`control_v11p_sd15_canny.safetensors`, `*_fp16.safetensors`); NULL for none.
    pub controlnet_path: *const c_char,
    /// A SUR-adapter `.safetensors` (`scripts/sur_adapter_to_safetensors.py` converts the
    /// official `.pt`) for `ELLA_CONDITIONING_CLIP_SUR`; NULL for none. Needs `load_clip`.
    pub sur_adapter_path: *const c_char,
    /// The working memory a request may use, in bytes: one that needs more is refused with
    /// `ELLA_STATUS_OUT_OF_MEMORY` before it allocates anything. 0 (default): the memory the
    /// machine (or its cgroup) has free when the request starts. On GPU backends, give the
    /// device memory ella may use.
    pub memory_budget: u64,
    /// GPU backends: the directory where compiled kernels and autotune results are kept
    /// between runs (created if needed), so that a later process starts without compiling.
    /// NULL (default): the platform's cache directory (`~/.cache/ella/kernels` on Linux).
    /// One directory per process: the first GPU model load settles it, and a later load
    /// naming another one fails with `ELLA_STATUS_INVALID_ARGUMENT`.
    pub kernel_cache_path: *const c_char,
    /// CPU backend: how many threads the model's work runs on (loading included); callbacks
    /// still run on the calling thread. 0 (default): every core. Leave cores to a game's own
    /// threads with a smaller number.
    pub n_threads: u32,
    /// TAESD, a tiny autoencoder (a diffusers `AutoencoderTiny` folder, e.g.
    /// `madebyollin/taesd`), for `ELLA_PREVIEW_METHOD_TINY` and `ELLA_VAE_DECODE_TINY`;
    /// NULL (default): none.
    pub taesd_path: *const c_char,
    /// More ControlNets: `n_extra_controlnet_paths` paths (as `controlnet_path`), ControlNet
    /// 1, 2, … for requests' `controls`; NULL and 0 (default): none. Needs `controlnet_path`.
    pub extra_controlnet_paths: *const *const c_char,
    pub n_extra_controlnet_paths: u32,
    /// Textual-inversion embeddings: `n_embedding_paths` `.safetensors` files (A1111's, named
    /// by the file name, e.g. `EasyNegative`; diffusers' `learned_embeds`, by its token) whose
    /// names CLIP's prompts may use; NULL and 0 (default): none. Needs `load_clip`.
    pub embedding_paths: *const *const c_char,
    pub n_embedding_paths: u32,
}

/// Per-context settings. Start from `ella_context_params_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EllaContextParams {
    /// `sizeof(ella_context_params)`.
    pub struct_size: u32,
    pub progress_callback: EllaProgressCallback,
    pub progress_user_data: *mut c_void,
    /// Live previews: `preview_callback` after every `preview_every`-th step (0, the
    /// default: none), made by `preview_method` (an `ella_preview_method`).
    pub preview_callback: EllaPreviewCallback,
    pub preview_user_data: *mut c_void,
    pub preview_every: u32,
    pub preview_method: u32,
}

/// One text-to-image request. Start from `ella_generate_request_default()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EllaGenerateRequest {
    /// `sizeof(ella_generate_request)`.
    pub struct_size: u32,
    /// UTF-8 prompt; required.
    pub prompt: *const c_char,
    /// UTF-8 negative prompt; NULL means "".
    pub negative_prompt: *const c_char,
    /// Multiples of 8 (the VAE's factor for SD1.5), up to 4096. Default 512.
    pub width: u32,
    pub height: u32,
    /// Default 25.
    pub steps: u32,
    /// Default 10; guidance is off at 1 or below.
    pub guidance_scale: f32,
    /// Default 1000.
    pub seed: u64,
    /// An `ella_scheduler`.
    pub scheduler: u32,
    /// 0: flexible (the prompt's own length, default); N: pad/truncate to N tokens (128 is
    /// ELLA's training length).
    pub max_tokens: u32,
    /// An `ella_pixel_format`.
    pub pixel_format: u32,
    /// An `ella_vae_decode`; default WHOLE.
    pub vae_decode: u32,
    /// Prompt states from `ella_prompt_new`, used instead of encoding `prompt` and
    /// `negative_prompt` (which may then be NULL); NULL by default. Required once the
    /// model's text encoder was freed.
    pub prompt_cache: *const EllaPrompt,
    /// An `ella_conditioning`; default ELLA.
    pub conditioning: u32,
    /// Image-to-image: RGB8 of the request's size, rows top to bottom without padding
    /// (`init_image_size` bytes, which must be `width * height * 3`); NULL (default) for
    /// text-to-image.
    pub init_image: *const u8,
    /// With `init_image`: the part of the schedule to run, in (0, 1]; default 0.8.
    pub strength: f32,
    /// ControlNet guidance: RGB8 (an edge map, a depth map, …) of the request's size,
    /// `control_image_size` bytes (`width * height * 3`); NULL (default) for none. Needs a
    /// model with `controlnet_path`.
    pub control_image: *const u8,
    /// The ControlNet's conditioning scale; default 1.
    pub control_scale: f32,
    /// The part of the run the ControlNet acts in, as fractions of the steps; default 0 and 1.
    pub control_start: f32,
    pub control_end: f32,
    /// `ELLA_CONDITIONING_CLIP_SUR`: the adapter weight in [0, 1]; default 0.1.
    pub sur_weight: f32,
    /// An `ella_sur_mode`; default FAITHFUL.
    pub sur_mode: u32,
    /// The byte length of the `init_image` buffer.
    pub init_image_size: usize,
    /// The byte length of the `control_image` buffer.
    pub control_image_size: usize,
    /// `ELLA_SCHEDULER_TCD`'s eta ("gamma") in [0, 1]: 0 is deterministic; default 0.3.
    pub eta: f32,
    /// An `ella_seamless`: the axes along which the image wraps around; default OFF.
    pub seamless: u32,
    /// Inpainting (with `init_image`): an 8-bit single-channel mask of the request's size,
    /// `mask_size` bytes (`width * height`), rows top to bottom; white (≥ 128) is repainted,
    /// black kept. NULL (default): none.
    pub mask: *const u8,
    pub mask_size: usize,
    /// CLIP's own UTF-8 prompt for the conditionings that use CLIP (with
    /// `ELLA_CONDITIONING_ELLA_CLIP`: tags, names and trigger words for CLIP while T5 reads
    /// `prompt`); NULL (default): `prompt`. Not with `prompt_cache`.
    pub clip_prompt: *const c_char,
    /// CLIP's own negative prompt; NULL (default): `negative_prompt`. Not with `prompt_cache`.
    pub clip_negative_prompt: *const c_char,
    /// Layers skipped from the end of CLIP (diffusers' `clip_skip`; A1111's "Clip skip: 2"
    /// is 1); default 0. Not with `prompt_cache`.
    pub clip_skip: u32,
    /// Several ControlNets at once: `n_controls` controls, each naming its ControlNet, after
    /// the one `control_image` gives (on ControlNet 0); their residuals add up. NULL and 0
    /// (default): none.
    pub controls: *const EllaControl,
    pub n_controls: u32,
    /// How T5 reads the prompts' weight syntax (`ella_prompt_syntax`); default
    /// `ELLA_PROMPT_SYNTAX_A1111`: removed, `a (red:1.3) book` is read `a red book`. Not with
    /// `prompt_cache` (whose prompts were read with the default).
    pub t5_syntax: u32,
    /// How CLIP reads it; default `ELLA_PROMPT_SYNTAX_A1111`: weights applied, prompts over
    /// 75 tokens in chunks. Not with `prompt_cache`.
    pub clip_syntax: u32,
}

/// One ControlNet control of a request (`ella_generate_request.controls`); a fixed layout,
/// filled by the host.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EllaControl {
    /// Which ControlNet: 0 is `ella_model_params.controlnet_path`, 1, 2, … its
    /// `extra_controlnet_paths`.
    pub controlnet: u32,
    /// RGB8 of the request's size, `image_size` bytes (`width * height * 3`), rows top to
    /// bottom without padding: an edge map, a depth map, …
    pub image: *const u8,
    pub image_size: usize,
    /// The conditioning scale (1 is diffusers' default).
    pub scale: f32,
    /// The part of the run it acts in, as fractions of the steps (0 and 1: all of it).
    pub start: f32,
    pub end: f32,
}

/// An image owned by the library until `ella_image_free`.
#[repr(C)]
#[derive(Debug)]
pub struct EllaImage {
    pub width: u32,
    pub height: u32,
    /// 3 (RGB8) or 4 (RGBA8).
    pub channels: u32,
    /// `height` rows of `width * channels` bytes, top to bottom.
    pub pixels: *mut u8,
}

/// A job's progress, written by `ella_job_poll`. Set `struct_size` to
/// `sizeof(ella_job_progress)` before the call: the library writes only the fields that size
/// covers (fields are only ever appended).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EllaJobProgress {
    /// `sizeof(ella_job_progress)`, set by the caller; left as it is.
    pub struct_size: u32,
    /// An `ella_job_state`.
    pub state: u32,
    /// Denoising steps done (0 until the first one ends; `total` once the job is DONE).
    pub step: u32,
    /// The steps the job runs (fewer than `steps` for image-to-image); 0 until the first
    /// step ends.
    pub total: u32,
    /// An `ella_status`: `ELLA_STATUS_OK` while queued, running or done;
    /// `ELLA_STATUS_CANCELLED`; or the error a FAILED job ended with.
    pub status: u32,
}

/// A float tensor owned by the library until `ella_tensor_free` (row-major).
#[repr(C)]
#[derive(Debug)]
pub struct EllaTensor {
    /// Number of dimensions used in `shape`.
    pub rank: u32,
    pub shape: [u64; 4],
    pub data: *mut f32,
}

/// A required UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| invalid(format!("{what} is not valid UTF-8")))
}

/// The `n` elements of a host array at `ptr` (0 elements: none, whatever `ptr`); NULL with
/// elements, and counts no host means (more than 256), are refused before anything is read.
///
/// # Safety
/// `ptr` is NULL or points to `n` readable elements.
pub(crate) unsafe fn host_array<'a, T>(
    ptr: *const T,
    n: u32,
    what: &str,
) -> Result<&'a [T], Failure> {
    match n {
        0 => Ok(&[]),
        _ if ptr.is_null() => Err(invalid(format!("{what} is NULL with {n} elements"))),
        257.. => Err(invalid(format!("{what} has {n} elements; at most 256"))),
        // SAFETY: `n` readable elements, per the caller's contract.
        _ => Ok(unsafe { std::slice::from_raw_parts(ptr, n as usize) }),
    }
}

/// A `struct_size`-versioned struct: where its fields lie, so that a size that ends inside
/// one (half a pointer) is refused instead of read.
pub(crate) trait Versioned: Copy {
    /// The byte range of every field.
    fn fields(&self) -> Vec<std::ops::Range<usize>>;
}

/// Implements [`Versioned`] for a struct from the list of all its fields (the destructuring
/// has no `..`: a field added to the struct but not here does not compile).
macro_rules! versioned {
    ($t:ident { $($field:ident),* $(,)? }) => {
        impl Versioned for $t {
            fn fields(&self) -> Vec<std::ops::Range<usize>> {
                let $t { $($field),* } = self;
                vec![$({
                    let start = std::mem::offset_of!($t, $field);
                    start..start + std::mem::size_of_val($field)
                }),*]
            }
        }
    };
}

versioned!(EllaModelParams {
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
});
versioned!(EllaContextParams {
    struct_size,
    progress_callback,
    progress_user_data,
    preview_callback,
    preview_user_data,
    preview_every,
    preview_method,
});
versioned!(EllaGenerateRequest {
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
});

versioned!(EllaJobProgress {
    struct_size,
    state,
    step,
    total,
    status,
});

/// The `struct_size` a versioned struct at `ptr` gives, checked: at least its first field,
/// and not ending inside a field (it cannot be an older header's `sizeof`).
///
/// # Safety
/// `ptr` is NULL or points to a struct that starts with a `u32` `struct_size`.
unsafe fn struct_size<T: Versioned>(
    ptr: *const T,
    value: &T,
    what: &str,
) -> Result<usize, Failure> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: every versioned struct starts with a u32 `struct_size`.
    let size = unsafe { (ptr as *const u32).read_unaligned() } as usize;
    let inside_a_field = value
        .fields()
        .iter()
        .any(|field| field.start < size && size < field.end);
    if !(4..=1 << 16).contains(&size) || inside_a_field {
        return Err(invalid(format!(
            "{what}.struct_size {size} is not the size of any version of this struct \
             (set it to sizeof, or start from the *_default() function)"
        )));
    }
    Ok(size)
}

/// A params struct read through its `struct_size`: fields past the given size keep their
/// defaults, bytes past our size are ignored (a newer header's fields). A size that ends
/// inside a field is refused: it cannot be an older header's `sizeof`.
///
/// # Safety
/// `ptr` is NULL or points to at least `struct_size` readable bytes.
pub(crate) unsafe fn read_struct<T: Versioned>(
    ptr: *const T,
    default: T,
    what: &str,
) -> Result<T, Failure> {
    // SAFETY: per this function's contract.
    let size = unsafe { struct_size(ptr, &default, what)? };
    let mut value = default;
    let count = size.min(std::mem::size_of::<T>());
    // SAFETY: `count` bytes are readable at `ptr` (the caller's size) and writable in `value`.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr as *const u8, &mut value as *mut T as *mut u8, count)
    };
    Ok(value)
}

/// Writes a result struct through the `struct_size` the caller set in it: only the fields
/// that size covers (an older header's struct is smaller); `struct_size` stays the caller's.
///
/// # Safety
/// `ptr` is NULL or points to at least `struct_size` writable bytes.
pub(crate) unsafe fn write_struct<T: Versioned>(
    ptr: *mut T,
    value: T,
    what: &str,
) -> Result<(), Failure> {
    // SAFETY: per this function's contract.
    let size = unsafe { struct_size(ptr, &value, what)? };
    let count = size.min(std::mem::size_of::<T>());
    let skip = std::mem::size_of::<u32>();
    // SAFETY: `count` bytes (at least the u32 skipped) are writable at `ptr` (the caller's
    // size) and readable in `value`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&value as *const T as *const u8).add(skip),
            (ptr as *mut u8).add(skip),
            count - skip,
        )
    };
    Ok(())
}

/// Writes a result to the caller's out-pointer.
///
/// # Safety
/// `out` is NULL or writable.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and writable per this function's contract.
    unsafe { out.write(value) };
    Ok(())
}
