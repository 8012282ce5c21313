//! The C ABI of ella, built as `libella.so` / `libella.a`. Its header `include/ella.h` is
//! generated from this file by cbindgen (`tests/header.rs` checks it is current).
//!
//! Conventions (stated in the header too):
//! - Every function that can fail returns an [`EllaStatus`]; `ella_last_error_message()`
//!   gives the text of the calling thread's last error. No Rust panic crosses the boundary.
//! - A model handle is immutable and may be shared by threads; a context is one job at a
//!   time. `ella_cancel` may be called from any thread.
//! - Params and request structs start with `struct_size`: fill them from the `*_default()`
//!   functions; the library reads only the fields the given size covers, so programs built
//!   against an older header keep working when fields are appended.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use ella_core::burn::tensor::{DType, TensorData};
use ella_core::limits::{MAX_IMAGE_SIDE, MAX_T5_TOKENS, MAX_WIDTH};
use ella_core::{
    Conditioning, Control, EllaPaths, Error, GenerateRequest, Hooks, Image, Lora, ModelPaths,
    Precision, SchedulerKind, SurMode, T5Precision, Threads, TokenMode, VaeDecode,
};

mod engine;
use engine::{Engine, HostPrompt};

/// Major version of the library and of this header.
pub const ELLA_VERSION_MAJOR: u32 = 0;
/// Minor version: new functions or fields, nothing removed.
pub const ELLA_VERSION_MINOR: u32 = 3;
/// Patch version: fixes only.
pub const ELLA_VERSION_PATCH: u32 = 0;

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
    /// `ella_cancel` stopped the generation; the context stays usable.
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

/// Pixel layout of an image.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EllaPixelFormat {
    Rgb8 = 0,
    /// RGB8 plus an opaque alpha channel (255).
    Rgba8 = 1,
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

/// Called after every denoising step, on the thread that runs `ella_generate`.
pub type EllaProgressCallback =
    Option<unsafe extern "C" fn(user_data: *mut c_void, step: u32, total: u32)>;

/// How to load a model. Start from `ella_model_default_params()`.
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
    /// A diffusers ControlNet folder for requests with a `control_image`; NULL for none.
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
}

/// Per-context settings. Start from `ella_context_default_params()`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EllaContextParams {
    /// `sizeof(ella_context_params)`.
    pub struct_size: u32,
    pub progress_callback: EllaProgressCallback,
    pub progress_user_data: *mut c_void,
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
    /// Prompt states from `ella_prompt_encode`, used instead of encoding `prompt` and
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

/// A float tensor owned by the library until `ella_tensor_free` (row-major).
#[repr(C)]
#[derive(Debug)]
pub struct EllaTensor {
    /// Number of dimensions used in `shape`.
    pub rank: u32,
    pub shape: [u64; 4],
    pub data: *mut f32,
}

/// A loaded model: T5, connector, U-Net, VAE. Share it between contexts and threads.
pub struct EllaModel {
    engine: Arc<dyn Engine>,
    log: Logger,
}

/// The T5 states of a prompt and its negative prompt, kept in host memory: generate from
/// them any number of times, also after `ella_model_free_text_encoder`.
pub struct EllaPrompt {
    states: HostPrompt,
}

/// One job's state: cancellation flag and progress callback. One call at a time: a second
/// call while one runs gets `ELLA_STATUS_BUSY` (`ella_cancel` excepted).
pub struct EllaContext {
    model: Arc<dyn Engine>,
    log: Logger,
    params: EllaContextParams,
    cancel: AtomicBool,
    busy: AtomicBool,
    /// Set by `ella_context_free` from the context's own progress callback: the running
    /// call frees the context when it returns.
    free_when_done: AtomicBool,
}

thread_local! {
    /// The generations running on this thread, innermost last, as (context, engine)
    /// addresses: a progress callback's calls into the library see them.
    static RUNNING: RefCell<Vec<(usize, usize)>> = const { RefCell::new(Vec::new()) };
}

fn address<T: ?Sized>(pointer: *const T) -> usize {
    pointer as *const () as usize
}

/// Refuses a call on `engine` from a progress callback of a generation running on the same
/// model: it would wait for (or re-enter) the generation it was called from.
fn refuse_inside_generation(engine: &Arc<dyn Engine>, what: &str) -> Result<(), Failure> {
    let engine = address(Arc::as_ptr(engine));
    match RUNNING.with(|running| running.borrow().iter().any(|&(_, e)| e == engine)) {
        true => Err(Failure(
            EllaStatus::Busy,
            format!(
                "{what} was called from a progress callback of a generation on the same model, \
                 which it would wait for; call it after ella_generate returns"
            ),
        )),
        false => Ok(()),
    }
}

/// A call running on a context: marks it busy (and running on this thread) until dropped,
/// however the call ends, a caught panic included.
struct Session<'a> {
    context: &'a EllaContext,
}

impl<'a> Session<'a> {
    fn begin(context: &'a EllaContext) -> Result<Self, Failure> {
        refuse_inside_generation(&context.model, "ella_generate")?;
        if context.busy.swap(true, Ordering::SeqCst) {
            return Err(Failure(
                EllaStatus::Busy,
                "another call is running on this context; use one context per thread".into(),
            ));
        }
        let entry = (
            address(context as *const EllaContext),
            address(Arc::as_ptr(&context.model)),
        );
        RUNNING.with(|running| running.borrow_mut().push(entry));
        Ok(Self { context })
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        RUNNING.with(|running| running.borrow_mut().pop());
        self.context.busy.store(false, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy)]
struct Logger {
    callback: EllaLogCallback,
    user_data: *mut c_void,
}

// SAFETY: the host promises (header) that its log callback and user data may be used from
// the threads it calls the library on; the library never calls them from its own threads.
unsafe impl Send for Logger {}
unsafe impl Sync for Logger {}
// SAFETY: the progress callback is only called from the thread running `ella_generate`.
unsafe impl Send for EllaContext {}
unsafe impl Sync for EllaContext {}

impl Logger {
    fn log(&self, level: EllaLogLevel, message: &str) {
        if let (Some(callback), Ok(text)) = (self.callback, CString::new(message)) {
            // SAFETY: a host-provided callback with the documented signature.
            unsafe { callback(level, text.as_ptr(), self.user_data) };
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// A failure: the status and the message for `ella_last_error_message`.
struct Failure(EllaStatus, String);

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let status = match &error {
            Error::Io { .. } | Error::Write { .. } | Error::FileChanged { .. } => EllaStatus::Io,
            Error::InvalidSafetensors { .. }
            | Error::InvalidJson { .. }
            | Error::InvalidConfig { .. }
            | Error::MissingTensor { .. }
            | Error::ShapeMismatch { .. }
            | Error::UnsupportedDtype { .. }
            | Error::UnexpectedTensor { .. }
            | Error::Tokenizer { .. }
            | Error::NonFiniteWeights { .. }
            | Error::IncompatibleModels(_) => EllaStatus::InvalidModel,
            Error::UnsupportedPrecision { .. } | Error::UnsupportedModel { .. } => {
                EllaStatus::Unsupported
            }
            Error::InvalidInput(_) => EllaStatus::InvalidArgument,
            Error::OutOfMemory { .. } => EllaStatus::OutOfMemory,
            Error::NonFinite { .. } => EllaStatus::Numerical,
            Error::Cancelled => EllaStatus::Cancelled,
        };
        Failure(status, error.to_string())
    }
}

fn invalid(message: impl Into<String>) -> Failure {
    Failure(EllaStatus::InvalidArgument, message.into())
}

/// Runs `body`, turning errors and panics into a status and the thread's error message.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> EllaStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_error("");
            EllaStatus::Ok
        }
        Ok(Err(Failure(status, message))) => {
            set_error(&message);
            status
        }
        Err(panic) => {
            set_error(&panic_message(&*panic));
            EllaStatus::Internal
        }
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (please report): {what}")
}

/// A required UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, NUL-terminated per the caller's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .map_err(|_| invalid(format!("{what} is not valid UTF-8")))
}

/// A `struct_size`-versioned struct: where its fields lie, so that a size that ends inside
/// one (half a pointer) is refused instead of read.
trait Versioned: Copy {
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
});
versioned!(EllaContextParams {
    struct_size,
    progress_callback,
    progress_user_data,
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
});

/// A params struct read through its `struct_size`: fields past the given size keep their
/// defaults, bytes past our size are ignored (a newer header's fields). A size that ends
/// inside a field is refused: it cannot be an older header's `sizeof`.
///
/// # Safety
/// `ptr` is NULL or points to at least `struct_size` readable bytes.
unsafe fn read_struct<T: Versioned>(ptr: *const T, default: T, what: &str) -> Result<T, Failure> {
    if ptr.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: every params struct starts with a u32 `struct_size`.
    let size = unsafe { (ptr as *const u32).read_unaligned() } as usize;
    let inside_a_field = default
        .fields()
        .iter()
        .any(|field| field.start < size && size < field.end);
    if !(4..=1 << 16).contains(&size) || inside_a_field {
        return Err(invalid(format!(
            "{what}.struct_size {size} is not the size of any version of this struct \
             (set it to sizeof, or start from the *_default() function)"
        )));
    }
    let mut value = default;
    let count = size.min(std::mem::size_of::<T>());
    // SAFETY: `count` bytes are readable at `ptr` (the caller's size) and writable in `value`.
    unsafe {
        std::ptr::copy_nonoverlapping(ptr as *const u8, &mut value as *mut T as *mut u8, count)
    };
    Ok(value)
}

fn write_out<T>(out: *mut T, value: T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        return Err(invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-null, and the caller passes a writable location.
    unsafe { out.write(value) };
    Ok(())
}

/// The library version as "MAJOR.MINOR.PATCH". The string is static: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn ella_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the calling thread's last failed call ("" after a success). Valid until
/// the thread's next call into the library; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn ella_last_error_message() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Defaults: CPU backend, no logger, all paths NULL (to be set).
#[unsafe(no_mangle)]
pub extern "C" fn ella_model_default_params() -> EllaModelParams {
    EllaModelParams {
        struct_size: std::mem::size_of::<EllaModelParams>() as u32,
        t5_path: std::ptr::null(),
        ella_path: std::ptr::null(),
        ella_config_path: std::ptr::null(),
        sd_path: std::ptr::null(),
        backend: EllaBackend::Cpu as u32,
        precision: EllaPrecision::F32 as u32,
        log_callback: None,
        log_user_data: std::ptr::null_mut(),
        t5_precision: EllaT5Precision::Auto as u32,
        sd_config_path: std::ptr::null(),
        vae_path: std::ptr::null(),
        load_clip: 0,
        controlnet_path: std::ptr::null(),
        sur_adapter_path: std::ptr::null(),
        memory_budget: 0,
        kernel_cache_path: std::ptr::null(),
        n_threads: 0,
    }
}

/// Loads the models. On success `*out_model` owns them; free with `ella_model_free`.
///
/// # Safety
/// `params` points to an `ella_model_params` whose strings are NUL-terminated; `out_model`
/// is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_load(
    params: *const EllaModelParams,
    out_model: *mut *mut EllaModel,
) -> EllaStatus {
    guard(|| {
        if out_model.is_null() {
            return Err(invalid("out_model is NULL"));
        }
        // SAFETY: per this function's contract.
        let params = unsafe { read_struct(params, ella_model_default_params(), "params")? };
        let path = |ptr, what| unsafe { text(ptr, what) }.map(PathBuf::from);
        let optional_path = |ptr: *const c_char, what| match ptr.is_null() {
            true => Ok(None),
            false => path(ptr, what).map(Some),
        };
        let ella = match (params.t5_path.is_null(), params.ella_path.is_null()) {
            (true, true) => None,
            _ => Some(EllaPaths {
                t5: path(params.t5_path, "params.t5_path")?,
                connector: path(params.ella_path, "params.ella_path")?,
                config: optional_path(params.ella_config_path, "params.ella_config_path")?,
            }),
        };
        let clip = match params.load_clip {
            0 => false,
            1 => true,
            other => return Err(invalid(format!("params.load_clip {other} is not 0 or 1"))),
        };
        if ella.is_none() && !clip {
            return Err(invalid(
                "params.t5_path and params.ella_path are NULL and load_clip is 0: no text encoder",
            ));
        }
        let paths = ModelPaths {
            sd: path(params.sd_path, "params.sd_path")?,
            sd_config: optional_path(params.sd_config_path, "params.sd_config_path")?,
            vae: optional_path(params.vae_path, "params.vae_path")?,
            ella,
            clip,
            loras: Vec::new(),
            controlnet: optional_path(params.controlnet_path, "params.controlnet_path")?,
            sur_adapter: optional_path(params.sur_adapter_path, "params.sur_adapter_path")?,
        };
        let dtype = match params.precision {
            x if x == EllaPrecision::F32 as u32 => DType::F32,
            x if x == EllaPrecision::F16 as u32 => DType::F16,
            x if x == EllaPrecision::Bf16 as u32 => DType::BF16,
            other => {
                return Err(invalid(format!(
                    "params.precision {other} is not an ella_precision"
                )));
            }
        };
        let text_encoder = match params.t5_precision {
            x if x == EllaT5Precision::Auto as u32 => T5Precision::uniform(dtype)?,
            x if x == EllaT5Precision::F32 as u32 => T5Precision::F32,
            x if x == EllaT5Precision::F16 as u32 => T5Precision::F16,
            x if x == EllaT5Precision::F16WoF32 as u32 => T5Precision::F16WoF32,
            x if x == EllaT5Precision::Bf16 as u32 => T5Precision::BF16,
            other => {
                return Err(invalid(format!(
                    "params.t5_precision {other} is not an ella_t5_precision"
                )));
            }
        };
        let precision = Precision {
            text_encoder,
            diffusion: dtype,
        };
        let log = Logger {
            callback: params.log_callback,
            user_data: params.log_user_data,
        };
        let start = Instant::now();
        let budget = (params.memory_budget > 0).then_some(params.memory_budget);
        let backend = params.backend;
        let kernel_cache = optional_path(params.kernel_cache_path, "params.kernel_cache_path")?;
        let threads = match params.n_threads {
            0 => Threads::all_cores(),
            n => Threads::new(n as usize)?,
        };
        // Loading runs deep (each model's blocks), deeper still in unoptimised builds: on a
        // thread of its own with a large stack, a host thread's small stack cannot overflow.
        let engine = std::thread::Builder::new()
            .name("ella-load".into())
            .stack_size(ella_core::threads::STACK_BYTES)
            .spawn(move || engine::load(backend, &paths, precision, budget, kernel_cache, threads))
            .map_err(|e| Failure(EllaStatus::Internal, format!("cannot start a thread: {e}")))?
            .join()
            .map_err(|panic| Failure(EllaStatus::Internal, panic_message(&*panic)))??;
        log.log(
            EllaLogLevel::Info,
            &format!("ella: loaded the models in {:.2?}", start.elapsed()),
        );
        let model = Box::new(EllaModel {
            engine: Arc::from(engine),
            log,
        });
        write_out(out_model, Box::into_raw(model), "out_model")
    })
}

/// Frees a model. Contexts made from it keep it alive until they are freed. NULL is a no-op.
///
/// # Safety
/// `model` is NULL or a handle from `ella_model_load`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_free(model: *mut EllaModel) {
    if !model.is_null() {
        // SAFETY: a handle from ella_model_load, freed once.
        drop(unsafe { Box::from_raw(model) });
    }
}

/// Defaults: no progress callback.
#[unsafe(no_mangle)]
pub extern "C" fn ella_context_default_params() -> EllaContextParams {
    EllaContextParams {
        struct_size: std::mem::size_of::<EllaContextParams>() as u32,
        progress_callback: None,
        progress_user_data: std::ptr::null_mut(),
    }
}

/// Makes a context (one job at a time) on a model. `params` may be NULL for the defaults.
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
            true => ella_context_default_params(),
            // SAFETY: per this function's contract.
            false => unsafe { read_struct(params, ella_context_default_params(), "params")? },
        };
        let context = Box::new(EllaContext {
            model: Arc::clone(&model.engine),
            log: model.log,
            params,
            cancel: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            free_when_done: AtomicBool::new(false),
        });
        write_out(out_context, Box::into_raw(context), "out_context")
    })
}

/// Frees a context. NULL is a no-op. While a call runs on it from another thread, cancels
/// that call and waits for it to return; from the context's own progress callback, the
/// running call frees the context when it returns.
///
/// # Safety
/// `context` is NULL or a handle from `ella_context_new`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_context_free(context: *mut EllaContext) {
    // SAFETY: NULL or a live handle.
    let Some(live) = (unsafe { context.as_ref() }) else {
        return;
    };
    if live.busy.load(Ordering::SeqCst) {
        let here = address(context as *const EllaContext);
        if RUNNING.with(|running| running.borrow().iter().any(|&(c, _)| c == here)) {
            live.free_when_done.store(true, Ordering::SeqCst);
            return;
        }
        live.cancel.store(true, Ordering::SeqCst);
        while live.busy.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    // SAFETY: a handle from ella_context_new, freed once, no call running on it.
    drop(unsafe { Box::from_raw(context) });
}

/// Asks the generation running on `context` to stop: it returns `ELLA_STATUS_CANCELLED`
/// within one model block (a U-Net block, a VAE level or tile, a T5 layer), and the context
/// stays usable. Safe from any thread and from the progress callback; no effect when
/// nothing runs.
///
/// # Safety
/// `context` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_cancel(context: *const EllaContext) {
    // SAFETY: NULL or a live handle; only the atomic flag is touched.
    if let Some(context) = unsafe { context.as_ref() } {
        context.cancel.store(true, Ordering::SeqCst);
    }
}

/// Defaults of the official demo: 512×512, 25 steps, guidance 10, seed 1000, DPM-Solver++
/// 2M, flexible tokens, RGB8. `prompt` must still be set.
#[unsafe(no_mangle)]
pub extern "C" fn ella_generate_request_default() -> EllaGenerateRequest {
    let d = GenerateRequest::default();
    EllaGenerateRequest {
        struct_size: std::mem::size_of::<EllaGenerateRequest>() as u32,
        prompt: std::ptr::null(),
        negative_prompt: std::ptr::null(),
        width: d.width as u32,
        height: d.height as u32,
        steps: d.steps as u32,
        guidance_scale: d.guidance_scale,
        seed: d.seed,
        scheduler: EllaScheduler::DpmSolverMultistep as u32,
        max_tokens: 0,
        pixel_format: EllaPixelFormat::Rgb8 as u32,
        vae_decode: EllaVaeDecode::Whole as u32,
        prompt_cache: std::ptr::null(),
        conditioning: EllaConditioning::Ella as u32,
        init_image: std::ptr::null(),
        strength: 0.8,
        control_image: std::ptr::null(),
        control_scale: 1.0,
        control_start: 0.0,
        control_end: 1.0,
        sur_weight: 0.1,
        sur_mode: EllaSurMode::Faithful as u32,
        init_image_size: 0,
        control_image_size: 0,
    }
}

/// An `ella_generate_request.max_tokens` as a token mode.
fn token_mode(max_tokens: u32) -> TokenMode {
    match max_tokens {
        0 => TokenMode::Flexible,
        n => TokenMode::Fixed(n as usize),
    }
}

/// Bytes per pixel of an `ella_pixel_format`.
fn channels(format: u32) -> Result<u32, Failure> {
    match format {
        x if x == EllaPixelFormat::Rgb8 as u32 => Ok(3),
        x if x == EllaPixelFormat::Rgba8 as u32 => Ok(4),
        other => Err(invalid(format!(
            "pixel format {other} is not an ella_pixel_format"
        ))),
    }
}

/// An RGB8 image of the request's size from `size` bytes at `pixels` (NULL: none).
///
/// # Safety
/// `pixels` is NULL or points to `size` readable bytes.
unsafe fn host_image(
    pixels: *const u8,
    size: usize,
    request: &EllaGenerateRequest,
    what: &str,
) -> Result<Option<Image>, Failure> {
    if pixels.is_null() {
        return Ok(None);
    }
    let (width, height) = (request.width as usize, request.height as usize);
    if width == 0 || height == 0 || width.max(height) > MAX_IMAGE_SIDE {
        return Err(invalid(format!(
            "request.{what} needs a size of 1 to {MAX_IMAGE_SIDE} a side, not {width}×{height}"
        )));
    }
    let expected = width * height * 3;
    if size != expected {
        return Err(invalid(format!(
            "request.{what}_size is {size} bytes; a {width}×{height} RGB8 image is {expected}"
        )));
    }
    // SAFETY: `size` readable bytes, per this function's contract.
    let pixels = unsafe { std::slice::from_raw_parts(pixels, size) };
    Ok(Some(Image {
        width,
        height,
        pixels: pixels.to_vec(),
    }))
}

/// Runs one request on a context; returns the pixels in the request's format. Frees the
/// context afterwards when its progress callback asked to (`ella_context_free`).
///
/// # Safety
/// `context` is a live handle; `request` points to a valid request.
unsafe fn run(
    context: *mut EllaContext,
    request: *const EllaGenerateRequest,
) -> Result<(Vec<u8>, u32, u32, u32), Failure> {
    // SAFETY: NULL or a live handle.
    let live = unsafe { context.as_ref() }.ok_or_else(|| invalid("context is NULL"))?;
    let session = Session::begin(live)?;
    // SAFETY: per the caller's contract.
    let result = unsafe { run_request(live, request) };
    let free = live.free_when_done.load(Ordering::SeqCst);
    drop(session);
    if free {
        // SAFETY: the handle's last use: `ella_context_free` left it to this call.
        drop(unsafe { Box::from_raw(context) });
    }
    result
}

/// [`run`]'s work, on a context marked busy.
///
/// # Safety
/// `request` points to a valid request.
unsafe fn run_request(
    context: &EllaContext,
    request: *const EllaGenerateRequest,
) -> Result<(Vec<u8>, u32, u32, u32), Failure> {
    // SAFETY: per the caller's contract.
    let request = unsafe { read_struct(request, ella_generate_request_default(), "request")? };
    let channels = channels(request.pixel_format)?;
    // SAFETY: NULL or a live handle, per the caller's contract.
    let cache = unsafe { request.prompt_cache.as_ref() };
    let optional_text = |ptr: *const c_char, what| match ptr.is_null() {
        true => Ok(String::new()),
        // SAFETY: strings per the caller's contract.
        false => unsafe { text(ptr, what) }.map(str::to_string),
    };
    // SAFETY (both): the caller passes buffers of the sizes it gives (header).
    let init_image = unsafe {
        host_image(
            request.init_image,
            request.init_image_size,
            &request,
            "init_image",
        )
    }?;
    let control_image = unsafe {
        host_image(
            request.control_image,
            request.control_image_size,
            &request,
            "control_image",
        )
    }?;
    let generate = GenerateRequest {
        prompt: match cache {
            Some(_) => optional_text(request.prompt, "request.prompt")?,
            // SAFETY: strings per the caller's contract.
            None => unsafe { text(request.prompt, "request.prompt") }?.to_string(),
        },
        negative_prompt: optional_text(request.negative_prompt, "request.negative_prompt")?,
        width: request.width as usize,
        height: request.height as usize,
        steps: request.steps as usize,
        guidance_scale: request.guidance_scale,
        seed: request.seed,
        batch_size: 1,
        token_mode: token_mode(request.max_tokens),
        scheduler: match request.scheduler {
            x if x == EllaScheduler::DpmSolverMultistep as u32 => SchedulerKind::DpmSolverMultistep,
            x if x == EllaScheduler::DpmSolverMultistepKarras as u32 => {
                SchedulerKind::DpmSolverMultistepKarras
            }
            x if x == EllaScheduler::Euler as u32 => SchedulerKind::Euler,
            x if x == EllaScheduler::Ddim as u32 => SchedulerKind::Ddim,
            other => {
                return Err(invalid(format!(
                    "request.scheduler {other} is not an ella_scheduler"
                )));
            }
        },
        timesteps: None,
        init_latents: None,
        vae_decode: match request.vae_decode {
            x if x == EllaVaeDecode::Whole as u32 => VaeDecode::Whole,
            x if x == EllaVaeDecode::Sliced as u32 => VaeDecode::Sliced,
            x if x == EllaVaeDecode::Tiled as u32 => VaeDecode::Tiled,
            other => {
                return Err(invalid(format!(
                    "request.vae_decode {other} is not an ella_vae_decode"
                )));
            }
        },
        conditioning: match request.conditioning {
            x if x == EllaConditioning::Ella as u32 => Conditioning::Ella,
            x if x == EllaConditioning::EllaClip as u32 => Conditioning::EllaClip,
            x if x == EllaConditioning::Clip as u32 => Conditioning::Clip,
            x if x == EllaConditioning::ClipSur as u32 => Conditioning::ClipSur,
            other => {
                return Err(invalid(format!(
                    "request.conditioning {other} is not an ella_conditioning"
                )));
            }
        },
        init_image,
        strength: request.strength,
        sur_weight: request.sur_weight,
        sur_mode: match request.sur_mode {
            x if x == EllaSurMode::Faithful as u32 => SurMode::Faithful,
            x if x == EllaSurMode::PerToken as u32 => SurMode::PerToken,
            other => {
                return Err(invalid(format!(
                    "request.sur_mode {other} is not an ella_sur_mode"
                )));
            }
        },
        control: control_image.map(|image| Control {
            image,
            scale: request.control_scale,
            start: request.control_start,
            end: request.control_end,
        }),
    };
    context.cancel.store(false, Ordering::SeqCst);
    let params = context.params;
    let mut hooks = Hooks {
        cancel: Some(&context.cancel),
        progress: params.progress_callback.map(|callback| {
            Box::new(move |step: usize, total: usize| {
                // SAFETY: the host's callback with the documented signature.
                unsafe { callback(params.progress_user_data, step as u32, total as u32) }
            }) as ella_core::pipeline::ProgressFn
        }),
        ..Hooks::default()
    };
    let start = Instant::now();
    let result = context
        .model
        .generate(&generate, cache.map(|c| &c.states), &mut hooks);
    drop(hooks);
    let image = result?
        .into_iter()
        .next()
        .ok_or_else(|| Failure(EllaStatus::Internal, "no image".into()))?;
    context.log.log(
        EllaLogLevel::Info,
        &format!(
            "ella: generated {}×{} in {:.2?}",
            image.width,
            image.height,
            start.elapsed()
        ),
    );
    let pixels = match channels {
        3 => image.pixels,
        _ => image
            .pixels
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
    };
    Ok((pixels, image.width as u32, image.height as u32, channels))
}

/// Generates an image; on success `*out_image` owns it (free with `ella_image_free`).
///
/// # Safety
/// `context` is a live handle, `request` a valid request, `out_image` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_generate(
    context: *mut EllaContext,
    request: *const EllaGenerateRequest,
    out_image: *mut *mut EllaImage,
) -> EllaStatus {
    guard(|| {
        if out_image.is_null() {
            return Err(invalid("out_image is NULL"));
        }
        // SAFETY: per this function's contract.
        let (pixels, width, height, channels) = unsafe { run(context, request)? };
        let pixels = Box::into_raw(pixels.into_boxed_slice()) as *mut u8;
        let image = Box::new(EllaImage {
            width,
            height,
            channels,
            pixels,
        });
        write_out(out_image, Box::into_raw(image), "out_image")
    })
}

/// Generates an image into the caller's buffer: `height` rows of `width * channels` bytes,
/// each starting `row_pitch` bytes after the previous one. `ELLA_STATUS_BUFFER_TOO_SMALL`
/// (checked before any work) when `row_pitch` or `buffer_size` cannot hold it.
///
/// # Safety
/// `buffer` points to `buffer_size` writable bytes; the rest as `ella_generate`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_generate_into(
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
        let row = peek.width as usize * channels(peek.pixel_format)? as usize;
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
        let (pixels, _, height, _) = unsafe { run(context, request)? };
        for (y, source) in pixels.chunks_exact(row).take(height as usize).enumerate() {
            // SAFETY: row y lies within buffer_size, checked above.
            unsafe {
                std::ptr::copy_nonoverlapping(source.as_ptr(), buffer.add(y * row_pitch), row)
            };
        }
        Ok(())
    })
}

/// Frees an image from `ella_generate`. NULL is a no-op.
///
/// # Safety
/// `image` is NULL or from `ella_generate`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_image_free(image: *mut EllaImage) {
    if image.is_null() {
        return;
    }
    // SAFETY: allocated by ella_generate as a boxed image and a boxed slice of this length.
    unsafe {
        let image = Box::from_raw(image);
        let len = (image.width * image.height * image.channels) as usize;
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
            image.pixels,
            len,
        )));
    }
}

fn tensor_out(data: TensorData, out: *mut *mut EllaTensor) -> Result<(), Failure> {
    let dims = data.shape.clone();
    let values: Vec<f32> = data
        .to_vec()
        .map_err(|e| Failure(EllaStatus::Internal, format!("{e:?}")))?;
    let data = Box::into_raw(values.into_boxed_slice()) as *mut f32;
    let tensor = Box::new(EllaTensor {
        rank: 3,
        shape: [dims[0] as u64, dims[1] as u64, dims[2] as u64, 0],
        data,
    });
    write_out(out, Box::into_raw(tensor), "out_tensor")
}

/// T5 hidden states of one prompt, `[1, tokens, d_model]` (for hosts that run their own
/// U-Net). `max_tokens` as in the request (0 = flexible). Free with `ella_tensor_free`.
///
/// # Safety
/// `model` is a live handle; `prompt` NUL-terminated; `out_tensor` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_encode_prompt(
    model: *const EllaModel,
    prompt: *const c_char,
    max_tokens: u32,
    out_tensor: *mut *mut EllaTensor,
) -> EllaStatus {
    guard(|| {
        if out_tensor.is_null() {
            return Err(invalid("out_tensor is NULL"));
        }
        // SAFETY: per this function's contract.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        refuse_inside_generation(&model.engine, "ella_encode_prompt")?;
        let prompt = unsafe { text(prompt, "prompt")? };
        tensor_out(
            model.engine.encode(prompt, token_mode(max_tokens))?,
            out_tensor,
        )
    })
}

/// One connector step: T5 states `[1, tokens, width]` (row-major floats) at a U-Net
/// timestep → condition tokens `[1, num_latents, cross_attention_dim]`. Free the result with
/// `ella_tensor_free`.
///
/// # Safety
/// `states` points to `tokens * width` floats; the rest as `ella_encode_prompt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_connector_step(
    model: *const EllaModel,
    states: *const f32,
    tokens: usize,
    width: usize,
    timestep: f32,
    out_tensor: *mut *mut EllaTensor,
) -> EllaStatus {
    guard(|| {
        if out_tensor.is_null() || states.is_null() {
            return Err(invalid("states and out_tensor must not be NULL"));
        }
        // SAFETY: NULL or a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        refuse_inside_generation(&model.engine, "ella_connector_step")?;
        if !(1..=MAX_T5_TOKENS).contains(&tokens) || !(1..=MAX_WIDTH).contains(&width) {
            return Err(invalid(format!(
                "{tokens} tokens of width {width}: T5 states have 1 to {MAX_T5_TOKENS} tokens \
                 of 1 to {MAX_WIDTH}"
            )));
        }
        let count = tokens * width;
        // SAFETY: `count` readable floats per this function's contract.
        let values = unsafe { std::slice::from_raw_parts(states, count) }.to_vec();
        let states = TensorData::new(values, [1, tokens, width]);
        tensor_out(model.engine.connector_step(states, timestep)?, out_tensor)
    })
}

/// Encodes a prompt and its negative prompt (NULL means "") once, with T5 (while loaded) and
/// CLIP (when loaded), for any conditioning: pass the result as
/// `ella_generate_request.prompt_cache` to generate from it any number of times, also after
/// `ella_model_free_text_encoder`. `max_tokens` as in the request. Free with
/// `ella_prompt_free`.
///
/// # Safety
/// `model` is a live handle; the strings are NUL-terminated; `out_prompt` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_prompt_encode(
    model: *const EllaModel,
    prompt: *const c_char,
    negative_prompt: *const c_char,
    max_tokens: u32,
    out_prompt: *mut *mut EllaPrompt,
) -> EllaStatus {
    guard(|| {
        if out_prompt.is_null() {
            return Err(invalid("out_prompt is NULL"));
        }
        // SAFETY: per this function's contract.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        refuse_inside_generation(&model.engine, "ella_prompt_encode")?;
        let prompt = unsafe { text(prompt, "prompt")? };
        let negative = match negative_prompt.is_null() {
            true => "",
            false => unsafe { text(negative_prompt, "negative_prompt")? },
        };
        let states = model
            .engine
            .encode_prompts(prompt, negative, token_mode(max_tokens))?;
        write_out(
            out_prompt,
            Box::into_raw(Box::new(EllaPrompt { states })),
            "out_prompt",
        )
    })
}

/// Frees prompt states. NULL is a no-op.
///
/// # Safety
/// `prompt` is NULL or from `ella_prompt_encode`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_prompt_free(prompt: *mut EllaPrompt) {
    if !prompt.is_null() {
        // SAFETY: a handle from ella_prompt_encode, freed once.
        drop(unsafe { Box::from_raw(prompt) });
    }
}

/// Drops the model's T5 encoder (about 2.4 GB in F16 for flan-t5-xl) and returns its memory
/// to the device. Afterwards generation needs `prompt_cache` from `ella_prompt_encode`, and
/// `ella_encode_prompt` fails. Waits for calls running on the model's contexts to finish;
/// from a progress callback of a generation on this model it returns `ELLA_STATUS_BUSY`.
///
/// # Safety
/// `model` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_free_text_encoder(model: *const EllaModel) -> EllaStatus {
    guard(|| {
        // SAFETY: NULL or a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        refuse_inside_generation(&model.engine, "ella_model_free_text_encoder")?;
        model.engine.free_text_encoder();
        Ok(())
    })
}

/// Applies `count` LoRA files (kohya / A1111 or diffusers PEFT `.safetensors`) with their
/// scales to the model's U-Net (and CLIP, when loaded), replacing the LoRAs applied before;
/// `count` 0 restores the original weights. Only the weights the LoRAs touch are rebuilt, from
/// the original values: nothing is reloaded. All files are checked first; on an error (a
/// LoRA for another architecture: `ELLA_STATUS_INVALID_MODEL`) the weights stay as they were.
/// Entries that match no weight are reported through the model's log callback as warnings.
/// The files are read while generations go on; the weights change once calls running on
/// the model's contexts have finished (never during one). From a progress callback of a
/// generation on this model it returns `ELLA_STATUS_BUSY`.
///
/// # Safety
/// `model` is NULL or a live handle; `paths` and `scales` point to `count` NUL-terminated
/// strings and floats (either may be NULL when `count` is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_set_loras(
    model: *const EllaModel,
    paths: *const *const c_char,
    scales: *const f32,
    count: usize,
) -> EllaStatus {
    guard(|| {
        // SAFETY: NULL or a live handle.
        let model = unsafe { model.as_ref() }.ok_or_else(|| invalid("model is NULL"))?;
        refuse_inside_generation(&model.engine, "ella_model_set_loras")?;
        if count > 0 && (paths.is_null() || scales.is_null()) {
            return Err(invalid("paths and scales must not be NULL when count > 0"));
        }
        if count > 1024 {
            return Err(invalid(format!("{count} LoRAs is absurdly many")));
        }
        let loras = (0..count)
            .map(|i| {
                // SAFETY: `count` pointers and floats, per this function's contract.
                let (path, scale) = unsafe { (*paths.add(i), *scales.add(i)) };
                let path = unsafe { text(path, "paths[i]") }?;
                Ok(Lora::new(path, scale))
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        let report = model.engine.set_loras(&loras)?;
        for entry in &report.unmatched {
            model.log.log(
                EllaLogLevel::Warning,
                &format!("LoRA entry matches no weight: {entry}"),
            );
        }
        if report.skipped_text_encoder > 0 {
            model.log.log(
                EllaLogLevel::Warning,
                &format!(
                    "{} LoRA text-encoder entries skipped: CLIP is not loaded",
                    report.skipped_text_encoder
                ),
            );
        }
        model.log.log(
            EllaLogLevel::Info,
            &format!("{} LoRA(s) change {} weights", loras.len(), report.updated),
        );
        Ok(())
    })
}

/// Frees a tensor. NULL is a no-op.
///
/// # Safety
/// `tensor` is NULL or from this library, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_tensor_free(tensor: *mut EllaTensor) {
    if tensor.is_null() {
        return;
    }
    // SAFETY: allocated by tensor_out as a boxed tensor and a boxed slice of this length.
    unsafe {
        let tensor = Box::from_raw(tensor);
        let len = tensor.shape[..tensor.rank as usize].iter().product::<u64>() as usize;
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
            tensor.data,
            len,
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_the_header_constants() {
        let version = unsafe { CStr::from_ptr(ella_version()) };
        let expected = format!("{ELLA_VERSION_MAJOR}.{ELLA_VERSION_MINOR}.{ELLA_VERSION_PATCH}");
        assert_eq!(version.to_str().unwrap(), expected);
    }

    #[test]
    fn the_model_handle_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EllaModel>();
        assert_send_sync::<EllaPrompt>();
    }
}
