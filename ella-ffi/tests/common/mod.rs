//! Helpers of the C ABI tests: the tiny test models' paths as C strings, owners of the C
//! handles that free them when they go out of scope (also when an assertion fails), a
//! model loaded from the tiny models, a small request.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::ptr::{null, null_mut};

use ella::*;

#[cfg(feature = "wgpu")]
#[path = "../../../ella-core/tests/common/wgpu_skip.rs"]
mod wgpu_skip;
#[cfg(feature = "wgpu")]
#[allow(unused_imports)] // not every test binary has wgpu tests
pub use wgpu_skip::wgpu_usable;

pub fn fixture(path: &str) -> CString {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ella-core/tests/fixtures")
        .join(path);
    CString::new(path.to_str().unwrap()).unwrap()
}

pub fn last_error() -> String {
    unsafe { CStr::from_ptr(ella_last_error_message()) }
        .to_str()
        .unwrap()
        .to_string()
}

/// A test-only owner of one C handle: frees it with the library's free function when it is
/// dropped (NULL frees nothing).
macro_rules! owner {
    ($(#[$doc:meta])* $owner:ident($handle:ty), $free:ident) => {
        $(#[$doc])*
        #[repr(transparent)]
        pub struct $owner(pub *mut $handle);

        impl $owner {
            /// An owner of no handle yet, whose slot [`Self::out`] gives to a C call.
            pub fn null() -> Self {
                Self(null_mut())
            }

            /// The handle, still owned.
            pub fn ptr(&self) -> *mut $handle {
                self.0
            }

            pub fn is_null(&self) -> bool {
                self.0.is_null()
            }

            /// The slot for a C call's out-pointer. It must be empty: a slot is filled once,
            /// so a failed call that wrote a handle anyway fails the next use of the slot.
            pub fn out(&mut self) -> *mut *mut $handle {
                assert!(
                    self.0.is_null(),
                    "this {} already holds a handle (a failed call wrote one?)",
                    stringify!($owner)
                );
                &mut self.0
            }

            /// Gives the handle up: the caller frees it (for tests of freeing itself).
            pub fn into_raw(self) -> *mut $handle {
                let handle = self.0;
                std::mem::forget(self);
                handle
            }

            fn free(&mut self) {
                // SAFETY: NULL or a handle of this type that nothing else frees.
                unsafe { $free(std::mem::replace(&mut self.0, null_mut())) };
            }
        }

        impl Drop for $owner {
            fn drop(&mut self) {
                self.free();
            }
        }
    };
}

owner!(
    /// An `ella_model`, freed with `ella_model_free`.
    Model(EllaModel),
    ella_model_free
);
owner!(
    /// An `ella_context`, freed with `ella_context_free`.
    Context(EllaContext),
    ella_context_free
);
owner!(
    /// An `ella_image`, freed with `ella_image_free`.
    Image(EllaImage),
    ella_image_free
);
owner!(
    /// An `ella_prompt`, freed with `ella_prompt_free`.
    Prompt(EllaPrompt),
    ella_prompt_free
);
owner!(
    /// An `ella_tensor`, freed with `ella_tensor_free`.
    Tensor(EllaTensor),
    ella_tensor_free
);
owner!(
    /// An `ella_job`, freed with `ella_job_free`.
    Job(EllaJob),
    ella_job_free
);

// SAFETY: the C API lets any number of threads use a model at once (`ella.h`, "Threads").
unsafe impl Send for Model {}
// SAFETY: as above.
unsafe impl Sync for Model {}

impl Model {
    /// Loads `params` or fails with the library's message.
    pub fn load(params: &EllaModelParams) -> Model {
        let model = Model::try_load(params)
            .unwrap_or_else(|status| panic!("ella_model_load: {status:?}: {}", last_error()));
        assert!(!model.is_null());
        model
    }

    /// Loads `params`; on failure, the status (and a handle written anyway is freed).
    pub fn try_load(params: &EllaModelParams) -> Result<Model, EllaStatus> {
        let mut model = Model::null();
        match unsafe { ella_model_load(params, model.out()) } {
            EllaStatus::Ok => Ok(model),
            status => Err(status),
        }
    }
}

impl Context {
    /// A context on `model` with the default parameters (`params` NULL).
    pub fn new(model: &Model) -> Context {
        let mut ctx = Context::null();
        assert_eq!(
            unsafe { ella_context_new(model.ptr(), null(), ctx.out()) },
            EllaStatus::Ok,
            "{}",
            last_error()
        );
        ctx
    }

    /// A context on `model` with `params`, or fails with the library's message.
    pub fn with_params(model: &Model, params: &EllaContextParams) -> Context {
        Context::try_with_params(model, params)
            .unwrap_or_else(|status| panic!("ella_context_new: {status:?}: {}", last_error()))
    }

    /// A context on `model` with `params`; on failure, the status (and a handle written
    /// anyway is freed).
    pub fn try_with_params(
        model: &Model,
        params: &EllaContextParams,
    ) -> Result<Context, EllaStatus> {
        let mut ctx = Context::null();
        match unsafe { ella_context_new(model.ptr(), params, ctx.out()) } {
            EllaStatus::Ok => Ok(ctx),
            status => Err(status),
        }
    }

    /// `ella_context_generate`: the image, or the status (and an image written anyway is
    /// freed).
    pub fn generate(&self, request: &EllaGenerateRequest) -> Result<Image, EllaStatus> {
        let mut image = Image::null();
        match unsafe { ella_context_generate(self.ptr(), request, image.out()) } {
            EllaStatus::Ok => Ok(image),
            status => Err(status),
        }
    }

    /// The status of `ella_context_generate` (its image freed).
    pub fn status_of(&self, request: &EllaGenerateRequest) -> EllaStatus {
        self.generate(request).err().unwrap_or(EllaStatus::Ok)
    }

    /// [`generate_32`] on this context.
    pub fn generate_32(&self, request: &EllaGenerateRequest) -> Result<Vec<u8>, String> {
        generate_32(self.ptr(), request)
    }
}

impl Image {
    /// The image; panics on an owner of none.
    pub fn get(&self) -> &EllaImage {
        unsafe { self.0.as_ref() }.expect("an image")
    }

    /// Its `height` rows of `width * channels` bytes.
    pub fn pixels(&self) -> &[u8] {
        let image = self.get();
        let len = (image.width * image.height * image.channels) as usize;
        unsafe { std::slice::from_raw_parts(image.pixels, len) }
    }
}

impl Prompt {
    /// `prompt` and `negative` (NULL if none) encoded on `model` with a flexible token
    /// count, or fails with the library's message.
    pub fn new(model: &Model, prompt: &CStr, negative: Option<&CStr>) -> Prompt {
        let negative = negative.map_or(null(), CStr::as_ptr);
        let mut cache = Prompt::null();
        assert_eq!(
            unsafe { ella_prompt_new(model.ptr(), prompt.as_ptr(), negative, 0, cache.out()) },
            EllaStatus::Ok,
            "{}",
            last_error()
        );
        cache
    }
}

impl Tensor {
    /// `ella_model_encode_t5` of `prompt`, or fails with the library's message.
    pub fn encode_t5(model: &Model, prompt: &CStr, max_tokens: u32) -> Tensor {
        let mut states = Tensor::null();
        assert_eq!(
            unsafe { ella_model_encode_t5(model.ptr(), prompt.as_ptr(), max_tokens, states.out()) },
            EllaStatus::Ok,
            "{}",
            last_error()
        );
        states
    }

    /// The tensor; panics on an owner of none.
    pub fn get(&self) -> &EllaTensor {
        unsafe { self.0.as_ref() }.expect("a tensor")
    }
}

pub struct Paths {
    pub t5: CString,
    pub ella: CString,
    pub config: CString,
    pub sd: CString,
}

pub fn paths() -> Paths {
    Paths {
        t5: fixture("t5"),
        ella: fixture("ella/ella.safetensors"),
        config: fixture("ella/config.json"),
        sd: fixture("sd"),
    }
}

pub fn params(p: &Paths) -> EllaModelParams {
    EllaModelParams {
        t5_path: p.t5.as_ptr(),
        ella_path: p.ella.as_ptr(),
        ella_config_path: p.config.as_ptr(),
        sd_path: p.sd.as_ptr(),
        ..ella_model_params_default()
    }
}

/// The tiny models with the default parameters.
pub fn load() -> Model {
    let model = Model::load(&params(&paths()));
    assert_eq!(last_error(), "", "a success clears the message");
    model
}

/// The status of loading `params` (NULL allowed); a failure must write no handle.
pub fn load_status(params: *const EllaModelParams) -> EllaStatus {
    let mut model = Model::null();
    let status = unsafe { ella_model_load(params, model.out()) };
    assert!(
        status == EllaStatus::Ok || model.is_null(),
        "no handle on failure"
    );
    status
}

pub fn request(prompt: &CStr) -> EllaGenerateRequest {
    EllaGenerateRequest {
        prompt: prompt.as_ptr(),
        width: 32,
        height: 32,
        steps: 2,
        ..ella_generate_request_default()
    }
}

/// Generates one 32×32 image into a buffer (`ctx` raw, for the tests that share it with
/// other threads or free it themselves; [`Context::generate_32`] otherwise).
pub fn generate_32(
    ctx: *mut EllaContext,
    request: &EllaGenerateRequest,
) -> Result<Vec<u8>, String> {
    let mut buffer = vec![0u8; 32 * 32 * 3];
    match unsafe { ella_context_generate_into(ctx, request, buffer.as_mut_ptr(), buffer.len(), 96) }
    {
        EllaStatus::Ok => Ok(buffer),
        status => Err(format!("{status:?}: {}", last_error())),
    }
}
