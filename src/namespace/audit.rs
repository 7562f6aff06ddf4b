//! Audit filters over dispatch records: which records a query keeps, by the
//! agent that served the call, its status, and when it started. Owns the two
//! shortcuts that make such a query cheap: the start time is read from the
//! key (invocation ids are time-sortable, so a scan seeks past whole runs of
//! records outside the window), and a record is decoded only when its bytes
//! could match.

use super::ids::CROCKFORD;
use super::records::DispatchStatus;
use memchr::memmem;
use serde::Deserialize;
use std::borrow::Cow;

/// Which dispatch records to keep. Empty, it keeps every record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only calls whose record names this agent (the agent of the last
    /// attempt: the one that answered, on success).
    pub agent: Option<String>,
    /// Only calls in this status.
    pub status: Option<DispatchStatus>,
    /// Only calls started at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only calls started at or before this time (ms since the Unix epoch).
    pub until_ms: Option<u64>,
}

/// Where a key's invocation id falls against a filter's time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Started before the window: seek forward within the key's group.
    Before,
    /// Inside the window.
    Inside,
    /// Started after the window: skip the rest of the key's group.
    After,
    /// The last key segment is not an invocation id.
    NotAnInvocation,
}

/// The fields a filter reads, borrowed from the record's bytes.
#[derive(Deserialize)]
struct Projection<'a> {
    #[serde(borrow, default)]
    agent_id: Option<Cow<'a, str>>,
    status: DispatchStatus,
}

impl AuditFilter {
    /// Whether this filter keeps everything.
    pub fn is_empty(&self) -> bool {
        self == &AuditFilter::default()
    }

    /// Whether it looks at the time window at all.
    pub(crate) fn has_window(&self) -> bool {
        self.since_ms.is_some() || self.until_ms.is_some()
    }

    /// The first ten characters (the millisecond time) of the earliest
    /// invocation id inside the window, to seek to.
    pub(crate) fn window_start(&self) -> Option<[u8; 10]> {
        self.since_ms.map(time_prefix)
    }

    /// Where the invocation id `id` (a key's last segment) falls.
    pub(crate) fn place(&self, id: &[u8]) -> Placement {
        let Some(head) = id.get(..10) else {
            return Placement::NotAnInvocation;
        };
        if id.len() != 26 || !id.iter().all(|c| CROCKFORD.contains(c)) {
            return Placement::NotAnInvocation;
        }
        if let Some(since) = self.since_ms {
            if head < &time_prefix(since)[..] {
                return Placement::Before;
            }
        }
        if let Some(until) = self.until_ms {
            if head > &time_prefix(until)[..] {
                return Placement::After;
            }
        }
        Placement::Inside
    }

    /// Whether the record `value` (a stored dispatch record) passes the
    /// agent and status conditions. For many records, build a
    /// [`RecordMatcher`] once instead.
    pub fn matches_record(&self, value: &[u8]) -> bool {
        self.matcher().matches(value)
    }

    /// The agent and status conditions, prepared for testing many records.
    pub fn matcher(&self) -> RecordMatcher {
        // Records are compact JSON and ids need no escaping, so a record of
        // agent X contains `"agent_id":"X"` byte for byte (so may one whose
        // earlier attempt was X's: the decode decides).
        let finder = |needle: String| memmem::Finder::new(needle.as_bytes()).into_owned();
        RecordMatcher {
            agent: self.agent.clone(),
            status: self.status,
            agent_bytes: self
                .agent
                .as_ref()
                .map(|agent| finder(format!("\"agent_id\":\"{agent}\""))),
            status_bytes: self
                .status
                .map(|status| finder(format!("\"status\":\"{}\"", status.as_str()))),
        }
    }
}

/// An [`AuditFilter`]'s agent and status conditions, ready to test records:
/// bytes that cannot contain a wanted field are refused without decoding;
/// the rest are decoded into just the fields compared.
#[derive(Clone, Debug)]
pub struct RecordMatcher {
    agent: Option<String>,
    status: Option<DispatchStatus>,
    agent_bytes: Option<memmem::Finder<'static>>,
    status_bytes: Option<memmem::Finder<'static>>,
}

impl RecordMatcher {
    /// Whether the stored dispatch record `value` passes.
    pub fn matches(&self, value: &[u8]) -> bool {
        if self.agent.is_none() && self.status.is_none() {
            return true;
        }
        let absent = |finder: &Option<memmem::Finder>| {
            finder.as_ref().is_some_and(|f| f.find(value).is_none())
        };
        if absent(&self.agent_bytes) || absent(&self.status_bytes) {
            return false;
        }
        let Ok(record) = serde_json::from_slice::<Projection>(value) else {
            return false;
        };
        self.agent
            .as_deref()
            .is_none_or(|a| record.agent_id.as_deref() == Some(a))
            && self.status.is_none_or(|s| record.status == s)
    }
}

/// The time part of an invocation id started at `ms`.
fn time_prefix(ms: u64) -> [u8; 10] {
    let mut out = [0u8; 10];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = CROCKFORD[((ms >> (45 - 5 * i)) & 31) as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::namespace::{invocation_id_time_ms, new_invocation_id, now_ms};

    #[test]
    fn an_id_is_placed_by_its_time() {
        let id = new_invocation_id();
        let t = invocation_id_time_ms(&id).unwrap();
        let window = |since, until| AuditFilter {
            since_ms: since,
            until_ms: until,
            ..AuditFilter::default()
        };
        assert_eq!(
            window(Some(t), Some(t)).place(id.as_bytes()),
            Placement::Inside
        );
        assert_eq!(
            window(Some(t + 1), None).place(id.as_bytes()),
            Placement::Before
        );
        assert_eq!(
            window(None, Some(t - 1)).place(id.as_bytes()),
            Placement::After
        );
        assert_eq!(
            window(None, None).place(b"not-an-id"),
            Placement::NotAnInvocation
        );
        assert!(t <= now_ms());
    }

    #[test]
    fn records_are_matched_on_their_own_fields_not_an_attempts() {
        let record = br#"{"invocation_id":"x","agent_id":"b","status":"failed","attempts":[{"agent_id":"a","outcome":"failure"}]}"#;
        let by = |agent: &str, status| AuditFilter {
            agent: Some(agent.into()),
            status,
            ..AuditFilter::default()
        };
        assert!(by("b", None).matches_record(record));
        assert!(!by("a", None).matches_record(record));
        assert!(by("b", Some(DispatchStatus::Failed)).matches_record(record));
        assert!(!by("b", Some(DispatchStatus::Succeeded)).matches_record(record));
        assert!(AuditFilter::default().matches_record(b"not json"));
    }
}
