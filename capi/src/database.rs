//! `SbDatabase`: one open store. Reads and writes pass the database's
//! policy hooks; a scan is read in pages the caller asks for one by one.

use crate::errors::Result;
use crate::ffi::{bytes, context, object, put, run, text, SbBytes};
use crate::runtime::runtime;

/// An open store (opaque). RocksDB closes when the last `SbDatabase`,
/// `SbDispatcher` and `SbPolicy` made from it is freed.
pub struct SbDatabase {
    pub(crate) db: switchboard::Database,
}

/// Opens (creating if needed) the store at `path`. On success `*out` is a
/// database the caller owns and frees with `sb_database_free`.
#[no_mangle]
pub unsafe extern "C" fn sb_database_open(
    path: *const u8,
    path_len: usize,
    out: *mut *mut SbDatabase,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        // SAFETY: the header's contract for borrowed text.
        let path = unsafe { text("path", path, path_len) }?;
        if path.is_empty() {
            return Err(crate::errors::Failure::invalid("the path is empty"));
        }
        // Opening reads stored policies, which may compile Rego: give it
        // the runtime's context like every other call.
        let _rt = runtime().enter();
        let db = switchboard::Database::open(path)?;
        put("out", out, Box::into_raw(Box::new(SbDatabase { db })))
    })
}

/// Frees a database from `sb_database_open` (NULL is a no-op).
#[no_mangle]
pub unsafe extern "C" fn sb_database_free(db: *mut SbDatabase) {
    if !db.is_null() {
        // SAFETY: a handle from `sb_database_open`, freed once.
        crate::ffi::quietly(|| drop(unsafe { Box::from_raw(db) }));
    }
}

/// Writes `value` at `key` through the write hooks. `context_json` is a
/// JSON object of strings handed to the hooks (empty: none).
#[no_mangle]
pub unsafe extern "C" fn sb_database_put(
    db: *const SbDatabase,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    context_json: *const u8,
    context_len: usize,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let db = &object("database", db)?.db;
        // SAFETY: the header's contract for borrowed arguments.
        let (key, value, ctx) = unsafe {
            (
                text("key", key, key_len)?,
                bytes(value, value_len)?,
                context(bytes(context_json, context_len)?)?,
            )
        };
        let _rt = runtime().enter();
        Ok(db.put_with(key, value, &ctx)?)
    })
}

/// Reads `key` through the read hooks: `*found` says whether it exists,
/// and if so `*value` holds its bytes (the caller frees them with
/// `sb_bytes_free`).
#[no_mangle]
pub unsafe extern "C" fn sb_database_get(
    db: *const SbDatabase,
    key: *const u8,
    key_len: usize,
    context_json: *const u8,
    context_len: usize,
    value: *mut SbBytes,
    found: *mut bool,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let db = &object("database", db)?.db;
        // SAFETY: the header's contract for borrowed arguments.
        let (key, ctx) = unsafe {
            (
                text("key", key, key_len)?,
                context(bytes(context_json, context_len)?)?,
            )
        };
        let _rt = runtime().enter();
        let got = db.get_with(key, &ctx)?;
        put("found", found, got.is_some())?;
        put("value", value, SbBytes::from_vec(got.unwrap_or_default()))
    })
}

/// Deletes `key` through the delete hooks (a missing key is not an error).
#[no_mangle]
pub unsafe extern "C" fn sb_database_delete(
    db: *const SbDatabase,
    key: *const u8,
    key_len: usize,
    context_json: *const u8,
    context_len: usize,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let db = &object("database", db)?.db;
        // SAFETY: the header's contract for borrowed arguments.
        let (key, ctx) = unsafe {
            (
                text("key", key, key_len)?,
                context(bytes(context_json, context_len)?)?,
            )
        };
        let _rt = runtime().enter();
        Ok(db.delete_with(key, &ctx)?)
    })
}

/// Reads up to `limit` (1 to 10,000) entries under `prefix` in key order,
/// after the key `after` (exclusive; pass `has_after` false to start at the
/// prefix), through the read hooks. `*page` receives them as
/// `[u32 key length][key][u32 value length][value]...` (lengths little
/// endian), which the caller frees with `sb_bytes_free`; `*count` is the
/// number of entries. Fewer than `limit` entries means the scan is done.
#[no_mangle]
pub unsafe extern "C" fn sb_database_scan_page(
    db: *const SbDatabase,
    prefix: *const u8,
    prefix_len: usize,
    after: *const u8,
    after_len: usize,
    has_after: bool,
    limit: u32,
    context_json: *const u8,
    context_len: usize,
    page: *mut SbBytes,
    count: *mut u32,
    err: *mut SbBytes,
) -> i32 {
    run(err, || {
        let db = &object("database", db)?.db;
        // SAFETY: the header's contract for borrowed arguments.
        let (prefix, after, ctx) = unsafe {
            (
                text("prefix", prefix, prefix_len)?,
                if has_after {
                    Some(text("after", after, after_len)?)
                } else {
                    None
                },
                context(bytes(context_json, context_len)?)?,
            )
        };
        if !(1..=10_000).contains(&limit) {
            return Err(crate::errors::Failure::invalid(format!(
                "a scan page holds 1 to 10000 entries, not {limit}"
            )));
        }
        let _rt = runtime().enter();
        let entries = db
            .scan_from(prefix)
            .after(after)
            .as_reader(&ctx)
            .iter()
            .take(limit as usize)
            .collect::<switchboard::Result<Vec<_>>>()?;
        put("count", count, entries.len() as u32)?;
        put("page", page, SbBytes::from_vec(encode(&entries)?))
    })
}

fn encode(entries: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let size = entries.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size);
    for (key, value) in entries {
        for part in [key.as_bytes(), value.as_slice()] {
            let len = u32::try_from(part.len()).map_err(|_| {
                crate::errors::Failure::new(
                    crate::errors::SB_STORAGE,
                    format!("an entry under {key} is larger than 4 GiB"),
                )
            })?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    Ok(out)
}
