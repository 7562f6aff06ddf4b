//! A C ABI over the switchboard crate: the same store, hook chain, router
//! and dispatcher, for callers that speak C (the Go package in `go/` uses it
//! through cgo). The header, `capi/switchboard.h`, is generated from this
//! crate by cbindgen.
//!
//! # Conventions (the header repeats them)
//!
//! - **Status.** Every fallible function returns an `int32_t` status:
//!   [`SB_OK`], or one `SB_*` code per kind of `switchboard::Error` (plus
//!   [`SB_CANCELLED`]); [`sb_dispatcher_invoke`] may also return
//!   [`SB_PENDING`]. On a failure, `*err` (when `err` is not NULL) receives
//!   a JSON object `{"message": "...", "fields": {...}}` the caller owns.
//! - **Strings and bytes in** are `(pointer, length)` pairs, not
//!   NUL-terminated, borrowed for the duration of the call only: the library
//!   copies what it keeps. Text must be UTF-8. A NULL pointer with length 0
//!   is the empty string.
//! - **Bytes out** are [`SbBytes`] the caller owns and frees with
//!   [`sb_bytes_free`] (freeing a zeroed `SbBytes` is a no-op).
//! - **Objects** (`SbDatabase`, `SbDispatcher`, `SbPolicy`, `SbCall`,
//!   `SbHandlerCall`) are opaque; each `*_new`/`*_open` gives the caller one
//!   that it frees exactly once with the matching `*_free`.
//! - **Callbacks** receive an opaque `user_data` word back. Once a function
//!   taking a `release` callback is called, `user_data` belongs to the
//!   library: `release(user_data)` is called exactly once, when the library
//!   will call none of the callbacks again (also when the call fails).
//!   Callbacks run on the caller's thread or on the library's runtime
//!   threads; pointers they receive are borrowed for the callback only.
//! - **Panics** never cross the boundary: a panic inside the library is
//!   caught and returned as [`SB_INTERNAL`].

// The exported functions take raw pointers from C; each one's `# Safety`
// is the header's ownership text, stated once per function.
#![allow(clippy::missing_safety_doc)]

mod database;
mod dispatcher;
mod errors;
mod ffi;
mod handler;
mod policy;
mod runtime;

pub use database::*;
pub use dispatcher::*;
pub use errors::*;
pub use ffi::{sb_bytes_free, sb_version, SbBytes};
pub use handler::*;
pub use policy::*;
