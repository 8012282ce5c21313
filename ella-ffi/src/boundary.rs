//! The error boundary: every C function's body runs in [`guard`], which turns an
//! [`ella_core::Error`] or a caught panic into an [`EllaStatus`] and the calling thread's
//! last error message.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use ella_core::Error;

use crate::abi::EllaStatus;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// The calling thread's last error message, valid until its next call into the library.
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A failure: the status and the message for `ella_last_error_message`.
pub(crate) struct Failure(pub EllaStatus, pub String);

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

/// An `ELLA_STATUS_INVALID_ARGUMENT` failure.
pub(crate) fn invalid(message: impl Into<String>) -> Failure {
    Failure(EllaStatus::InvalidArgument, message.into())
}

/// Runs `body`, turning errors and panics into a status and the thread's error message.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> EllaStatus {
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
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("internal error (please report): {what}")
}
