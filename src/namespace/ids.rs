//! Checking what may become a key: ids, keys, scan prefixes and values; and
//! the invocation ids (time-sortable) and the millisecond clock keys carry.

use crate::error::{Error, Result};
use std::time::{SystemTime, UNIX_EPOCH};

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 128;
/// The longest key accepted (bytes).
pub const MAX_KEY_LEN: usize = 1024;
/// The most `/`-separated segments a key may have (keeps glob matching
/// allocation-free).
pub const MAX_SEGMENTS: usize = 32;

/// The ids accepted (agent, session, tool, category, key segment), as a
/// regular expression: docs/openapi.json quotes it and a test holds
/// [`validate_id`] to it.
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";
/// The scan prefixes accepted: empty, or up to [`MAX_SEGMENTS`] id segments
/// joined by `/`, optionally ending in `/`; at most [`MAX_KEY_LEN`] bytes in
/// all. docs/openapi.json quotes it; a test holds the prefix check to it.
pub const KEY_PREFIX_PATTERN: &str = "^([A-Za-z0-9._:-]{1,128}(/[A-Za-z0-9._:-]{1,128}){0,31}/?)?$";

/// Whether `c` may appear in an id or key segment.
pub(crate) fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

/// Checks an id; `what` names it in the error ("agent id", "session id", …).
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid(format!(
            "{what} is {} characters long; the limit is {MAX_ID_LEN}",
            id.len()
        )));
    }
    if let Some(bad) = id.chars().find(|&c| !is_id_char(c)) {
        return Err(Error::invalid(format!(
            "{what} {id:?} contains {bad:?}; use only letters, digits and . _ : -"
        )));
    }
    Ok(())
}

/// Checks a full key: `/`-separated segments, each a valid id.
pub fn validate_key(key: &str) -> Result<()> {
    if is_plainly_valid_key(key.as_bytes()) {
        return Ok(());
    }
    // Something is off: find it again the slow way, to say what.
    if key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "key is {} bytes long; the limit is {MAX_KEY_LEN}",
            key.len()
        )));
    }
    let mut segments = 0;
    for segment in key.split('/') {
        segments += 1;
        validate_id("key segment", segment).map_err(|e| match e {
            Error::InvalidInput(msg) => Error::invalid(format!("key {key:?}: {msg}")),
            other => other,
        })?;
    }
    if segments > MAX_SEGMENTS {
        return Err(Error::invalid(format!(
            "key {key:?} has more than {MAX_SEGMENTS} segments"
        )));
    }
    Ok(())
}

/// One pass over a key that is valid in the common case (every write checks
/// its key); `false` sends the caller to the checks that explain.
fn is_plainly_valid_key(key: &[u8]) -> bool {
    if key.len() > MAX_KEY_LEN {
        return false;
    }
    let (mut segments, mut segment_len) = (1, 0);
    for &b in key {
        if b == b'/' {
            if segment_len == 0 {
                return false;
            }
            segments += 1;
            segment_len = 0;
        } else if is_id_char(b as char) {
            segment_len += 1;
            if segment_len > MAX_ID_LEN {
                return false;
            }
        } else {
            return false;
        }
    }
    segment_len > 0 && segments <= MAX_SEGMENTS
}

/// Checks a value: UTF-8 (JSON or text) and at most `max_value_bytes` long.
pub(crate) fn validate_value(value: &[u8], max_value_bytes: usize) -> Result<()> {
    if value.len() > max_value_bytes {
        return Err(Error::invalid(format!(
            "value is {} bytes; the limit is {max_value_bytes} (DatabaseOptions::max_value_bytes)",
            value.len()
        )));
    }
    if let Err(e) = std::str::from_utf8(value) {
        return Err(Error::invalid(format!(
            "value is not UTF-8 (invalid byte at offset {}); store JSON or text",
            e.valid_up_to()
        )));
    }
    Ok(())
}

/// Checks a scan prefix: like a key, but may be empty and may end with `/`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    if prefix.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "prefix is {} bytes long; the limit is {MAX_KEY_LEN}",
            prefix.len()
        )));
    }
    validate_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new invocation id: 26 characters of Crockford base32, the first 10 the
/// millisecond timestamp, then 16 bits fixed per process and a 64-bit sequence
/// that starts at a random point each millisecond and counts up within it. Ids
/// from one process therefore sort by creation time (like ULIDs).
pub fn new_invocation_id() -> String {
    static STATE: parking_lot::Mutex<(u64, u64)> = parking_lot::Mutex::new((0, 0));
    static PROCESS_BITS: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    let process = *PROCESS_BITS.get_or_init(|| fastrand::u16(..)) as u128;
    let (time, seq) = {
        let mut state = STATE.lock();
        let now = now_ms();
        // A clock that steps back keeps the last time, so order still holds.
        if now > state.0 {
            *state = (now, fastrand::u64(..) >> 1);
        } else {
            state.1 += 1;
        }
        *state
    };
    let mut out = [0u8; 26];
    for (i, slot) in out[..10].iter_mut().enumerate() {
        *slot = CROCKFORD[((time >> (45 - 5 * i)) & 31) as usize];
    }
    let value: u128 = (process << 64) | seq as u128;
    for (i, slot) in out[10..].iter_mut().enumerate() {
        *slot = CROCKFORD[((value >> (75 - 5 * i)) & 31) as usize];
    }
    out.iter().map(|&b| b as char).collect()
}

/// The millisecond timestamp an invocation id (or decision-log id) was made at.
pub(crate) fn invocation_id_time_ms(id: &str) -> Option<u64> {
    let head = id.as_bytes().get(..10)?;
    head.iter().try_fold(0u64, |acc, &c| {
        let digit = CROCKFORD.iter().position(|&d| d == c)? as u64;
        Some((acc << 5) | digit)
    })
}
