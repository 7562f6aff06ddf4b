//! Key globs: `*` matches within one `/`-separated segment, `**` matches any
//! number of whole segments (including none).
//!
//! Globs are compiled once when a hook is registered; matching allocates nothing
//! and rejects most keys with a literal-prefix comparison before doing any
//! wildcard work.

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
        let literal_prefix = pattern[..pattern.find('*').unwrap_or(pattern.len())].to_string();
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

fn match_segments(pattern: &[Segment], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            // Try every split point: `**` swallows key[..i].
            (0..=key.len()).any(|i| match_segments(rest, &key[i..]))
        }
        Some((Segment::Pattern(p), rest)) => match key.split_first() {
            Some((first, key_rest)) => {
                match_wildcards(p.as_bytes(), first.as_bytes()) && match_segments(rest, key_rest)
            }
            None => false,
        },
    }
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
    fn star_stays_inside_a_segment() {
        assert!(m("tools/sensitive/*", "tools/sensitive/rm"));
        assert!(!m("tools/sensitive/*", "tools/sensitive/rm/01J"));
        assert!(!m("tools/sensitive/*", "tools/sensitive"));
        assert!(m("agents/*_agent", "agents/code_agent"));
        assert!(!m("agents/*_agent", "agents/code_agents"));
        assert!(m("a/*x*y/b", "a/0x1y/b"));
    }

    #[test]
    fn double_star_crosses_segments() {
        assert!(m("tools/**", "tools/code/run/1"));
        assert!(m("tools/**", "tools/code"));
        assert!(m("tools/**/1", "tools/1"));
        assert!(m("**", "anything/at/all"));
        assert!(m("tools/**/run/*", "tools/code/run/1"));
        assert!(!m("tools/**/run/*", "tools/code/walk/1"));
        assert!(!m("tools/**", "toolsx/code"));
        assert!(!m("tools/**", "agents/tools"));
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
