//! Version and errors: what a host checks first and after every failed call.

use std::ffi::{CStr, c_char};

use crate::abi::EllaStatus;
use crate::boundary;

/// Major version of the library and of this header.
pub const ELLA_VERSION_MAJOR: u32 = 0;
/// Minor version: new functions or fields, nothing removed.
pub const ELLA_VERSION_MINOR: u32 = 6;
/// Patch version: fixes only.
pub const ELLA_VERSION_PATCH: u32 = 0;

/// The library version as "MAJOR.MINOR.PATCH". The string is static: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn ella_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a status, e.g. "ELLA_STATUS_BUSY" (for logs); "ELLA_STATUS_UNKNOWN" for a
/// value that is not an `ella_status`. The string is static: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn ella_status_name(status: u32) -> *const c_char {
    let name: &CStr = match EllaStatus::decode(status, "status") {
        Ok(status) => status.name(),
        Err(_) => c"ELLA_STATUS_UNKNOWN",
    };
    name.as_ptr()
}

impl EllaStatus {
    /// The name the header gives the status.
    fn name(self) -> &'static CStr {
        match self {
            EllaStatus::Ok => c"ELLA_STATUS_OK",
            EllaStatus::InvalidArgument => c"ELLA_STATUS_INVALID_ARGUMENT",
            EllaStatus::Io => c"ELLA_STATUS_IO",
            EllaStatus::InvalidModel => c"ELLA_STATUS_INVALID_MODEL",
            EllaStatus::Unsupported => c"ELLA_STATUS_UNSUPPORTED",
            EllaStatus::Cancelled => c"ELLA_STATUS_CANCELLED",
            EllaStatus::BufferTooSmall => c"ELLA_STATUS_BUFFER_TOO_SMALL",
            EllaStatus::Internal => c"ELLA_STATUS_INTERNAL",
            EllaStatus::OutOfMemory => c"ELLA_STATUS_OUT_OF_MEMORY",
            EllaStatus::Numerical => c"ELLA_STATUS_NUMERICAL",
            EllaStatus::Busy => c"ELLA_STATUS_BUSY",
            EllaStatus::NotReady => c"ELLA_STATUS_NOT_READY",
        }
    }
}

/// The message of the calling thread's last failed call ("" after a success). Valid until
/// the thread's next call into the library; do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn ella_last_error_message() -> *const c_char {
    boundary::last_error()
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
    fn every_status_has_its_header_name() {
        let name = |status: u32| unsafe { CStr::from_ptr(ella_status_name(status)) }.to_str();
        assert_eq!(name(EllaStatus::Ok as u32), Ok("ELLA_STATUS_OK"));
        assert_eq!(
            name(EllaStatus::InvalidArgument as u32),
            Ok("ELLA_STATUS_INVALID_ARGUMENT")
        );
        assert_eq!(name(EllaStatus::Busy as u32), Ok("ELLA_STATUS_BUSY"));
        assert_eq!(name(11), Ok("ELLA_STATUS_NOT_READY"));
        assert_eq!(name(12), Ok("ELLA_STATUS_UNKNOWN"));
        assert_eq!(name(u32::MAX), Ok("ELLA_STATUS_UNKNOWN"));
    }
}
