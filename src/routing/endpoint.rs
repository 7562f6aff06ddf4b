//! Where an agent lives, as registration data: in this process, or at an
//! `http://` or `https://` URL. Owns endpoint validation and the default health URL, so the
//! registry can check a registration without knowing how agents are called.

use crate::error::{Error, Result};

/// How an agent is reached; the transport layer turns this into a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// An in-process handler, bound by registration uid in the transport layer.
    Local,
    /// `POST`ed to this URL.
    Http(reqwest::Url),
}

/// Checks an endpoint URL and derives its default health URL
/// (`scheme://host:port/health`).
pub(crate) fn parse_endpoint(endpoint: &str) -> Result<(reqwest::Url, reqwest::Url)> {
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
    crate::policy::NetworkPolicy::current().check_url(&url)?;
    let mut health = url.clone();
    health.set_path("/health");
    health.set_query(None);
    Ok((url, health))
}

#[cfg(test)]
mod tests {
    use super::*;

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
