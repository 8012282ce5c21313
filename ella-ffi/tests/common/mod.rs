//! Helpers of the C ABI tests: the tiny test models' paths as C strings, a model loaded
//! from them, a small request.
#![allow(dead_code)]

use std::ffi::{CStr, CString};
use std::path::PathBuf;
use std::ptr::null_mut;

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

pub fn load() -> *mut EllaModel {
    let p = paths();
    let mut model = null_mut();
    assert_eq!(
        unsafe { ella_model_load(&params(&p), &mut model) },
        EllaStatus::Ok,
        "{}",
        last_error()
    );
    assert!(!model.is_null());
    assert_eq!(last_error(), "", "a success clears the message");
    model
}

pub fn request(prompt: &CString) -> EllaGenerateRequest {
    EllaGenerateRequest {
        prompt: prompt.as_ptr(),
        width: 32,
        height: 32,
        steps: 2,
        ..ella_generate_request_default()
    }
}

/// Generates one 32×32 image into a buffer.
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
