//! Where an agent lives, as registration data: in this process, or at an
//! `http://` or `https://` URL (an HTTP, MCP or A2A agent). Owns endpoint validation and the default health URL, so the
//! registry can check a registration without knowing how agents are called.

use crate::error::{Error, Result};
use regex::Regex;
use std::sync::LazyLock;

/// The endpoint and health URLs a registration accepts, as a regular
/// expression: `http://` or `https://`, a host (a DNS name of letters, digits and single
/// inner hyphens whose last label starts with a letter, so that no label is
/// read as a number or as punycode; a dotted-quad IPv4 address; or a
/// bracketed IPv6 address), an
/// optional port, then an optional path and query of visible ASCII (no `#`
/// fragment). docs/openapi.json quotes it; registration checks it before
/// anything else, and every string it matches is a URL (a test holds the two
/// together), so what the document calls valid is what the server accepts.
pub const ENDPOINT_PATTERN: &str = concat!(
    "^https?://",
    "(",
    "([A-Za-z0-9]+(-[A-Za-z0-9]+)*\\.)*[A-Za-z][A-Za-z0-9]*(-[A-Za-z0-9]+)*",
    "|((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    "|\\[(",
    "([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}",
    "|([0-9a-fA-F]{1,4}:){1,7}:",
    "|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
    "|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}",
    "|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
    "|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}",
    "|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
    "|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}",
    "|:((:[0-9a-fA-F]{1,4}){1,7}|:)",
    // IPv4-mapped and -embedded forms (::ffff:169.254.169.254), which the
    // network policy must see through.
    "|::([fF]{4}(:0{1,4})?:)?((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    "|([0-9a-fA-F]{1,4}:){1,4}:((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
    ")\\]",
    ")",
    "(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?",
    "([/?][!-\"$-~]*)?$",
);

/// The longest endpoint or health URL accepted (bytes).
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// Checks the text of a URL given at registration against
/// [`ENDPOINT_PATTERN`] and [`MAX_ENDPOINT_LEN`]; `what` names it in the
/// error. (URLs reloaded from the store are parsed, not re-checked, so a
/// stricter rule never strands an agent registered under an older one.)
pub(crate) fn check_endpoint_text(what: &str, url: &str) -> Result<()> {
    static PATTERN: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(ENDPOINT_PATTERN).expect("the endpoint pattern compiles"));
    if url.len() > MAX_ENDPOINT_LEN {
        return Err(Error::invalid(format!(
            "{what} is {} bytes long; the limit is {MAX_ENDPOINT_LEN}",
            url.len()
        )));
    }
    if !PATTERN.is_match(url) {
        return Err(Error::invalid(format!(
            "{what} {url:?} is not an http:// or https:// URL with a DNS name or IP address as host, \
             an optional port, and a path of visible ASCII without a #fragment \
             (percent-encode anything else), e.g. http://127.0.0.1:8001/invoke"
        )));
    }
    Ok(())
}

/// How an agent is reached; the transport layer turns this into a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// An in-process handler, bound by registration uid in the transport layer.
    Local,
    /// `POST`ed to this URL.
    Http(reqwest::Url),
    /// An MCP server (streamable HTTP or stdio); the transport layer keeps
    /// its connections by registration uid.
    Mcp(crate::namespace::McpServer),
    /// An A2A agent, found by its Agent Card; the transport layer keeps the
    /// card's chosen interface by registration uid.
    A2a(crate::namespace::A2aAgent),
}

/// Checks an endpoint URL under the network policy in force and derives
/// its default health URL (`scheme://host:port/health`).
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<(reqwest::Url, reqwest::Url)> {
    parse_endpoint_under(endpoint, &crate::policy::NetworkPolicy::current())
}

/// [`parse_endpoint`] under `network` rather than the policy in force.
pub(crate) fn parse_endpoint_under(
    endpoint: &str,
    network: &crate::policy::NetworkPolicy,
) -> Result<(reqwest::Url, reqwest::Url)> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| Error::invalid(format!("endpoint {endpoint:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(format!(
            "endpoint {endpoint:?}: give an http:// or https:// URL"
        )));
    }
    if url.host_str().is_none() {
        return Err(Error::invalid(format!("endpoint {endpoint:?} has no host")));
    }
    network.check_url(&url)?;
    let mut health = url.clone();
    health.set_path("/health");
    health.set_query(None);
    Ok((url, health))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(crate::test_support::proptest_config(2000))]

        /// Every URL the documented pattern (and length limit) admits is one
        /// registration takes.
        #[test]
        fn what_the_pattern_admits_parses(url in ENDPOINT_PATTERN.trim_start_matches('^').trim_end_matches('$')) {
            proptest::prop_assume!(url.len() <= MAX_ENDPOINT_LEN);
            check_endpoint_text("endpoint", &url).unwrap();
            let parsed = reqwest::Url::parse(&url);
            proptest::prop_assert!(parsed.is_ok(), "{:?}: {:?}", url, parsed);
        }
    }

    #[test]
    fn the_pattern_refuses_what_urls_would_quietly_rewrite() {
        for bad in [
            "http://w*",
            " http://a",
            "http://a/b c",
            "http://a/#frag",
            "http://a.1/",
            "http://1.2.3/",
            "http://a:65536/",
            "ftp://a/",
            "http://user@a/",
            "http://xn--.a/",
            "http://-a/",
        ] {
            assert!(check_endpoint_text("endpoint", bad).is_err(), "{bad:?}");
        }
        for good in [
            "http://127.0.0.1:8001/invoke",
            "http://localhost/x?y=1",
            "http://[::1]:9/",
            "http://agent-1.internal:80",
            "https://agent.example:8443/invoke",
        ] {
            check_endpoint_text("endpoint", good).unwrap();
        }
    }

    #[test]
    fn endpoints_must_be_http() {
        let (url, health) = parse_endpoint("http://127.0.0.1:8001/invoke?x=1").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8001/invoke?x=1");
        assert_eq!(health.as_str(), "http://127.0.0.1:8001/health");
        let (url, health) = parse_endpoint("https://agent.example:8443/invoke").unwrap();
        assert_eq!(url.as_str(), "https://agent.example:8443/invoke");
        assert_eq!(health.as_str(), "https://agent.example:8443/health");
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            "127.0.0.1:80",
            "",
            "http://",
        ] {
            assert!(
                matches!(parse_endpoint(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }
}
