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
//! An address is judged as the one it reaches (`canonical`): an IPv6
//! address that carries an IPv4 one (mapped `::ffff:a.b.c.d`, compatible
//! `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) as that IPv4 address, and the
//! unspecified address (`0.0.0.0`, `::`), which a connection takes to mean
//! this host, as loopback. Otherwise `[::ffff:169.254.169.254]` would pass a
//! rule about `169.254.0.0/16`, and `0.0.0.0` one about `127.0.0.0/8`.
//!
//! There is one policy per process, like a host firewall: `switchboard serve`
//! installs the configured one before it loads any agent, and library users
//! may call [`NetworkPolicy::install`]. Until then the default applies.

use crate::error::{Error, Result};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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

    /// The addresses `host` resolved to that this policy permits, for a
    /// client to connect to; an error naming the denied ones if every one
    /// was denied (a name that resolved to nothing is the caller's to report).
    pub(crate) fn permitted_addresses(
        &self,
        host: &str,
        resolved: impl IntoIterator<Item = SocketAddr>,
    ) -> std::result::Result<Vec<SocketAddr>, String> {
        let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) =
            resolved.into_iter().partition(|a| self.permits(a.ip()));
        if allowed.is_empty() && !denied.is_empty() {
            let denied: Vec<String> = denied.iter().map(|a| a.ip().to_string()).collect();
            return Err(format!(
                "{host} resolves only to addresses the network policy denies ({})",
                denied.join(", ")
            ));
        }
        Ok(allowed)
    }

    /// Whether connecting to `ip` is allowed, judged as the address it
    /// reaches (see `canonical`).
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
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
            return Ok(());
        }
        let reached = canonical(ip);
        let target = if reached == ip {
            ip.to_string()
        } else {
            format!("{ip} (which reaches {reached})")
        };
        Err(Error::invalid(format!(
            "{url}: the network policy denies connecting to {target} (link-local and cloud \
             metadata addresses are refused by default; see `[network] allow` and `deny` in \
             the config)"
        )))
    }
}

/// NAT64's well-known prefix (RFC 6052): `64:ff9b::a.b.c.d` is translated
/// to, and so reaches, `a.b.c.d`.
const NAT64_WELL_KNOWN: [u16; 6] = [0x64, 0xff9b, 0, 0, 0, 0];

/// The address a connection to `ip` reaches, for judging it: an IPv6
/// address carrying an IPv4 one (IPv4-mapped, IPv4-compatible, NAT64's
/// well-known prefix) is that IPv4 address, and the unspecified address of
/// either family is that family's loopback.
fn canonical(ip: IpAddr) -> IpAddr {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let segments = v6.segments();
    let low = Ipv4Addr::from(((segments[6] as u32) << 16) | segments[7] as u32);
    if segments[..6] == NAT64_WELL_KNOWN {
        return Some(low);
    }
    // IPv4-compatible (`::a.b.c.d`, deprecated but still routed by some
    // stacks); `::` and `::1` are IPv6's own unspecified and loopback.
    if segments[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(low);
    }
    None
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
    fn aliases_are_judged_as_the_address_they_reach() {
        let p = NetworkPolicy::default();
        for metadata in [
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::169.254.169.254",
            "::169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::6464:64c8",
        ] {
            assert!(!p.permits(ip(metadata)), "{metadata}");
        }
        let no_loopback =
            NetworkPolicy::new(&[], &["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        for local in [
            "0.0.0.0",
            "::",
            "::ffff:0.0.0.0",
            "64:ff9b::7f00:1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!no_loopback.permits(ip(local)), "{local}");
        }
        // An allow range names the address reached, whatever spelling is dialled.
        let allowed = NetworkPolicy::new(&["169.254.10.0/24".into()], &[]).unwrap();
        assert!(allowed.permits(ip("64:ff9b::169.254.10.7")));
        assert!(!allowed.permits(ip("64:ff9b::169.254.169.254")));
    }

    #[test]
    fn permitted_addresses_keep_the_allowed_and_name_the_denied() {
        let p = NetworkPolicy::default();
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mixed = [a("169.254.169.254:80"), a("127.0.0.1:80")];
        assert_eq!(
            p.permitted_addresses("h", mixed).unwrap(),
            vec![a("127.0.0.1:80")]
        );
        let e = p
            .permitted_addresses("meta", [a("169.254.169.254:80")])
            .unwrap_err();
        assert_eq!(
            e,
            "meta resolves only to addresses the network policy denies (169.254.169.254)"
        );
        assert!(p.permitted_addresses("none", []).unwrap().is_empty());
    }

    #[test]
    fn canonical_forms() {
        let c = |s: &str| canonical(ip(s)).to_string();
        assert_eq!(c("0.0.0.0"), "127.0.0.1");
        assert_eq!(c("::"), "::1");
        assert_eq!(c("::1"), "::1");
        assert_eq!(c("::ffff:10.1.2.3"), "10.1.2.3");
        assert_eq!(c("::10.1.2.3"), "10.1.2.3");
        assert_eq!(c("64:ff9b::a9fe:a9fe"), "169.254.169.254");
        // Only the well-known prefix: other addresses stay as they are.
        assert_eq!(c("64:ff9b:1::a9fe:a9fe"), "64:ff9b:1::a9fe:a9fe");
        assert_eq!(c("2001:db8::a9fe:a9fe"), "2001:db8::a9fe:a9fe");
        assert_eq!(c("fe80::1"), "fe80::1");
        assert_eq!(c("8.8.8.8"), "8.8.8.8");
    }

    #[test]
    fn a_refusal_names_the_address_reached() {
        let p = NetworkPolicy::default();
        let url = reqwest::Url::parse("http://[64:ff9b::a9fe:a9fe]/x").unwrap();
        let e = p.check_url(&url).unwrap_err().to_string();
        assert!(e.contains("reaches 169.254.169.254"), "{e}");
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
