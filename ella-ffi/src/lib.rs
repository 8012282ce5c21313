//! The C ABI of ella, built as `libella.so` / `libella.a`. Its header `include/ella.h` is
//! generated from these modules by cbindgen (`tests/header.rs` checks it is current), in the
//! order they are declared here: one module per object of the header, as llama.cpp
//! implements one `llama.h` across `llama-model.cpp`, `llama-context.cpp`, ….
//!
//! Conventions (stated in the header too):
//! - Names are `ella_<object>_<verb>`; callbacks take `user_data` last.
//! - Every function that can fail returns an [`EllaStatus`]; `ella_last_error_message()`
//!   gives the text of the calling thread's last error. No Rust panic crosses the boundary
//!   ([`boundary`]).
//! - A model handle is immutable and may be shared by threads; a context runs one call at a
//!   time. `ella_context_cancel` may be called from any thread. Jobs (`ella_job_submit`)
//!   run on a worker thread per context that the library owns ([`job`]).
//! - Params and request structs start with `struct_size`: fill them from the `*_default()`
//!   functions; the library reads only the fields the given size covers, so programs built
//!   against an older header keep working when fields are appended ([`abi`]).

mod abi;
mod boundary;
mod convert;
mod engine;

mod version;
pub use version::*;
mod model;
pub use model::*;
mod context;
pub use context::*;
mod generate;
pub use generate::*;
mod job;
pub use job::*;
mod prompt;
pub use prompt::*;
mod tensor;
pub use tensor::*;

pub use abi::*;
