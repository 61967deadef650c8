//! Which addresses metric queries may go to, and which request headers they may carry.
//!
//! A template's author chooses the address its queries (and its headers from Secrets) are
//! sent to, and the controller sends them from inside the cluster. So, by default:
//! - link-local addresses (169.254.0.0/16, fe80::/10), where clouds serve instance metadata
//!   and credentials, and the metadata services' names and other fixed addresses are refused,
//!   as written in the address and as a name resolves when the controller connects;
//! - headers that would change where a request goes (`Host`, `Forwarded`, `X-Forwarded-*`, …)
//!   or how it is framed (`Content-Length`, `Transfer-Encoding`, …) are refused.
//!
//! The controller's `--metrics-address-allow` adds an allow-list: when set, only the URL
//! prefixes, host names and networks it names may be queried (a network entry also lets a
//! link-local address through, for the rare Prometheus that really lives there).

use std::net::IpAddr;
use std::str::FromStr;

use url::{Host, Url};

/// Instance-metadata services' host names (GCP, Azure, AWS, Alibaba, Tencent, Oracle,
/// DigitalOcean, Equinix), lower case.
const METADATA_NAMES: [&str; 9] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.tencentyun.com",
    "metadata.platformequinix.com",
    "metadata.oraclecloud.com",
];

/// Instance-metadata addresses outside the link-local ranges: Alibaba's, AWS's IPv6 one.
const METADATA_ADDRESSES: [&str; 2] = ["100.100.100.200", "fd00:ec2::254"];

/// Headers that change where a request goes or how it is framed; the HTTP client sets them.
const ROUTING_HEADERS: [&str; 19] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "forwarded",
    "via",
    "x-original-url",
    "x-original-host",
    "x-rewrite-url",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Whether a header named `name` would change where a request goes (or how it is framed):
/// such headers are refused in templates, whatever their value.
pub fn is_routing_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ROUTING_HEADERS.contains(&name.as_str()) || name.starts_with("x-forwarded-")
}

/// One entry of `--metrics-address-allow`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedAddress {
    /// `https://prometheus.monitoring:9090` (or with a path): addresses under this URL.
    UrlPrefix(Url),
    /// `prometheus.monitoring.svc` (that name), or `.monitoring.svc` (any name ending so).
    Host(String),
    /// `10.0.0.0/8` or `10.1.2.3`: addresses in this network, literal or as names resolve.
    Network(ipnet::IpNet),
}

impl FromStr for AllowedAddress {
    type Err = String;

    fn from_str(entry: &str) -> Result<Self, String> {
        let entry = entry.trim();
        if entry.starts_with("http://") || entry.starts_with("https://") {
            let url = Url::parse(entry).map_err(|e| format!("{entry:?} is not a URL: {e}"))?;
            if url.host().is_none() {
                return Err(format!("{entry:?} names no host"));
            }
            return Ok(Self::UrlPrefix(url));
        }
        if let Ok(network) = entry.parse::<ipnet::IpNet>() {
            return Ok(Self::Network(network.trunc()));
        }
        if let Ok(ip) = entry.parse::<IpAddr>() {
            return Ok(Self::Network(ipnet::IpNet::from(ip)));
        }
        let name = entry.trim_end_matches('.').to_ascii_lowercase();
        let label_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.');
        if !name.trim_start_matches('.').is_empty() && name.chars().all(label_chars) {
            return Ok(Self::Host(name));
        }
        Err(format!(
            "{entry:?} is not a URL prefix (https://prometheus.monitoring:9090), a host name (prometheus.monitoring.svc, or .monitoring.svc for any name under it), or a network (10.0.0.0/8)"
        ))
    }
}

impl std::fmt::Display for AllowedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UrlPrefix(url) => write!(f, "{url}"),
            Self::Host(name) => f.write_str(name),
            Self::Network(network) => write!(f, "{network}"),
        }
    }
}

impl AllowedAddress {
    fn allows_name(&self, name: &str) -> bool {
        match self {
            Self::UrlPrefix(url) => url.host_str() == Some(name),
            Self::Host(allowed) => match allowed.strip_prefix('.') {
                Some(suffix) => name.ends_with(allowed.as_str()) || name == suffix,
                None => name == allowed,
            },
            Self::Network(_) => false,
        }
    }

    fn allows_url(&self, url: &Url) -> bool {
        match self {
            Self::UrlPrefix(prefix) => {
                let base = prefix.path().trim_end_matches('/');
                let path = url.path();
                prefix.scheme() == url.scheme()
                    && prefix.host() == url.host()
                    && prefix.port_or_known_default() == url.port_or_known_default()
                    && (path == base || path.starts_with(&format!("{base}/")) || base.is_empty())
            }
            Self::Host(_) => url_name(url).is_some_and(|name| self.allows_name(&name)),
            Self::Network(network) => url_ip(url).is_some_and(|ip| network.contains(&ip)),
        }
    }
}

/// Where metric queries may go: the default refusals, and the optional allow-list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<AllowedAddress>,
}

impl AddressPolicy {
    /// The default refusals, and when `allowed` is not empty, only what it names.
    pub fn new(allowed: Vec<AllowedAddress>) -> Self {
        Self { allowed }
    }

    fn allow_list(&self) -> String {
        let entries: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
        entries.join(", ")
    }

    fn allowed_network(&self, ip: IpAddr) -> bool {
        self.allowed
            .iter()
            .any(|a| matches!(a, AllowedAddress::Network(n) if n.contains(&ip)))
    }

    /// Why queries may not go to `address`, judged from the address itself (a link-local or
    /// metadata address or name, or one the allow-list does not name); `None` when they may,
    /// or when `address` is not a URL (the HTTP client says what is wrong with it).
    pub fn refusal(&self, address: &str) -> Option<String> {
        let url = Url::parse(address).ok()?;
        if let Some(ip) = url_ip(&url) {
            if let Some(why) = fixed_refusal(ip)
                && !self.allowed_network(ip)
            {
                return Some(format!(
                    "{ip} is {why}; metric addresses may not point there unless the controller's --metrics-address-allow names its network"
                ));
            }
        } else if let Some(name) = url_name(&url)
            && METADATA_NAMES.contains(&name.as_str())
            && !self.allowed.iter().any(|a| a.allows_name(&name))
        {
            return Some(format!(
                "{name} is a cloud instance-metadata service (it hands out the node's credentials); metric addresses may not point there unless the controller's --metrics-address-allow names it"
            ));
        }
        if self.allowed.is_empty() || self.allowed.iter().any(|a| a.allows_url(&url)) {
            return None;
        }
        // A name may still resolve into an allowed network: that is checked on connecting.
        let has_networks = self
            .allowed
            .iter()
            .any(|a| matches!(a, AllowedAddress::Network(_)));
        if url_name(&url).is_some() && has_networks {
            return None;
        }
        Some(format!(
            "it is not among the addresses the controller's --metrics-address-allow names ({}): use one of those, or ask the controller's operator to add it",
            self.allow_list()
        ))
    }

    /// Why the controller may not connect to `ip`, which host name `name` resolved to: a
    /// link-local or metadata address, or (with an allow-list that does not name `name`) an
    /// address outside its networks.
    pub fn refusal_of_resolved(&self, name: &str, ip: IpAddr) -> Option<String> {
        let ip = canonical(ip);
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(why) = fixed_refusal(ip)
            && !self.allowed_network(ip)
        {
            return Some(format!(
                "{name} resolves to {ip}, {why}; metric addresses may not point there unless the controller's --metrics-address-allow names its network"
            ));
        }
        let named = self.allowed.iter().any(|a| a.allows_name(&name));
        if self.allowed.is_empty() || named || self.allowed_network(ip) {
            return None;
        }
        Some(format!(
            "{name} resolves to {ip}, which is not among the addresses the controller's --metrics-address-allow names ({})",
            self.allow_list()
        ))
    }
}

/// Why `ip` is refused whatever the allow-list names by host, if it is.
fn fixed_refusal(ip: IpAddr) -> Option<&'static str> {
    let ip = canonical(ip);
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some(
            "a link-local address (where clouds serve instance metadata and the node's credentials)",
        );
    }
    METADATA_ADDRESSES
        .iter()
        .any(|m| m.parse::<IpAddr>().is_ok_and(|m| m == ip))
        .then_some("a cloud instance-metadata address (it hands out the node's credentials)")
}

/// IPv4-mapped IPv6 addresses (`::ffff:169.254.169.254`) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn url_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        Host::Ipv6(v6) => Some(canonical(IpAddr::V6(v6))),
        Host::Domain(_) => None,
    }
}

fn url_name(url: &Url) -> Option<String> {
    match url.host()? {
        Host::Domain(name) => Some(name.trim_end_matches('.').to_ascii_lowercase()),
        Host::Ipv4(_) | Host::Ipv6(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> AddressPolicy {
        AddressPolicy::new(entries.iter().map(|e| e.parse().unwrap()).collect())
    }

    #[test]
    fn addresses_refused_by_default_and_by_an_allow_list() {
        // (allow-list, address, refused because the message contains…)
        let cases: [(&[&str], &str, Option<&str>); 24] = [
            (&[], "http://prometheus.monitoring:9090", None),
            (&[], "http://127.0.0.1:9090", None),
            (&[], "http://10.0.0.7:9090", None),
            (
                &[],
                "http://169.254.169.254/latest/meta-data",
                Some("link-local"),
            ),
            (&[], "http://169.254.0.1:9090", Some("link-local")),
            // Other spellings of 169.254.169.254 that URL parsing normalises.
            (
                &[],
                "http://2852039166/",
                Some("169.254.169.254 is a link-local"),
            ),
            (
                &[],
                "http://0xa9.0xfe.0xa9.0xfe/",
                Some("169.254.169.254 is a link-local"),
            ),
            (
                &[],
                "http://[::ffff:169.254.169.254]/",
                Some("169.254.169.254 is a link-local"),
            ),
            (&[], "http://[fe80::1]:9090", Some("link-local")),
            (
                &[],
                "http://[fd00:ec2::254]/",
                Some("instance-metadata address"),
            ),
            (
                &[],
                "http://100.100.100.200/",
                Some("instance-metadata address"),
            ),
            (
                &[],
                "http://metadata.google.internal/computeMetadata/v1/",
                Some("instance-metadata service"),
            ),
            (
                &[],
                "http://METADATA.Google.Internal./",
                Some("instance-metadata service"),
            ),
            (&[], "http://metadata/", Some("instance-metadata service")),
            (&["169.254.0.0/16"], "http://169.254.10.1:9090", None),
            (
                &["https://prom.monitoring:9090"],
                "https://prom.monitoring:9090",
                None,
            ),
            (
                &["https://prom.monitoring:9090"],
                "https://prom.monitoring:9090/api/prom",
                None,
            ),
            (
                &["https://prom.monitoring:9090/tenant-a"],
                "https://prom.monitoring:9090/tenant-ab",
                Some("--metrics-address-allow names (https://prom.monitoring:9090/tenant-a)"),
            ),
            (
                &["https://prom.monitoring:9090"],
                "http://prom.monitoring:9090",
                Some("not among"),
            ),
            (
                &["https://prom.monitoring:9090"],
                "https://prom.monitoring:9091",
                Some("not among"),
            ),
            (
                &["https://prom.monitoring:9090"],
                "https://kubernetes.default.svc/api",
                Some("not among"),
            ),
            (
                &[".monitoring.svc"],
                "http://thanos.monitoring.svc:9090",
                None,
            ),
            (
                &[".monitoring.svc"],
                "http://evilmonitoring.svc:9090",
                Some("not among"),
            ),
            // A name may resolve into an allowed network: checked on connecting.
            (&["10.0.0.0/8"], "http://prometheus.monitoring:9090", None),
        ];
        for (allowed, address, refused) in cases {
            let got = policy(allowed).refusal(address);
            match (refused, &got) {
                (None, None) => {}
                (Some(expected), Some(message)) => {
                    assert!(
                        message.contains(expected),
                        "{allowed:?} {address}: {message}"
                    );
                }
                _ => panic!("{allowed:?} {address}: expected {refused:?}, got {got:?}"),
            }
        }
        assert!(
            policy(&["10.0.0.0/8"])
                .refusal("http://192.168.1.1:9090")
                .is_some()
        );
    }

    #[test]
    fn resolved_addresses_are_checked_on_connecting() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases: [(&[&str], &str, &str, Option<&str>); 8] = [
            (&[], "prom.example", "10.1.2.3", None),
            (
                &[],
                "rebind.example",
                "169.254.169.254",
                Some("rebind.example resolves to 169.254.169.254, a link-local"),
            ),
            (
                &[],
                "rebind.example",
                "::ffff:169.254.169.254",
                Some("link-local"),
            ),
            (&[], "v6.example", "fe80::1", Some("link-local")),
            (&["10.0.0.0/8"], "prom.example", "10.1.2.3", None),
            (
                &["10.0.0.0/8"],
                "prom.example",
                "192.168.0.1",
                Some("not among"),
            ),
            (&["prom.example"], "prom.example", "192.168.0.1", None),
            (
                &["prom.example"],
                "prom.example",
                "169.254.169.254",
                Some("link-local"),
            ),
        ];
        for (allowed, name, address, refused) in cases {
            let got = policy(allowed).refusal_of_resolved(name, ip(address));
            match (refused, &got) {
                (None, None) => {}
                (Some(expected), Some(message)) => {
                    assert!(message.contains(expected), "{name} {address}: {message}")
                }
                _ => panic!("{allowed:?} {name} {address}: expected {refused:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn allow_list_entries_parse_or_say_what_they_may_be() {
        let parsed = |e: &str| e.parse::<AllowedAddress>();
        assert!(matches!(
            parsed("https://prom:9090"),
            Ok(AllowedAddress::UrlPrefix(_))
        ));
        assert!(matches!(
            parsed("10.0.0.0/8"),
            Ok(AllowedAddress::Network(_))
        ));
        assert!(matches!(parsed("10.0.0.7"), Ok(AllowedAddress::Network(_))));
        assert!(matches!(parsed("fd00::/8"), Ok(AllowedAddress::Network(_))));
        assert_eq!(
            parsed("Prom.Monitoring."),
            Ok(AllowedAddress::Host("prom.monitoring".into()))
        );
        for bad in ["", "prom:9090/x", "http://", "a b"] {
            let error = parsed(bad).unwrap_err();
            assert!(!error.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn headers_that_change_where_a_request_goes_are_recognised() {
        for name in [
            "Host",
            "host",
            "X-Forwarded-Host",
            "x-forwarded-for",
            "Forwarded",
            "Transfer-Encoding",
            "Connection",
            "X-Original-URL",
        ] {
            assert!(is_routing_header(name), "{name}");
        }
        for name in ["Authorization", "X-Scope-OrgID", "X-Api-Key", "Accept"] {
            assert!(!is_routing_header(name), "{name}");
        }
    }
}
