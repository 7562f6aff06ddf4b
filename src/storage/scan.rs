//! Ordered prefix scans: one builder, [`Database::scan_from`], and three ways
//! to consume it — an iterator of owned pairs ([`ScanBuilder::iter`]), a
//! borrowing visitor ([`ScanBuilder::each`]), and bounded pages with a
//! cursor ([`ScanBuilder::page`]).
//!
//! An audit ([`ScanBuilder::audit`]) keeps only the dispatch records an
//! [`AuditFilter`] selects: the scan seeks past records started outside the
//! filter's time window instead of reading them, and tests the rest on their
//! bytes before decoding any.
//!
//! With read hooks in place every key is judged for the reader: a hidden key
//! is skipped (never ends the scan), a redacted value comes back redacted.
//! Hidden keys are recorded as ONE aggregate decision per scan, not one
//! each, and a page examines at most [`PAGE_HIDDEN_BUDGET`] hidden keys
//! before it returns early with a cursor: a reader denied most of a long
//! prefix costs bounded work per request and a bounded decision log.

use super::{prefix_successor, scan_read_options, scan_start, Database};
use crate::error::{Error, Result};
use crate::namespace::{validate_prefix, AuditFilter, Placement, RecordMatcher};
use crate::policy::decisions::Recorder;
use crate::policy::{DecisionKind, Op, Phase, PolicyContext};
use rocksdb::DB;

/// Hidden keys one page may pass over before it returns early with a cursor.
pub const PAGE_HIDDEN_BUDGET: usize = 256;

/// Records an audit's filter may pass over in one page before it returns
/// early with a cursor (a filter test costs well under a microsecond).
pub const PAGE_FILTERED_BUDGET: usize = 65_536;

/// A scan being set up: `db.scan_from("tools/").after(k).as_reader(&ctx)`,
/// then `.iter()`, `.each(..)` or `.page(n)`.
#[must_use = "a scan does nothing until consumed with iter, each or page"]
pub struct ScanBuilder<'a> {
    db: &'a Database,
    prefix: String,
    after: Option<String>,
    ctx: PolicyContext,
    judged: bool,
    audit: Option<AuditFilter>,
}

/// One page of a scan: the visible pairs, and where the next page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The pairs this reader may see, in key order.
    pub items: Vec<(String, Vec<u8>)>,
    /// Pass to [`ScanBuilder::after`] for the next page; `None` when the
    /// prefix is exhausted. A page may be short (even empty) and still have
    /// a cursor, when it stopped early at hidden keys.
    pub next_after: Option<String>,
}

impl Database {
    /// A scan of every key starting with `prefix`, in key order, judged by
    /// the read hooks with an empty context until [`ScanBuilder::as_reader`]
    /// says otherwise.
    pub fn scan_from(&self, prefix: &str) -> ScanBuilder<'_> {
        ScanBuilder {
            db: self,
            prefix: prefix.to_string(),
            after: None,
            ctx: PolicyContext::new(),
            judged: true,
            audit: None,
        }
    }
}

impl<'a> ScanBuilder<'a> {
    /// Starts after `key` (exclusive): the way to page through a long prefix.
    pub fn after<'k>(mut self, key: impl Into<Option<&'k str>>) -> Self {
        self.after = key.into().map(str::to_string);
        self
    }

    /// Reads as `ctx`: the context handed to the read hooks and read limits.
    pub fn as_reader(mut self, ctx: &PolicyContext) -> Self {
        self.ctx = ctx.clone();
        self
    }

    /// Keeps only the dispatch records `filter` selects (scan a prefix of
    /// `tools/`, whose keys end in invocation ids): records started outside
    /// its time window are skipped by seeking, not read, and keys that do
    /// not end in an invocation id are skipped when it has a window. The
    /// filter tests what the reader may see, after the read hooks.
    pub fn audit(mut self, filter: &AuditFilter) -> Self {
        self.audit = (!filter.is_empty()).then(|| filter.clone());
        self
    }

    /// Without the read hooks: for Switchboard's own bookkeeping.
    pub(crate) fn unjudged(mut self) -> Self {
        self.judged = false;
        self
    }

    /// Validates the prefix and, when reads are judged, counts the scan once
    /// against the read rate limits; returns the judge for its keys, if any.
    fn admit(&self) -> Result<Option<ReadJudge<'a>>> {
        validate_prefix(&self.prefix)?;
        let chain = &self.db.inner.chain;
        if !self.judged || !chain.judges_reads() {
            return Ok(None);
        }
        match chain.reserve([(Op::Get, self.prefix.as_str(), &self.ctx)]) {
            Ok(reservation) => reservation.commit(),
            Err(refusal) => {
                let (e, decision) = *refusal;
                self.db.record_decisions(vec![decision]);
                return Err(e);
            }
        }
        Ok(Some(ReadJudge {
            db: self.db,
            ctx: self.ctx.clone(),
            prefix: self.prefix.clone(),
            hidden: 0,
            first_reason: None,
        }))
    }

    fn start(&self) -> Vec<u8> {
        scan_start(&self.prefix, self.after.as_deref())
    }

    /// The scan as an iterator of owned `(key, value)` pairs. A refused scan
    /// (bad prefix, read rate limit) yields its error as the first item.
    pub fn iter(self) -> Scan<'a> {
        let judge = match self.admit() {
            Ok(judge) => judge,
            Err(e) => return Scan::failed(e),
        };
        Scan {
            cursor: Some(self.cursor()),
            pending_error: None,
            judge,
        }
    }

    /// Visits every visible pair without copying (when no hook judges
    /// reads): `visit(key, value)` sees RocksDB's own buffers and returns
    /// `false` to stop early. The fastest way to read an audit trail.
    pub fn each(self, mut visit: impl FnMut(&str, &[u8]) -> bool) -> Result<()> {
        let mut judge = self.admit()?;
        let mut cursor = self.cursor();
        while let Some((key, value)) = cursor.current() {
            let key = std::str::from_utf8(key)
                .map_err(|_| Error::storage("a stored key is not UTF-8"))?;
            let keep_going = match judge.as_mut() {
                Some(judge) => match judge.judge(key, value.to_vec()) {
                    Some(value) if cursor.keeps(&value) => visit(key, &value),
                    _ => true,
                },
                None if cursor.keeps(value) => visit(key, value),
                None => true,
            };
            if !keep_going {
                return Ok(());
            }
            cursor.advance();
        }
        cursor.status()
    }

    /// At most `limit` visible pairs, examining at most
    /// [`PAGE_HIDDEN_BUDGET`] hidden keys; [`Page::next_after`] resumes.
    pub fn page(self, limit: usize) -> Result<Page> {
        if limit == 0 {
            return Err(Error::invalid("a page holds at least 1 item"));
        }
        let mut judge = self.admit()?;
        let mut cursor = self.cursor();
        let mut items = Vec::new();
        let (mut hidden, mut filtered) = (0, 0);
        let mut last_examined: Option<String> = None;
        while let Some((key, value)) = cursor.current() {
            if items.len() == limit
                || hidden == PAGE_HIDDEN_BUDGET
                || filtered == PAGE_FILTERED_BUDGET
            {
                // More keys remain: resume after the last one examined.
                return Ok(Page {
                    items,
                    next_after: last_examined,
                });
            }
            let key = std::str::from_utf8(key)
                .map_err(|_| Error::storage("a stored key is not UTF-8"))?
                .to_string();
            let visible = match judge.as_mut() {
                Some(judge) => judge.judge(&key, value.to_vec()),
                None => Some(value.to_vec()),
            };
            match visible {
                Some(value) if cursor.keeps(&value) => items.push((key.clone(), value)),
                Some(_) => filtered += 1,
                None => hidden += 1,
            }
            last_examined = Some(key);
            cursor.advance();
        }
        cursor.status()?;
        Ok(Page {
            items,
            next_after: None,
        })
    }

    fn cursor(&self) -> Cursor<'a> {
        let mut it = self
            .db
            .inner
            .rocks
            .raw_iterator_opt(scan_read_options(&self.prefix));
        it.seek(self.start());
        let mut cursor = Cursor {
            it,
            matcher: self.audit.as_ref().map(AuditFilter::matcher),
            audit: self.audit.clone(),
        };
        cursor.settle();
        cursor
    }
}

/// The raw iterator under a scan, kept on keys the scan may return: the
/// read options bound it to the prefix, and for an audit with a time window
/// it seeks past each run of records started outside the window.
struct Cursor<'a> {
    it: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
    audit: Option<AuditFilter>,
    matcher: Option<RecordMatcher>,
}

impl Cursor<'_> {
    /// The key and value it stands on; `None` past the end.
    fn current(&self) -> Option<(&[u8], &[u8])> {
        Some((self.it.key()?, self.it.value()?))
    }

    fn advance(&mut self) {
        self.it.next();
        self.settle();
    }

    /// Whether the audit's record conditions keep `value`.
    fn keeps(&self, value: &[u8]) -> bool {
        self.matcher.as_ref().is_none_or(|m| m.matches(value))
    }

    /// Moves forward to the first key inside the audit's time window. Every
    /// seek lands strictly after the key it leaves: a record started before
    /// the window seeks to the window's start within the record's group
    /// (`tools/{category}/{tool}/`), one started after it to the next group.
    fn settle(&mut self) {
        let Some(filter) = self.audit.as_ref().filter(|f| f.has_window()) else {
            return;
        };
        while let Some(key) = self.it.key() {
            let group = key.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
            let target = match filter.place(&key[group..]) {
                Placement::Inside => return,
                Placement::NotAnInvocation => None,
                Placement::Before => filter.window_start().map(|start| {
                    let mut target = key[..group].to_vec();
                    target.extend_from_slice(&start);
                    target
                }),
                Placement::After => match prefix_successor(&key[..group]) {
                    Some(next_group) => Some(next_group),
                    // Keys are ASCII: a group always has a successor.
                    None => {
                        self.it.seek_to_last();
                        self.it.next();
                        return;
                    }
                },
            };
            match target {
                Some(target) => self.it.seek(&target),
                None => self.it.next(),
            }
        }
    }

    fn status(&self) -> Result<()> {
        Ok(self.it.status()?)
    }
}

impl<'a> IntoIterator for ScanBuilder<'a> {
    type Item = Result<(String, Vec<u8>)>;
    type IntoIter = Scan<'a>;

    fn into_iter(self) -> Scan<'a> {
        self.iter()
    }
}

/// Judges each scanned key for one reader, and records the keys it hid as
/// one decision when the scan ends.
struct ReadJudge<'a> {
    db: &'a Database,
    ctx: PolicyContext,
    prefix: String,
    hidden: u64,
    first_reason: Option<String>,
}

impl ReadJudge<'_> {
    /// The value the reader may see, or `None` when a hook hides the key.
    fn judge(&mut self, key: &str, value: Vec<u8>) -> Option<Vec<u8>> {
        let chain = &self.db.inner.chain;
        let before = chain.run(Phase::Before, Op::Get, key, None, &self.ctx);
        if !self.keep(before.value.map(|_| ()), before.decisions) {
            return None;
        }
        let after = chain.run(Phase::After, Op::Get, key, Some(value), &self.ctx);
        let mut value = None;
        let allowed = after.value.map(|v| value = v);
        self.keep(allowed, after.decisions)
            .then_some(value)
            .flatten()
    }

    /// Records a key's decisions, except a refusal, which is counted into
    /// the scan's one aggregate decision instead.
    fn keep(&mut self, allowed: Result<()>, mut decisions: Vec<crate::policy::Decision>) -> bool {
        let refused = match allowed {
            Ok(()) => false,
            Err(e) => {
                // The refusal's own decision is the last one made.
                let reason = decisions.pop().map(|d| d.reason).unwrap_or(e.to_string());
                self.hidden += 1;
                self.first_reason.get_or_insert(reason);
                true
            }
        };
        self.db.record_decisions(decisions);
        !refused
    }
}

impl Drop for ReadJudge<'_> {
    fn drop(&mut self) {
        if self.hidden == 0 {
            return;
        }
        let mut recorder = Recorder::new(Op::Get, Phase::Before, &self.prefix, &self.ctx);
        recorder.record(
            "read hooks".into(),
            DecisionKind::Deny,
            &format!(
                "{} keys under {:?} hidden from this reader during one scan (the first: {})",
                self.hidden,
                self.prefix,
                self.first_reason.as_deref().unwrap_or("denied")
            ),
        );
        self.db.record_decisions(recorder.decisions);
    }
}

/// An ordered scan over one prefix; yields `(key, value)` pairs.
pub struct Scan<'a> {
    cursor: Option<Cursor<'a>>,
    pending_error: Option<Error>,
    /// The judge of each key, when read hooks apply.
    judge: Option<ReadJudge<'a>>,
}

impl Scan<'_> {
    fn failed(e: Error) -> Self {
        Scan {
            cursor: None,
            pending_error: Some(e),
            judge: None,
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<(String, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        loop {
            let cursor = self.cursor.as_mut()?;
            let Some((key, value)) = cursor.current() else {
                let status = cursor.status();
                self.cursor = None;
                return status.err().map(Err);
            };
            let (key, value) = match std::str::from_utf8(key) {
                Ok(key) => (key.to_string(), value.to_vec()),
                Err(_) => {
                    self.cursor = None;
                    return Some(Err(Error::storage("a stored key is not UTF-8")));
                }
            };
            cursor.advance();
            // Judged per key: a refusal skips this key, never ends the scan.
            let visible = match self.judge.as_mut() {
                Some(judge) => judge.judge(&key, value),
                None => Some(value),
            };
            let cursor = self.cursor.as_ref()?;
            if let Some(value) = visible.filter(|v| cursor.keeps(v)) {
                return Some(Ok((key, value)));
            }
        }
    }
}

/// The plain audit scan, and the unjudged scan Switchboard's own bookkeeping
/// uses; both are one line of [`Database::scan_from`].
impl Database {
    /// Every key starting with `prefix`, in key order, with its value, through
    /// the read hooks with an empty context.
    pub fn scan(&self, prefix: &str) -> Scan<'_> {
        self.scan_from(prefix).iter()
    }

    /// A scan without the read hooks, for Switchboard's own bookkeeping.
    pub(crate) fn scan_unjudged(&self, prefix: &str, after: Option<&str>) -> Scan<'_> {
        self.scan_from(prefix).after(after).unjudged().iter()
    }
}
