//! Host-header validation, against DNS rebinding: a web page served from an
//! attacker's name that later resolves to this server's address can make a
//! browser send requests here, but they still carry the attacker's name in
//! `Host`. Only this server's own names are accepted: any literal IP address
//! (a rebinding attack needs a name), `localhost` when listening on loopback
//! or on every interface, and the configured `allowed_hosts`.

use super::errors::ApiError;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The names requests may be addressed to.
#[derive(Clone, Debug)]
pub(crate) struct AllowedHosts {
    names: Arc<HashSet<String>>,
}

impl AllowedHosts {
    /// The names of a server listening on `listen`, plus `configured` ones
    /// (given with or without a port).
    pub(crate) fn new(listen: SocketAddr, configured: &[String]) -> Self {
        let mut names: HashSet<String> = configured.iter().map(|h| host_part(h)).collect();
        let ip = listen.ip();
        if ip.is_loopback() || ip.is_unspecified() {
            names.insert("localhost".into());
        }
        AllowedHosts {
            names: Arc::new(names),
        }
    }

    fn permits(&self, host: &str) -> bool {
        // Most requests name a literal address: judged without allocating.
        if literal_address(host) {
            return true;
        }
        let host = host_part(host);
        host.parse::<IpAddr>().is_ok() || self.names.contains(&host)
    }

    /// Refuses a request whose `Host` (or absolute-form authority) names
    /// another server. A request without either (HTTP/1.0) passes.
    pub(crate) fn check(&self, request: &Request) -> Result<(), ApiError> {
        let host = request.uri().authority().map(|a| a.as_str()).or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        });
        match host {
            Some(host) if !self.permits(host) => Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!(
                    "this server does not answer to the name {host:?}; address it by IP, or add \
                     the name to allowed_hosts in the server's config"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Whether `authority` is an IP address, with or without a port.
fn literal_address(authority: &str) -> bool {
    authority.parse::<SocketAddr>().is_ok() || authority.parse::<IpAddr>().is_ok()
}

/// `Host`'s name without its port or IPv6 brackets, lowercased.
fn host_part(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    match a.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_string(),
        _ => a,
    }
    .trim_end_matches('.')
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_names_and_literal_addresses_pass() {
        let hosts = AllowedHosts::new(
            "127.0.0.1:7700".parse().unwrap(),
            &["Switchboard.Internal:7700".into()],
        );
        for ok in [
            "127.0.0.1:7700",
            "LOCALHOST:7700",
            "localhost",
            "[::1]:7700",
            "10.0.0.3",
            "switchboard.internal",
            "switchboard.internal.:80",
        ] {
            assert!(hosts.permits(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7700",
            "localhost.evil.example",
        ] {
            assert!(!hosts.permits(bad), "{bad}");
        }
        let public = AllowedHosts::new("10.0.0.1:7700".parse().unwrap(), &[]);
        assert!(!public.permits("localhost:7700"));
    }
}
