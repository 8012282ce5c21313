//! The C ABI of ella, built as `libella.so` / `libella.a`; its header `include/ella.h` is
//! generated from this file by cbindgen (see `tests/header.rs`).
//!
//! So far it reports the library version; model handles and generation follow.

use std::ffi::c_char;

/// Major version of the library and of this header.
pub const ELLA_VERSION_MAJOR: u32 = 0;
/// Minor version: new functions or fields, nothing removed.
pub const ELLA_VERSION_MINOR: u32 = 1;
/// Patch version: fixes only.
pub const ELLA_VERSION_PATCH: u32 = 0;

/// The library version as "MAJOR.MINOR.PATCH". The string is static: do not free it.
#[unsafe(no_mangle)]
pub extern "C" fn ella_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_the_header_constants() {
        let version = unsafe { std::ffi::CStr::from_ptr(ella_version()) };
        let expected = format!("{ELLA_VERSION_MAJOR}.{ELLA_VERSION_MINOR}.{ELLA_VERSION_PATCH}");
        assert_eq!(version.to_str().unwrap(), expected);
    }
}
