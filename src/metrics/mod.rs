//! Where measurements come from. The analysis core calls a [`MetricsSource`]; implementations
//! do the I/O. Prometheus is the first (and, for now, only) provider.

pub mod prometheus;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

pub use prometheus::PrometheusSource;

/// A rendered query in its two forms: the text sent to Prometheus, and the text shown to
/// people (measurement reasons, `Canary` status, Events, logs, CLI output), in which the value
/// of every argument that comes from a Secret is replaced by `<secret:NAME>`.
///
/// `Display` and `Debug` write the shown form, so formatting a query can never leak a secret;
/// only the Prometheus client reads [`Query::text_to_send`].
#[derive(Clone, PartialEq, Eq)]
pub struct Query {
    sent: String,
    shown: String,
    /// Each secret value placed in `sent`, by argument name, as given and as written into the
    /// query (escaped): Prometheus may quote either back in an error (a regex that does not
    /// compile, a parse error), and [`Query::redact`] takes them out of such text.
    secrets: Vec<(String, String)>,
}

impl Query {
    /// A query without secret values: shown exactly as sent.
    pub fn plain(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            shown: text.clone(),
            sent: text,
            secrets: Vec::new(),
        }
    }

    /// A query holding secret values: `shown` stands in for `sent` wherever people can read
    /// it, and `secrets` (argument name, value) are redacted from what Prometheus says.
    pub fn with_secrets(sent: String, shown: String, secrets: Vec<(String, String)>) -> Self {
        Self {
            sent,
            shown,
            secrets,
        }
    }

    /// The text for Prometheus. It may hold secret values: never log or display it.
    pub fn text_to_send(&self) -> &str {
        &self.sent
    }

    /// What stands for secret argument `name`'s value wherever people can read the query.
    pub fn placeholder(name: &str) -> String {
        format!("<secret:{name}>")
    }

    /// The text people see: secret values replaced by `<secret:NAME>`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `text` with every secret value of this query replaced by `<secret:NAME>`.
    pub fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<&(String, String)> =
            self.secrets.iter().filter(|(_, v)| !v.is_empty()).collect();
        // Longest first, so a value that contains another is replaced whole.
        secrets.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        secrets
            .into_iter()
            .fold(text.to_string(), |text, (name, value)| {
                text.replace(value.as_str(), &Self::placeholder(name))
            })
    }
}

impl std::fmt::Display for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Query").field(&self.shown).finish()
    }
}

/// One instant query, fully rendered.
#[derive(Clone, PartialEq)]
pub struct QueryRequest {
    /// Base URL of the Prometheus HTTP API.
    pub address: String,
    pub query: Query,
    /// Evaluate at this instant (retrospective analysis); `None` means now.
    pub time: Option<jiff::Timestamp>,
    pub timeout: Duration,
    /// Extra HTTP headers. Values may be secrets: never log them.
    pub headers: Vec<(String, String)>,
    /// Skip TLS certificate verification.
    pub insecure: bool,
}

/// Hand-written so that a request in a log line shows neither header values (credentials,
/// tenant tokens), nor secret argument values in the query, nor a password in the address.
impl std::fmt::Debug for QueryRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            address,
            query,
            time,
            timeout,
            headers,
            insecure,
        } = self;
        let header_names: Vec<String> = headers
            .iter()
            .map(|(name, _)| format!("{name}: <redacted>"))
            .collect();
        f.debug_struct("QueryRequest")
            .field("address", &without_userinfo(address))
            .field("query", query)
            .field("time", time)
            .field("timeout", timeout)
            .field("headers", &header_names)
            .field("insecure", insecure)
            .finish()
    }
}

/// `address` without the `user:password@` part of its authority, for messages people read:
/// `https://user:pass@prom:9090/x` is shown as `https://prom:9090/x`. Works on text that is not
/// a valid URL too, since it is also used to describe addresses that could not be parsed.
pub fn without_userinfo(address: &str) -> String {
    let (scheme, rest) = match address.find("://") {
        Some(at) => address.split_at(at + 3),
        None => ("", address),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => address.to_string(),
    }
}

/// A series of an instant vector: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// What an instant query returned.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryOutput {
    Scalar(f64),
    Vector(Vec<Series>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "Prometheus at {address} is unreachable: {detail}; check the address and that Prometheus is running"
    )]
    Unreachable { address: String, detail: String },
    #[error("Prometheus at {address} did not answer within {timeout_ms} ms (the metric's timeout)")]
    Timeout { address: String, timeout_ms: u128 },
    #[error("Prometheus at {address} rejected the query: {detail}")]
    Rejected { address: String, detail: String },
    #[error(
        "Prometheus at {address} returned a {kind} result; an analysis query must return a scalar or an instant vector"
    )]
    UnsupportedResult { address: String, kind: &'static str },
    #[error("{address} is not a usable Prometheus address: {detail}")]
    InvalidAddress { address: String, detail: String },
}

impl MetricsError {
    /// The error with `query`'s secret values taken out of the details Prometheus or the
    /// HTTP client gave, which may quote the query.
    pub fn with_secrets_redacted(mut self, query: &Query) -> Self {
        if let Self::Unreachable { detail, .. }
        | Self::Rejected { detail, .. }
        | Self::InvalidAddress { detail, .. } = &mut self
        {
            *detail = query.redact(detail);
        }
        self
    }
}

/// Runs instant queries. Implementations must honour `request.timeout`.
pub trait MetricsSource: Send + Sync {
    fn instant_query(
        &self,
        request: &QueryRequest,
    ) -> impl Future<Output = Result<QueryOutput, MetricsError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_shown_without_userinfo() {
        let cases = [
            ("https://user:pass@prom:9090", "https://prom:9090"),
            (
                "https://user:p@ss@prom:9090/x?y=@z",
                "https://prom:9090/x?y=@z",
            ),
            ("http://token@prom", "http://prom"),
            ("user:pass@prom:9090/api", "prom:9090/api"),
            ("https://prom:9090/a@b", "https://prom:9090/a@b"),
            (
                "http://prometheus.monitoring:9090",
                "http://prometheus.monitoring:9090",
            ),
            ("", ""),
        ];
        for (address, shown) in cases {
            assert_eq!(without_userinfo(address), shown, "{address}");
        }
    }

    #[test]
    fn debug_of_a_request_shows_no_header_value_secret_or_password() {
        let request = QueryRequest {
            address: "https://admin:pa55word@prom:9090".into(),
            query: Query::with_secrets(
                r#"up{tenant="t0ken-value"}"#.into(),
                r#"up{tenant="<secret:tenant>"}"#.into(),
                vec![("tenant".into(), "t0ken-value".into())],
            ),
            time: None,
            timeout: Duration::from_secs(30),
            headers: vec![("X-Api-Key".into(), "k3y-value".into())],
            insecure: false,
        };
        let written = format!("{request:?} {request:#?}");
        for secret in ["t0ken-value", "k3y-value", "pa55word", "admin"] {
            assert!(!written.contains(secret), "{secret} in {written}");
        }
        for shown in ["<secret:tenant>", "X-Api-Key", "https://prom:9090"] {
            assert!(written.contains(shown), "{shown} missing from {written}");
        }
    }

    #[test]
    fn errors_have_the_query_secrets_taken_out_of_their_details() {
        let query = Query::with_secrets(
            r#"x{a=~"s3cr(et"}"#.into(),
            r#"x{a=~"<secret:a>"}"#.into(),
            vec![("a".into(), "s3cr(et".into())],
        );
        let error = MetricsError::Rejected {
            address: "http://prom:9090".into(),
            detail: "bad_data: error parsing regexp: missing closing ): `s3cr(et`".into(),
        };
        assert_eq!(
            error.with_secrets_redacted(&query).to_string(),
            "Prometheus at http://prom:9090 rejected the query: bad_data: error parsing regexp: missing closing ): `<secret:a>`"
        );
    }
}
