//! Key globs: `*` matches within one `/`-separated segment, `**` matches any
//! number of whole segments (including none, so `a/**` matches `a`), and a
//! trailing `/*` also covers everything nested below (`tools/sensitive/*`
//! matches `tools/sensitive/x/01K…`, as `bucket/*` does in AWS IAM): a scope
//! names what it protects, and widening it only makes more hooks run.
//!
//! Globs are compiled once when a hook is registered; a glob that can match
//! no key of a namespace Switchboard writes (e.g. `agents/*/x`) is refused
//! there, saying what to write instead. Matching allocates nothing, rejects
//! most keys with a literal-prefix comparison, and is a dynamic programme over
//! (pattern segment, key segment): linear in their product, whatever the
//! number of `**`.

use crate::error::{Error, Result};
use std::fmt;

use crate::namespace::MAX_SEGMENTS;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnyDepth,
    /// A segment pattern; may contain `*` (any run of characters except `/`).
    Pattern(String),
}

/// A compiled key glob such as `tools/shell/**` or `agents/*`.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
    /// The pattern's text before its first wildcard: a key that does not start
    /// with it cannot match.
    literal_prefix: String,
}

impl Glob {
    /// Compiles a glob. Refuses empty patterns, empty segments (`a//b`), and `**`
    /// mixed with other characters inside a segment (`a**`), because their meaning
    /// would be ambiguous.
    pub fn new(pattern: &str) -> Result<Glob> {
        if pattern.is_empty() {
            return Err(Error::invalid("glob is empty; use `**` to match every key"));
        }
        let mut segments = Vec::new();
        for part in pattern.split('/') {
            if part.is_empty() {
                return Err(Error::invalid(format!(
                    "glob {pattern:?} has an empty segment; remove the doubled or trailing `/`"
                )));
            }
            if part == "**" {
                // Consecutive `**` mean the same as one.
                if segments.last() != Some(&Segment::AnyDepth) {
                    segments.push(Segment::AnyDepth);
                }
                continue;
            }
            if part.contains("**") {
                return Err(Error::invalid(format!(
                    "glob {pattern:?}: `**` must be a whole segment (write `a/**`, not `a**`)"
                )));
            }
            if let Some(bad) = part
                .chars()
                .find(|&c| c != '*' && !crate::namespace::is_id_char(c))
            {
                return Err(Error::invalid(format!(
                    "glob {pattern:?} contains {bad:?}; keys only hold [A-Za-z0-9._:-], `*` and `**`"
                )));
            }
            segments.push(Segment::Pattern(part.to_string()));
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(Error::invalid(format!(
                "glob {pattern:?} has more than {MAX_SEGMENTS} segments"
            )));
        }
        // A trailing `/*` also covers nested keys: `a/*` means `a/*/**`.
        if segments.len() > 1 && segments.last() == Some(&Segment::Pattern("*".into())) {
            segments.push(Segment::AnyDepth);
        }
        check_reachable(pattern, &segments)?;
        let literal = &pattern[..pattern.find('*').unwrap_or(pattern.len())];
        // `a/**` matches `a` itself: the prefix stops before the last `/`.
        let literal_prefix = match literal.strip_suffix('/') {
            Some(dir) if pattern.ends_with("/**") && !dir.contains('*') => dir,
            _ => literal,
        }
        .to_string();
        Ok(Glob {
            source: pattern.to_string(),
            segments,
            literal_prefix,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `key` is inside this glob's scope.
    pub fn matches(&self, key: &str) -> bool {
        if !key.starts_with(&self.literal_prefix) {
            return false;
        }
        let mut parts: [&str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
        let mut count = 0;
        for part in key.split('/') {
            if count == MAX_SEGMENTS {
                return false;
            }
            parts[count] = part;
            count += 1;
        }
        match_segments(&self.segments, &parts[..count])
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether `pattern` matches all of `key`: `fits[i][j]` says whether
/// `pattern[i..]` matches `key[j..]`, filled from the end.
fn match_segments(pattern: &[Segment], key: &[&str]) -> bool {
    let (m, n) = (pattern.len(), key.len());
    let mut fits = [[false; MAX_SEGMENTS + 2]; MAX_SEGMENTS + 2];
    fits[m][n] = true;
    for i in (0..m).rev() {
        for j in (0..=n).rev() {
            fits[i][j] = match &pattern[i] {
                // Swallow nothing, or one more segment.
                Segment::AnyDepth => fits[i + 1][j] || (j < n && fits[i][j + 1]),
                Segment::Pattern(p) => {
                    j < n && fits[i + 1][j + 1] && match_wildcards(p.as_bytes(), key[j].as_bytes())
                }
            };
        }
    }
    fits[0][0]
}

/// Namespaces Switchboard writes, with the one depth their keys have.
const FIXED_DEPTH: [(&str, usize, &str); 6] = [
    ("tools", 4, "tools/{category}/{tool}/{invocation_id}"),
    ("agents", 2, "agents/{agent_id}"),
    ("sessions", 2, "sessions/{session_id}"),
    ("inflight", 2, "inflight/{invocation_id}"),
    ("policy_log", 2, "policy_log/{id}"),
    ("policies", 2, "policies/{name}"),
];

/// Refuses a glob that names one of Switchboard's namespaces but can match
/// none of its keys (they all have one depth): such a hook would silently
/// never run.
fn check_reachable(pattern: &str, segments: &[Segment]) -> Result<()> {
    let Some(Segment::Pattern(first)) = segments.first() else {
        return Ok(());
    };
    let Some((_, depth, shape)) = FIXED_DEPTH.iter().find(|(ns, _, _)| ns == first) else {
        return Ok(());
    };
    let fixed = segments
        .iter()
        .filter(|s| matches!(s, Segment::Pattern(_)))
        .count();
    let open = segments.contains(&Segment::AnyDepth);
    if fixed > *depth || (!open && fixed < *depth) {
        return Err(Error::invalid(format!(
            "glob {pattern:?} can match no key: every key under {first}/ is {shape} ({depth} segments); \
             write `{first}/…/**` (e.g. `{first}/x/**`) to cover everything below a point"
        )));
    }
    Ok(())
}

/// Matches one segment against a pattern where `*` stands for any run of bytes.
/// Iterative, with a single backtrack point: linear in practice, no recursion.
fn match_wildcards(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(glob: &str, key: &str) -> bool {
        Glob::new(glob).unwrap().matches(key)
    }

    #[test]
    fn star_stays_inside_a_segment_except_at_the_end() {
        assert!(m("tools/sensitive/*", "tools/sensitive/rm/01J"));
        assert!(m("notes/*", "notes/a"));
        assert!(m("notes/*", "notes/a/b/c"));
        assert!(!m("notes/*", "notes"));
        assert!(!m("tools/sensitive/*", "tools/sensitive"));
        assert!(m("notes/*/x", "notes/a/x"));
        assert!(!m("notes/*/x", "notes/a/b/x"));
        assert!(m("agents/*_agent", "agents/code_agent"));
        assert!(!m("agents/*_agent", "agents/code_agents"));
        assert!(m("a/*x*y/b", "a/0x1y/b"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(m("tools/**", "tools/code/run/1"));
        assert!(m("tools/**", "tools/code"));
        assert!(m("notes/**", "notes"));
        assert!(!m("notes/**", "notesx"));
        assert!(m("notes/**/1", "notes/1"));
        assert!(m("**", "anything/at/all"));
        assert!(m("tools/**/run/*", "tools/code/run/1"));
        assert!(!m("tools/**/run/*", "tools/code/walk/1"));
        assert!(!m("tools/**", "toolsx/code"));
        assert!(!m("tools/**", "agents/tools"));
    }

    #[test]
    fn many_double_stars_stay_cheap_on_a_pathological_key() {
        let glob = Glob::new("a/**/b/**/c/**/d/**/e/**/f/**/g/**/z").unwrap();
        let key = vec!["a"; MAX_SEGMENTS].join("/");
        // Exponential backtracking would not finish; the table is 32 x 32.
        assert!(!glob.matches(&key));
        let hit = "a/b/c/d/e/f/g/z";
        assert!(glob.matches(hit));
    }

    #[test]
    fn globs_that_can_match_no_key_of_their_namespace_are_refused() {
        for bad in [
            "tools/x",
            "tools/sensitive",
            "tools/a/b/c/d",
            "agents/*/x",
            "sessions/a/b",
        ] {
            let err = Glob::new(bad).unwrap_err().to_string();
            assert!(err.contains("can match no key"), "{bad}: {err}");
        }
        for good in [
            "tools/sensitive/*",
            "tools/**",
            "tools/a/**",
            "tools/*/*/*",
            "agents/*",
            "sessions/**",
        ] {
            assert!(Glob::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn literal_globs_match_exactly() {
        assert!(m("agents/a", "agents/a"));
        assert!(!m("agents/a", "agents/ab"));
        assert!(!m("agents/a", "agents/a/b"));
    }

    #[test]
    fn malformed_globs_are_refused() {
        for bad in ["", "a//b", "a/", "a**", "a/**b", "a b", "é"] {
            assert!(
                matches!(Glob::new(bad), Err(Error::InvalidInput(_))),
                "{bad:?} should be refused"
            );
        }
    }
}

/// Property tests over hostile patterns and keys: none panics, and the
/// segment rules hold. Deeper runs: `PROPTEST_CASES=100000 cargo test --lib glob`.
#[cfg(test)]
mod properties {
    use super::Glob;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::test_support::proptest_config(512))]

        #[test]
        fn globs_never_panic_and_literal_globs_match_only_themselves(
            pattern in "[a-c*/]{0,12}",
            key in "[a-c/]{0,12}",
        ) {
            if let Ok(glob) = Glob::new(&pattern) {
                let matched = glob.matches(&key);
                if !pattern.contains('*') {
                    prop_assert_eq!(matched, pattern == key);
                }
                if pattern == "**" {
                    prop_assert!(matched);
                }
            }
        }

        #[test]
        fn single_star_never_crosses_a_segment(prefix in "[a-c]{1,4}", rest in "[a-c]{1,3}(/[a-c]{1,3}){0,2}") {
            // In the middle of a glob `*` stays within one segment...
            let glob = Glob::new(&format!("{prefix}/*/end")).unwrap();
            let key = format!("{prefix}/{rest}/end");
            let one_segment = !rest.contains('/');
            prop_assert_eq!(glob.matches(&key), one_segment);
            // ...and a trailing `/*` also covers everything nested below.
            let trailing = Glob::new(&format!("{}/*", prefix)).unwrap();
            let nested = format!("{}/{}", prefix, rest);
            prop_assert!(trailing.matches(&nested));
        }
    }
}
