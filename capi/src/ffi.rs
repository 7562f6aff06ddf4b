//! The boundary itself: owned byte buffers handed to C, borrowed arguments
//! read from C, and [`guard`], which every exported function runs its body
//! in so that no panic unwinds into the caller.

use crate::errors::{Failure, Result, SB_INTERNAL, SB_OK};
use std::panic::{catch_unwind, AssertUnwindSafe};
use switchboard::PolicyContext;

/// Bytes the library hands to the caller, who owns them and frees them
/// with `sb_bytes_free`. `ptr` is NULL (and `len` 0) for none.
#[repr(C)]
pub struct SbBytes {
    pub ptr: *mut u8,
    pub len: usize,
}

impl SbBytes {
    pub(crate) const EMPTY: SbBytes = SbBytes {
        ptr: std::ptr::null_mut(),
        len: 0,
    };

    pub(crate) fn from_vec(v: Vec<u8>) -> SbBytes {
        if v.is_empty() {
            return SbBytes::EMPTY;
        }
        let boxed = v.into_boxed_slice();
        let len = boxed.len();
        SbBytes {
            ptr: Box::into_raw(boxed) as *mut u8,
            len,
        }
    }
}

/// Frees bytes the library handed out. Freeing a zeroed `SbBytes` does
/// nothing; freeing the same bytes twice is undefined.
#[no_mangle]
pub unsafe extern "C" fn sb_bytes_free(bytes: SbBytes) {
    if !bytes.ptr.is_null() {
        // SAFETY: `ptr`/`len` came from `SbBytes::from_vec`, a boxed slice.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(bytes.ptr, bytes.len)) });
    }
}

/// The library's version, a static NUL-terminated string (never freed).
#[no_mangle]
pub extern "C" fn sb_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Runs `f` as the body of an exported function: its failure (or a panic)
/// becomes the status, with the payload written to `err`.
pub(crate) fn guard(err: *mut SbBytes, f: impl FnOnce() -> Result<i32>) -> i32 {
    let failure = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(status)) => return status,
        Ok(Err(failure)) => failure,
        Err(panic) => Failure::new(
            SB_INTERNAL,
            format!(
                "a panic inside switchboard was caught at the C boundary: {}",
                panic_message(&*panic)
            ),
        ),
    };
    if !err.is_null() {
        // SAFETY: the caller passes NULL or a writable `SbBytes`.
        unsafe { err.write(SbBytes::from_vec(failure.payload())) };
    }
    failure.code
}

/// [`guard`] for a body that only succeeds with [`SB_OK`].
pub(crate) fn run(err: *mut SbBytes, f: impl FnOnce() -> Result<()>) -> i32 {
    guard(err, || f().map(|()| SB_OK))
}

/// Runs `f` where a panic must not unwind further and no status can be
/// returned (a `free`, a callback's guard): the panic is dropped.
pub(crate) fn quietly(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Borrowed bytes `(ptr, len)` from C.
///
/// # Safety
/// `ptr` is NULL with `len` 0, or valid for `len` bytes during the call.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8]> {
    if ptr.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(Failure::invalid(format!(
            "a NULL pointer was passed with length {len}"
        )));
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Borrowed UTF-8 text `(ptr, len)` from C; `what` names it in errors.
///
/// # Safety
/// As [`bytes`].
pub(crate) unsafe fn text<'a>(what: &str, ptr: *const u8, len: usize) -> Result<&'a str> {
    // SAFETY: the caller's contract.
    let b = unsafe { bytes(ptr, len) }?;
    std::str::from_utf8(b).map_err(|e| Failure::invalid(format!("{what} is not UTF-8: {e}")))
}

/// A policy context from a JSON object of strings; empty input is none.
pub(crate) fn context(json: &[u8]) -> Result<PolicyContext> {
    let mut ctx = PolicyContext::new();
    if json.is_empty() {
        return Ok(ctx);
    }
    let map: std::collections::HashMap<String, String> =
        serde_json::from_slice(json).map_err(|e| {
            Failure::invalid(format!("a policy context is a JSON object of strings: {e}"))
        })?;
    for (k, v) in map {
        ctx.insert(k, v);
    }
    Ok(ctx)
}

/// Writes `value` through `out`, failing on a NULL `out`.
pub(crate) fn put<T>(what: &str, out: *mut T, value: T) -> Result<()> {
    if out.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a writable `T`.
    unsafe { out.write(value) };
    Ok(())
}

/// The object behind a handle the caller got from this library.
pub(crate) fn object<'a, T>(what: &str, ptr: *const T) -> Result<&'a T> {
    // SAFETY: a non-NULL handle is one this library handed out and the
    // caller has not freed (the header's contract).
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::invalid(format!("the {what} is NULL")))
}
