//! Where measurements come from. The analysis core calls a [`MetricsSource`]; implementations
//! do the I/O. Prometheus is the first (and, for now, only) provider.

pub mod address_policy;
pub mod graphite;
mod http_exchange;
pub mod influxdb;
pub mod job;
pub mod prometheus;
pub mod providers;
pub mod redaction;
pub mod web;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

pub use address_policy::AddressPolicy;
pub use graphite::GraphiteSource;
pub use influxdb::InfluxDbSource;
pub use job::JobSource;
pub use prometheus::PrometheusSource;
pub use providers::Providers;
pub use web::WebSource;

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
    /// Each secret value sent with this query, by name (an argument's, or `header NAME` for a
    /// header from a Secret), in every form an answer may quote it in (as given, as written
    /// into the query, form- or JSON-encoded, without its `Bearer ` scheme: see
    /// [`redaction::secret_forms`]), longest first. Prometheus may quote the query back in an
    /// error, an endpoint may echo the request; [`Query::redact`] takes them out of such text.
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
            secrets: Vec::new(),
        }
        .with_more_secrets(secrets)
    }

    /// The same query, also redacting `secrets` (name, value) from answers: the values of the
    /// headers from Secrets that are sent with it.
    pub fn with_more_secrets(
        mut self,
        secrets: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        for (name, value) in secrets {
            for form in redaction::secret_forms(&value) {
                if !self.secrets.iter().any(|(_, known)| *known == form) {
                    self.secrets.push((name.clone(), form));
                }
            }
        }
        // Longest first, so a value that contains another is replaced whole.
        self.secrets
            .sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        self
    }

    /// The secret values sent with this query (name, value), in every form they may be
    /// quoted in: to carry them over to another query sent in the same request.
    pub fn secrets(&self) -> &[(String, String)] {
        &self.secrets
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
        self.secrets
            .iter()
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
    /// Which provider answers, and what it needs besides the above.
    pub provider: ProviderQuery,
}

/// What a request needs beyond address, query, timeout and headers, by provider.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum ProviderQuery {
    /// `query` is PromQL, sent to `address`'s `/api/v1/query`.
    #[default]
    Prometheus,
    /// `query` is the whole URL (it may hold secret arguments); `address` is its origin.
    Web(web::WebQuery),
    /// A Job from `job.spec`; `address` names its namespace, `query` describes it.
    Job(Box<job::JobQuery>),
    /// `query` is InfluxQL or Flux, sent to `address`.
    InfluxDb(influxdb::InfluxQuery),
    /// `query` is a Graphite target; the window starts at `from` (Graphite's syntax).
    Graphite { from: String },
}

impl ProviderQuery {
    /// How people call this provider in messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Prometheus => "Prometheus",
            Self::Web(_) => "the web endpoint",
            Self::Job(_) => "the Kubernetes Job",
            Self::InfluxDb(_) => "InfluxDB",
            Self::Graphite { .. } => "Graphite",
        }
    }
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
            provider,
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
            .field("provider", provider)
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
    /// A JSON answer (web provider), or the part of it a `jsonPath` selected; `Null` when
    /// it selected nothing.
    Json(serde_json::Value),
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
    /// The address policy forbids the address (or what its name resolves to), or a header.
    #[error("queries to {address} are refused: {detail}")]
    Refused { address: String, detail: String },
    /// A provider other than Prometheus failed: `problem` says how and what to do.
    #[error("{provider} at {address} {problem}")]
    Endpoint {
        provider: &'static str,
        address: String,
        problem: String,
    },
    #[error(
        "Prometheus at {address} answered more than {limit_mib} MiB ({bytes} bytes read or announced), the most an answer may hold: aggregate the query (e.g. sum by (pod) (...)) so that it returns fewer series",
        limit_mib = .limit >> 20
    )]
    AnswerTooLarge {
        address: String,
        bytes: u64,
        limit: u64,
    },
    #[error(
        "Prometheus at {address} returned {series} series, more than the {limit} an analysis query may return: aggregate them (e.g. sum by (pod) (...), or topk(...))"
    )]
    TooManySeries {
        address: String,
        series: usize,
        limit: usize,
    },
}

impl MetricsError {
    /// The error with `query`'s secret values taken out of the details Prometheus or the
    /// HTTP client gave, which may quote the query.
    pub fn with_secrets_redacted(mut self, query: &Query) -> Self {
        if let Some(detail) = self.detail_mut() {
            *detail = query.redact(detail);
        }
        self
    }

    /// The error with the details the endpoint gave cut to [`MAX_DETAIL_BYTES`].
    pub fn shortened(mut self) -> Self {
        if let Some(detail) = self.detail_mut() {
            *detail = shortened(detail, MAX_DETAIL_BYTES);
        }
        self
    }

    /// What the endpoint or the HTTP client said, which may quote the request.
    fn detail_mut(&mut self) -> Option<&mut String> {
        match self {
            Self::Unreachable { detail, .. }
            | Self::Rejected { detail, .. }
            | Self::InvalidAddress { detail, .. }
            | Self::Refused { detail, .. }
            | Self::Endpoint {
                problem: detail, ..
            } => Some(detail),
            Self::Timeout { .. }
            | Self::UnsupportedResult { .. }
            | Self::AnswerTooLarge { .. }
            | Self::TooManySeries { .. } => None,
        }
    }
}

/// The most of what an endpoint or the HTTP client said that an error keeps.
pub const MAX_DETAIL_BYTES: usize = 300;

/// `text` in at most `max_bytes` (cut at a character boundary, with `…` in place of the
/// rest), control characters (line breaks too) as spaces: text from an answer, on its way
/// into status, Events and tables, where its size must be bounded whatever the answer was.
pub fn shortened(text: &str, max_bytes: usize) -> String {
    const ELLIPSIS: &str = "…";
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
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
    fn answer_text_is_cut_at_a_character_boundary_on_one_line() {
        let cases = [
            ("short", 10, "short"),
            ("line\nbreak\ttab", 20, "line break tab"),
            ("0123456789", 10, "0123456789"),
            ("0123456789a", 10, "0123456…"),
            // "é" is two bytes: the cut never splits it.
            ("ééééé", 8, "éé…"),
            ("", 0, ""),
        ];
        for (text, max, expected) in cases {
            let cut = shortened(text, max);
            assert_eq!(cut, expected, "{text:?} in {max}");
            assert!(cut.len() <= max, "{cut:?}");
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
            provider: ProviderQuery::Prometheus,
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
