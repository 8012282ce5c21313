//! The prompt cache: a prompt and its negative encoded once, generated from many times.

use std::ffi::c_char;
use std::sync::Arc;

use crate::abi::*;
use crate::boundary::{guard, invalid};
use crate::convert::token_mode;
use crate::engine::{HostPrompt, refuse_inside_generation};
use crate::model::EllaModel;

/// The T5 and CLIP states of a prompt and its negative prompt, kept in host memory: generate
/// from them any number of times, also after `ella_model_free_t5`.
pub struct EllaPrompt {
    /// Shared with the jobs submitted with this prompt, so that it may be freed before they run.
    pub(crate) states: Arc<HostPrompt>,
}

/// Encodes a prompt and its negative prompt (NULL means "") once, with T5 (while loaded) and
/// CLIP (when loaded), for any conditioning; `*out_prompt` owns the result (free with
/// `ella_prompt_free`). Pass it as `ella_generate_request.prompt_cache` to generate from it
/// any number of times, also after `ella_model_free_t5`. `max_tokens` as in the request.
///
/// # Safety
/// `model` is a live handle; the strings are NUL-terminated; `out_prompt` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_prompt_new(
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
        refuse_inside_generation(&model.engine, "ella_prompt_new")?;
        // SAFETY (both): NUL-terminated strings per this function's contract.
        let prompt = unsafe { text(prompt, "prompt")? };
        let negative = match negative_prompt.is_null() {
            true => "",
            false => unsafe { text(negative_prompt, "negative_prompt")? },
        };
        let states = model
            .engine
            .encode_prompts(prompt, negative, token_mode(max_tokens))?;
        let prompt = Box::into_raw(Box::new(EllaPrompt {
            states: Arc::new(states),
        }));
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { write_out(out_prompt, prompt, "out_prompt") }
    })
}

/// Frees prompt states. NULL is a no-op.
///
/// # Safety
/// `prompt` is NULL or from `ella_prompt_new`, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_prompt_free(prompt: *mut EllaPrompt) {
    if !prompt.is_null() {
        // SAFETY: a handle from ella_prompt_new, freed once.
        drop(unsafe { Box::from_raw(prompt) });
    }
}
