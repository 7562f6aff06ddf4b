//! Which addresses Switchboard may connect to when it calls an agent or
//! probes its health: the egress address policy.
//!
//! Agents are registered by whoever can reach the API, so an endpoint (or a
//! name that resolves, or is later re-pointed, to some address) could make
//! Switchboard fetch from places only the server can reach, such as a cloud
//! metadata service, and hand the answer back as a tool's output. The policy
//! is checked on the address actually connected to: literal IP hosts when an
//! agent is registered and again at every call, and names after DNS
//! resolution (by the transport layer's DNS resolver).
//!
//! Decision order for one address: a configured `deny` range refuses it, then
//! a configured `allow` range permits it, then the built-in refusals apply
//! (link-local `169.254.0.0/16` and `fe80::/10`, and the cloud metadata
//! addresses outside them), and anything else is permitted. Loopback is
//! permitted by default: agents on 127.0.0.1 are the normal case.
//!
//! There is one policy per process, like a host firewall: `switchboard serve`
//! installs the configured one before it loads any agent, and library users
//! may call [`NetworkPolicy::install`]. Until then the default applies.

use crate::error::{Error, Result};
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::{Arc, LazyLock, RwLock};

/// Addresses refused unless a configured `allow` range covers them.
const BUILT_IN_DENY: &[&str] = &[
    // Link-local, which includes the usual metadata address 169.254.169.254.
    "169.254.0.0/16",
    "fe80::/10",
    // Metadata services outside link-local: AWS over IPv6, Alibaba Cloud.
    "fd00:ec2::254/128",
    "100.100.100.200/32",
];

/// The egress address policy. See the module header for the decision order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

static CURRENT: LazyLock<RwLock<Arc<NetworkPolicy>>> =
    LazyLock::new(|| RwLock::new(Arc::new(NetworkPolicy::default())));

impl NetworkPolicy {
    /// A policy with these `allow` and `deny` CIDR ranges (e.g. `10.0.0.0/8`,
    /// `fd00::/8`; a bare address means just that address).
    pub fn new(allow: &[String], deny: &[String]) -> Result<Self> {
        Ok(NetworkPolicy {
            allow: parse_ranges("network.allow", allow)?,
            deny: parse_ranges("network.deny", deny)?,
        })
    }

    /// Makes this the policy of every agent call and health probe from now on.
    pub fn install(self) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(self);
    }

    /// The policy in force.
    pub fn current() -> Arc<NetworkPolicy> {
        CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether connecting to `ip` is allowed.
    pub fn permits(&self, ip: IpAddr) -> bool {
        // `::ffff:169.254.169.254` is the IPv4 address in disguise.
        let ip = ip.to_canonical();
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return true;
        }
        !built_in_deny().iter().any(|n| n.contains(&ip))
    }

    /// Refuses `url` if its host is a literal address the policy denies.
    /// Names pass here; they are judged when resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<()> {
        // The URL parser has already normalised literal addresses
        // (`0xA9FEA9FE` is written 169.254.169.254; IPv6 comes bracketed).
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{url}: the network policy denies connecting to {ip} (link-local and cloud \
                 metadata addresses are refused by default; see `[network] allow` in the config)"
            )))
        }
    }
}

fn built_in_deny() -> &'static [IpNet] {
    static NETS: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
        BUILT_IN_DENY
            .iter()
            .map(|s| s.parse().expect("built-in ranges are valid"))
            .collect()
    });
    &NETS
}

fn parse_ranges(field: &str, ranges: &[String]) -> Result<Vec<IpNet>> {
    ranges
        .iter()
        .map(|r| {
            r.parse::<IpNet>()
                .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    Error::invalid(format!(
                        "{field}: {r:?} is not an address range (e.g. \"10.0.0.0/8\" or \"::1/128\")"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn link_local_and_metadata_are_refused_by_default_loopback_is_not() {
        let p = NetworkPolicy::default();
        for denied in [
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            assert!(!p.permits(ip(denied)), "{denied}");
        }
        for allowed in ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "8.8.8.8"] {
            assert!(p.permits(ip(allowed)), "{allowed}");
        }
    }

    #[test]
    fn deny_beats_allow_and_allow_beats_the_built_in_list() {
        let p = NetworkPolicy::new(
            &["169.254.10.0/24".into(), "10.0.0.0/8".into()],
            &["10.9.0.0/16".into(), "127.0.0.1".into()],
        )
        .unwrap();
        assert!(p.permits(ip("169.254.10.3")));
        assert!(!p.permits(ip("169.254.169.254")));
        assert!(p.permits(ip("10.1.0.1")));
        assert!(!p.permits(ip("10.9.0.1")));
        assert!(!p.permits(ip("127.0.0.1")));
        assert!(NetworkPolicy::new(&["ten".into()], &[]).is_err());
    }

    #[test]
    fn only_literal_hosts_are_judged_in_urls() {
        let p = NetworkPolicy::default();
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(p.check_url(&url("http://169.254.169.254/x")).is_err());
        assert!(p.check_url(&url("http://[fe80::1]:80/x")).is_err());
        assert!(p.check_url(&url("http://metadata.internal/x")).is_ok());
        assert!(p.check_url(&url("http://127.0.0.1:8000/x")).is_ok());
    }
}
