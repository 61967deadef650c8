//! Prometheus over its HTTP API, through `prometheus-http-query` on shared reqwest clients.
//!
//! Queries may hold secret argument values and requests may carry secret headers, so:
//! instant queries are sent by POST (form body), keeping them out of URLs and so out of
//! access logs of Prometheus and of proxies in between; redirects are never followed, since
//! following one would send the query and the headers to whatever host it names (even from
//! https to http); error messages name the address without its `user:password@`, and every
//! secret value sent with a query is taken out of whatever the endpoint answers.
//!
//! Addresses are checked against the [`AddressPolicy`] before a request is sent, and again
//! when a name is resolved to connect (a name may resolve to a link-local address).
//!
//! The answer is read here rather than by `prometheus-http-query` (which would read any
//! size into memory, then into a tree of every series): at most [`MAX_ANSWER_BYTES`] are
//! read, and at most [`MAX_SERIES`] series are kept (the rest only counted), so one huge
//! answer costs bounded memory and becomes an Error measurement that says what to do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_http_query::{Client, Error as PrometheusError};
use serde::Deserialize;
use serde::de::{self, IgnoredAny};

use super::address_policy::is_routing_header;
use super::{
    AddressPolicy, MetricsError, MetricsSource, Query, QueryOutput, QueryRequest, Series,
    shortened, without_userinfo,
};

/// How long establishing a TCP/TLS connection may take, whatever the query timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer that is read: a query that returns more is an Error measurement.
pub const MAX_ANSWER_BYTES: u64 = 8 * 1024 * 1024;
/// The most series an analysis query may return: more is an Error measurement (aggregate).
pub const MAX_SERIES: usize = 10_000;
/// How much of an answer that is not a Prometheus API response is quoted in the error.
const EXCERPT_BYTES: usize = 200;

/// Queries Prometheus servers. Cheap to clone; one per process is enough: connections are
/// pooled per address inside the shared clients.
#[derive(Clone, Debug)]
pub struct PrometheusSource {
    verified: reqwest::Client,
    insecure: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl PrometheusSource {
    /// A source with the default address policy (see [`AddressPolicy`]).
    pub fn new() -> Result<Self, MetricsError> {
        Self::with_policy(AddressPolicy::default())
    }

    /// A source that queries only where `policy` allows.
    pub fn with_policy(policy: AddressPolicy) -> Result<Self, MetricsError> {
        let policy = Arc::new(policy);
        Ok(Self {
            verified: checked_http_client(&policy, false, "Prometheus")?,
            insecure: checked_http_client(&policy, true, "Prometheus")?,
            policy,
        })
    }

    /// Where this source may send queries.
    pub fn address_policy(&self) -> &AddressPolicy {
        &self.policy
    }

    async fn query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        if request.provider != super::ProviderQuery::Prometheus {
            return Err(MetricsError::InvalidAddress {
                address: without_userinfo(&request.address),
                detail: format!(
                    "this is a request for {}, not Prometheus",
                    request.provider.name()
                ),
            });
        }
        let base_url = request.address.trim_end_matches('/');
        // Every error names the address as people may read it: without credentials.
        let address = without_userinfo(base_url);
        if let Some(detail) = self.policy.refusal(base_url) {
            return Err(MetricsError::Refused { address, detail });
        }
        let http = if request.insecure {
            &self.insecure
        } else {
            &self.verified
        };
        let client =
            Client::from(http.clone(), base_url).map_err(|e| MetricsError::InvalidAddress {
                address: address.clone(),
                detail: e.to_string(),
            })?;
        let timeout_ms = request.timeout.as_millis();
        let mut builder = client
            .query(request.query.text_to_send())
            // Ask Prometheus to give up too, so an abandoned query does not keep it busy.
            .timeout(i64::try_from(timeout_ms).unwrap_or(i64::MAX));
        if let Some(time) = request.time {
            builder = builder.at(time.as_second());
        }
        for (name, value) in &request.headers {
            if is_routing_header(name) {
                return Err(MetricsError::Refused {
                    address,
                    detail: format!(
                        "header {name} would change where the request goes or how it is framed; the HTTP client sets it"
                    ),
                });
            }
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                MetricsError::InvalidAddress {
                    address: address.clone(),
                    detail: format!("header name {name:?} is not a valid HTTP header name"),
                }
            })?;
            let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                // The value may be a secret: name the header only.
                MetricsError::InvalidAddress {
                    address: address.clone(),
                    detail: format!("the value of header {name} is not a valid HTTP header value"),
                }
            })?;
            builder = builder.header(name, value);
        }
        // POST, so the query (which may hold secret values) is in the body, not the URL. The
        // timeout covers reading the answer too.
        let exchange = async {
            let response = builder
                .post_raw()
                .await
                .map_err(|e| classify(&address, timeout_ms, e))?;
            read_answer(&address, timeout_ms, &request.query, response).await
        };
        tokio::time::timeout(request.timeout, exchange)
            .await
            .map_err(|_| MetricsError::Timeout {
                address: address.clone(),
                timeout_ms,
            })?
    }
}

impl MetricsSource for PrometheusSource {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        // Whatever the endpoint said goes to status, Events, logs and the CLI: without the
        // secrets sent with the query, and bounded.
        self.query(request)
            .await
            .map_err(|e| e.with_secrets_redacted(&request.query).shortened())
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of `response` and makes it a query result.
///
/// An answer that is not a Prometheus API response is quoted in the error, with `query`'s
/// secrets taken out of it before it is cut short (a secret cut in two would survive).
async fn read_answer(
    address: &str,
    timeout_ms: u128,
    query: &Query,
    mut response: reqwest::Response,
) -> Result<QueryOutput, MetricsError> {
    let too_large = |bytes: u64| MetricsError::AnswerTooLarge {
        address: address.to_string(),
        bytes,
        limit: MAX_ANSWER_BYTES,
    };
    if let Some(announced) = response.content_length()
        && announced > MAX_ANSWER_BYTES
    {
        return Err(too_large(announced));
    }
    let status = response.status();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("no content type")
        .to_string();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        if e.is_timeout() {
            MetricsError::Timeout {
                address: address.to_string(),
                timeout_ms,
            }
        } else {
            MetricsError::Unreachable {
                address: address.to_string(),
                detail: format!("the answer broke off: {}", describe_chain(&e)),
            }
        }
    })? {
        let read = (body.len() + chunk.len()) as u64;
        if read > MAX_ANSWER_BYTES {
            return Err(too_large(read));
        }
        body.extend_from_slice(&chunk);
    }
    let rejected = |detail: String| MetricsError::Rejected {
        address: address.to_string(),
        detail,
    };
    let not_the_api = || {
        let text = query.redact(&String::from_utf8_lossy(&body));
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        rejected(format!(
            "it answered {status} ({content_type}), not a Prometheus API response: {}",
            shortened(&text, EXCERPT_BYTES)
        ))
    };
    let answer: Answer = match serde_json::from_slice(&body) {
        Ok(answer) => answer,
        Err(_) if !content_type.contains("json") || !status.is_success() => {
            return Err(not_the_api());
        }
        Err(e) => {
            return Err(rejected(format!(
                "its answer is not a valid Prometheus API response: {e}"
            )));
        }
    };
    match answer {
        Answer {
            status: AnswerStatus::Error,
            error_type,
            error,
            ..
        } => {
            let error_type = error_type.unwrap_or_else(|| "error".into());
            if error_type == "timeout" {
                return Err(MetricsError::Timeout {
                    address: address.to_string(),
                    timeout_ms,
                });
            }
            Err(rejected(format!(
                "{error_type}: {}",
                error.unwrap_or_else(|| format!("{status}"))
            )))
        }
        Answer { data: None, .. } => Err(not_the_api()),
        Answer {
            data: Some(data), ..
        } => match data {
            Data::Scalar(Sample(value)) => Ok(QueryOutput::Scalar(value)),
            Data::Vector(BoundedVector { series, total }) if total > MAX_SERIES => {
                drop(series);
                Err(MetricsError::TooManySeries {
                    address: address.to_string(),
                    series: total,
                    limit: MAX_SERIES,
                })
            }
            Data::Vector(BoundedVector { series, .. }) => Ok(QueryOutput::Vector(series)),
            Data::Other(kind) => Err(MetricsError::UnsupportedResult {
                address: address.to_string(),
                kind: match kind.as_str() {
                    "matrix" => "range vector (matrix)",
                    "string" => "string",
                    _ => "unknown",
                },
            }),
        },
    }
}

/// A Prometheus API answer (`/api/v1/query`), read without keeping more than it may hold.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    status: AnswerStatus,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum AnswerStatus {
    Success,
    Error,
}

/// `data` of an instant query: its `resultType` decides how `result` is read, so `result`
/// must come after it (as Prometheus writes it): read in the other order, the whole result
/// would have to be kept in memory first.
enum Data {
    Scalar(Sample),
    Vector(BoundedVector),
    Other(String),
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DataVisitor;
        impl<'de> de::Visitor<'de> for DataVisitor {
            type Value = Data;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object with resultType and result")
            }

            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Data, A::Error> {
                let mut kind: Option<String> = None;
                let mut data = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "resultType" => kind = Some(map.next_value()?),
                        "result" => {
                            data = Some(match kind.as_deref() {
                                Some("scalar") => Data::Scalar(map.next_value()?),
                                Some("vector") => Data::Vector(map.next_value()?),
                                Some(other) => {
                                    map.next_value::<IgnoredAny>()?;
                                    Data::Other(other.to_string())
                                }
                                None => {
                                    return Err(de::Error::custom(
                                        "`result` comes before `resultType`",
                                    ));
                                }
                            })
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                data.ok_or_else(|| de::Error::missing_field("result"))
            }
        }
        deserializer.deserialize_map(DataVisitor)
    }
}

/// `[time, "value"]`: the value, as Prometheus writes it (`"0.5"`, `"NaN"`, `"+Inf"`).
struct Sample(f64);

impl<'de> Deserialize<'de> for Sample {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (_time, value): (f64, String) = Deserialize::deserialize(deserializer)?;
        value
            .parse::<f64>()
            .map(Sample)
            .map_err(|_| de::Error::custom(format!("sample value {value:?} is not a number")))
    }
}

/// The first [`MAX_SERIES`] series of a vector, and how many it has.
struct BoundedVector {
    series: Vec<Series>,
    total: usize,
}

#[derive(Deserialize)]
struct RawSeries {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    value: Sample,
}

impl<'de> Deserialize<'de> for BoundedVector {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct VectorVisitor;
        impl<'de> de::Visitor<'de> for VectorVisitor {
            type Value = BoundedVector;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of series")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut series = Vec::new();
                let mut total = 0;
                loop {
                    if total < MAX_SERIES {
                        let Some(RawSeries { metric, value }) = seq.next_element()? else {
                            break;
                        };
                        series.push(Series {
                            labels: metric,
                            value: value.0,
                        });
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    total += 1;
                }
                Ok(BoundedVector { series, total })
            }
        }
        deserializer.deserialize_seq(VectorVisitor)
    }
}

/// Resolves host names for the HTTP clients, refusing to connect where the address policy
/// forbids (a name that resolves to a link-local address, or outside the allow-list).
struct CheckedResolver {
    policy: Arc<AddressPolicy>,
}

/// A connection the address policy refused; found again in the error chain by [`classify`].
#[derive(Debug)]
struct RefusedConnection(String);

impl std::fmt::Display for RefusedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedConnection {}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            // Refuse the name if any address is refused, rather than skip that address: a
            // name that can lead somewhere forbidden is not a Prometheus address.
            if let Some(why) = addresses
                .iter()
                .find_map(|a| policy.refusal_of_resolved(&name, a.ip()))
            {
                return Err(Box::new(RefusedConnection(why)) as Box<_>);
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for metric queries to `what` (Prometheus, a web endpoint, …): it connects
/// only where `policy` allows (checked again on every name resolution), follows no redirect,
/// bounds connecting by [`CONNECT_TIMEOUT`], and names the controller in its User-Agent.
/// Every provider that speaks HTTP builds its clients here, so they share these rules.
pub(crate) fn checked_http_client(
    policy: &Arc<AddressPolicy>,
    insecure: bool,
    what: &'static str,
) -> Result<reqwest::Client, MetricsError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .danger_accept_invalid_certs(insecure)
        .user_agent(concat!("canary/", env!("CARGO_PKG_VERSION")))
        .redirect(refuse_redirects(what))
        .dns_resolver(Arc::new(CheckedResolver {
            policy: policy.clone(),
        }))
        .build()
        .map_err(|e| MetricsError::InvalidAddress {
            address: "(any)".into(),
            detail: format!("the HTTP client could not be built: {e}"),
        })
}

/// A redirect policy that follows nothing and fails the request with the place it pointed to
/// (scheme, host and port only), instead of `Policy::none()`'s bare 3xx response, which the
/// query client could only report as an unparseable answer.
fn refuse_redirects(what: &'static str) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let target = attempt.url();
        let origin = match (target.host_str(), target.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", target.scheme()),
            (Some(host), None) => format!("{}://{host}", target.scheme()),
            (None, _) => target.scheme().to_string(),
        };
        let status = attempt.status();
        attempt.error(format!(
            "it answered {status}, pointing to {origin}; redirects are not followed (they would carry the query and the metric's headers elsewhere): set the metric's address to where {what} really is"
        ))
    })
}

fn classify(address: &str, timeout_ms: u128, error: PrometheusError) -> MetricsError {
    let address = address.to_string();
    match error {
        PrometheusError::Prometheus(e) if e.is_timeout() => MetricsError::Timeout {
            address,
            timeout_ms,
        },
        PrometheusError::Prometheus(e) => MetricsError::Rejected {
            address,
            detail: format!("{:?}: {}", e.error_type(), e.message()),
        },
        PrometheusError::Client(e) => {
            let reqwest_error = e.inner();
            if let Some(refused) = reqwest_error.and_then(refused_connection) {
                MetricsError::Refused {
                    address,
                    detail: refused,
                }
            } else if let Some(redirect) = reqwest_error.filter(|r| r.is_redirect()) {
                MetricsError::Rejected {
                    address,
                    detail: describe_chain(redirect),
                }
            } else if reqwest_error.is_some_and(reqwest::Error::is_timeout) {
                MetricsError::Timeout {
                    address,
                    timeout_ms,
                }
            } else if reqwest_error.is_some_and(|r| r.is_connect() || r.is_request()) {
                MetricsError::Unreachable {
                    address,
                    detail: describe_chain(reqwest_error.expect("checked above")),
                }
            } else {
                MetricsError::Rejected {
                    address,
                    detail: e.to_string(),
                }
            }
        }
        PrometheusError::ParseUrl(e) => MetricsError::InvalidAddress {
            address,
            detail: e.to_string(),
        },
        other => MetricsError::Rejected {
            address,
            detail: other.to_string(),
        },
    }
}

/// The address policy's refusal somewhere in `error`'s causes, if that is why it failed.
pub(crate) fn refused_connection(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<RefusedConnection>() {
            return Some(refused.0.clone());
        }
        source = cause.source();
    }
    None
}

/// The error and its causes on one line ("error sending request: connection refused"),
/// without the request URL: it repeats the address and carries the whole encoded query.
pub(crate) fn describe_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![without_url(&error.to_string())];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = without_url(&cause.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// Drops reqwest's " for url (…)" from an error message.
fn without_url(message: &str) -> String {
    match message.find(" for url (") {
        Some(start) => {
            let rest = &message[start..];
            let end = rest.find(')').map_or(message.len(), |e| start + e + 1);
            format!("{}{}", &message[..start], &message[end..])
        }
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Query;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An HTTP server on loopback that answers one request with `response` and returns the
    /// request it received (request line, headers and body).
    async fn answer_once(response: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buffer = [0u8; 4096];
            loop {
                let n = stream.read(&mut buffer).await.unwrap();
                if n == 0 {
                    break;
                }
                received.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&received);
                let Some(end) = text.find("\r\n\r\n") else {
                    continue;
                };
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if received.len() >= end + 4 + length {
                    break;
                }
            }
            stream.write_all(response.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
            String::from_utf8_lossy(&received).into_owned()
        });
        (address, server)
    }

    fn request(address: &str, query: &str) -> QueryRequest {
        QueryRequest {
            address: address.to_string(),
            query: Query::with_secrets(
                query.to_string(),
                "shown".into(),
                vec![("token".into(), "t0ken".into())],
            ),
            time: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
            timeout: Duration::from_secs(5),
            headers: vec![("X-Api-Key".into(), "k3y".into())],
            insecure: false,
            provider: crate::metrics::ProviderQuery::Prometheus,
        }
    }

    #[tokio::test]
    async fn instant_queries_are_posted_so_the_query_stays_out_of_the_url() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        let (address, server) = answer_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let source = PrometheusSource::new().unwrap();
        let output = source
            .instant_query(&request(&address, r#"up{tenant="t0ken"}"#))
            .await
            .unwrap();
        assert_eq!(output, QueryOutput::Vector(Vec::new()));
        let received = server.await.unwrap();
        let request_line = received.lines().next().unwrap();
        assert!(
            request_line.starts_with("POST /api/v1/query "),
            "{received}"
        );
        assert!(
            !request_line.contains("t0ken") && !request_line.contains("query="),
            "{received}"
        );
        assert!(
            received
                .to_ascii_lowercase()
                .contains("content-type: application/x-www-form-urlencoded"),
            "{received}"
        );
        let form = received.split("\r\n\r\n").nth(1).unwrap();
        assert!(
            form.contains("query=up%7Btenant%3D%22t0ken%22%7D"),
            "{form}"
        );
        assert!(form.contains("time=1700000000"), "{form}");
        assert!(received.contains("x-api-key: k3y"), "{received}");
    }

    #[tokio::test]
    async fn redirects_are_refused_so_queries_and_headers_stay_with_the_named_host() {
        let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let location = format!("http://{}/api/v1/query", elsewhere.local_addr().unwrap());
        let (address, server) = answer_once(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await;
        let source = PrometheusSource::new().unwrap();
        let error = source
            .instant_query(&request(&address, r#"up{tenant="t0ken"}"#))
            .await
            .unwrap_err();
        server.await.unwrap();
        let message = error.to_string();
        assert!(matches!(error, MetricsError::Rejected { .. }), "{message}");
        assert!(message.contains("redirects are not followed"), "{message}");
        assert!(
            message.contains(&location.replace("/api/v1/query", "")),
            "{message}"
        );
        assert!(
            !message.contains("t0ken") && !message.contains("k3y"),
            "{message}"
        );
        // Nothing reached the other host.
        let contacted = tokio::time::timeout(Duration::from_millis(200), elsewhere.accept()).await;
        assert!(contacted.is_err(), "the redirect was followed");
    }

    #[tokio::test]
    async fn errors_name_the_address_without_its_password() {
        let source = PrometheusSource::new().unwrap();
        // Port 1: nothing listens there, so the request fails to connect.
        let error = source
            .instant_query(&request("http://admin:pa55word@127.0.0.1:1", "up"))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(error, MetricsError::Unreachable { .. }),
            "{message}"
        );
        assert!(
            message.starts_with("Prometheus at http://127.0.0.1:1 is unreachable"),
            "{message}"
        );
        assert!(
            !message.contains("pa55word") && !message.contains("admin"),
            "{message}"
        );
    }

    #[test]
    fn answers_are_read_with_at_most_the_series_limit_kept() {
        let vector = |n: usize| {
            let series: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"metric":{{"pod":"p{i}"}},"value":[1,"{i}"]}}"#))
                .collect();
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
                series.join(",")
            )
        };
        // (answer, what it reads as: kept series and total, a scalar, another kind, or an error)
        let cases: Vec<(String, &str)> = vec![
            (vector(0), "vector 0/0"),
            (vector(3), "vector 3/3"),
            (vector(MAX_SERIES + 5), "vector 10000/10005"),
            (
                r#"{"status":"success","data":{"resultType":"scalar","result":[1,"+Inf"]}}"#.into(),
                "scalar inf",
            ),
            (
                r#"{"data":{"result":[1,"NaN"],"resultType":"scalar"},"status":"success"}"#.into(),
                "error: `result` comes before `resultType`",
            ),
            (
                r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[]}]}}"#.into(),
                "other matrix",
            ),
            (
                r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.into(),
                "api error bad_data",
            ),
            (
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#.into(),
                "error: sample value \"x\" is not a number",
            ),
        ];
        for (answer, expected) in cases {
            let read = match serde_json::from_slice::<Answer>(answer.as_bytes()) {
                Err(e) => format!("error: {e}"),
                Ok(Answer {
                    status: AnswerStatus::Error,
                    error_type,
                    ..
                }) => format!("api error {}", error_type.unwrap_or_default()),
                Ok(Answer { data: None, .. }) => "no data".into(),
                Ok(Answer {
                    data: Some(data), ..
                }) => match data {
                    Data::Scalar(Sample(x)) => format!("scalar {x}"),
                    Data::Vector(BoundedVector { series, total }) => {
                        format!("vector {}/{total}", series.len())
                    }
                    Data::Other(kind) => format!("other {kind}"),
                },
            };
            assert!(read.starts_with(expected), "{expected}: read as {read}");
        }
    }

    #[test]
    fn error_messages_drop_the_request_url() {
        assert_eq!(
            without_url(
                "error sending request for url (http://127.0.0.1:1/api/v1/query?query=sum%28x%29)"
            ),
            "error sending request"
        );
        assert_eq!(without_url("connection refused"), "connection refused");
    }
}
