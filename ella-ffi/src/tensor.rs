//! Tensors: T5 states and connector tokens, for hosts that run their own U-Net.

use std::ffi::c_char;

use ella_core::burn::tensor::TensorData;
use ella_core::limits::{MAX_T5_TOKENS, MAX_WIDTH};

use crate::abi::*;
use crate::boundary::{Failure, guard, invalid};
use crate::convert::token_mode;
use crate::engine::refuse_inside_generation;
use crate::model::EllaModel;

/// A rank-3 tensor handed to the caller.
///
/// # Safety
/// `out` is writable.
unsafe fn tensor_out(data: TensorData, out: *mut *mut EllaTensor) -> Result<(), Failure> {
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
    // SAFETY: writable per this function's contract.
    unsafe { write_out(out, Box::into_raw(tensor), "out_tensor") }
}

/// T5 hidden states of one prompt, `[1, tokens, d_model]`; `*out_tensor` owns them (free
/// with `ella_tensor_free`). `max_tokens` as in the request (0 = flexible).
///
/// # Safety
/// `model` is a live handle; `prompt` NUL-terminated; `out_tensor` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_encode_t5(
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
        refuse_inside_generation(&model.engine, "ella_model_encode_t5")?;
        // SAFETY: NUL-terminated per this function's contract.
        let prompt = unsafe { text(prompt, "prompt")? };
        let states = model.engine.encode_t5(prompt, token_mode(max_tokens))?;
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { tensor_out(states, out_tensor) }
    })
}

/// One connector step: T5 states `[1, tokens, width]` (row-major floats) at a U-Net
/// timestep → condition tokens `[1, num_latents, cross_attention_dim]`; `*out_tensor` owns
/// them (free with `ella_tensor_free`).
///
/// # Safety
/// `states` points to `tokens * width` floats; the rest as `ella_model_encode_t5`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ella_model_run_connector(
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
        refuse_inside_generation(&model.engine, "ella_model_run_connector")?;
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
        let tokens = model.engine.run_connector(states, timestep)?;
        // SAFETY: checked non-null above; writable per this function's contract.
        unsafe { tensor_out(tokens, out_tensor) }
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
