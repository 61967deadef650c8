//! Prometheus over its HTTP API, through `prometheus-http-query` on shared reqwest clients.
//!
//! Queries may hold secret argument values and requests may carry secret headers, so:
//! instant queries are sent by POST (form body), keeping them out of URLs and so out of
//! access logs of Prometheus and of proxies in between; redirects are never followed, since
//! following one would send the query and the headers to whatever host it names (even from
//! https to http); and error messages name the address without its `user:password@`.

use std::time::Duration;

use prometheus_http_query::response::Data;
use prometheus_http_query::{Client, Error as PrometheusError};

use super::{MetricsError, MetricsSource, QueryOutput, QueryRequest, Series, without_userinfo};

/// How long establishing a TCP/TLS connection may take, whatever the query timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Queries Prometheus servers. Cheap to clone; one per process is enough: connections are
/// pooled per address inside the shared clients.
#[derive(Clone, Debug)]
pub struct PrometheusSource {
    verified: reqwest::Client,
    insecure: reqwest::Client,
}

impl PrometheusSource {
    pub fn new() -> Result<Self, MetricsError> {
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .danger_accept_invalid_certs(insecure)
                .user_agent(concat!("canary/", env!("CARGO_PKG_VERSION")))
                .redirect(refuse_redirects())
                .build()
                .map_err(|e| MetricsError::InvalidAddress {
                    address: "(any)".into(),
                    detail: format!("the HTTP client could not be built: {e}"),
                })
        };
        Ok(Self {
            verified: build(false)?,
            insecure: build(true)?,
        })
    }
}

impl MetricsSource for PrometheusSource {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        let base_url = request.address.trim_end_matches('/');
        // Every error names the address as people may read it: without credentials.
        let address = without_userinfo(base_url);
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
        // POST, so the query (which may hold secret values) is in the body, not the URL.
        let response = tokio::time::timeout(request.timeout, builder.post())
            .await
            .map_err(|_| MetricsError::Timeout {
                address: address.clone(),
                timeout_ms,
            })?
            .map_err(|e| classify(&address, timeout_ms, e))?;
        match response.data() {
            Data::Scalar(sample) => Ok(QueryOutput::Scalar(sample.value())),
            Data::Vector(vector) => Ok(QueryOutput::Vector(
                vector
                    .iter()
                    .map(|v| Series {
                        labels: v
                            .metric()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        value: v.sample().value(),
                    })
                    .collect(),
            )),
            Data::Matrix(_) => Err(MetricsError::UnsupportedResult {
                address,
                kind: "range vector (matrix)",
            }),
        }
    }
}

/// A redirect policy that follows nothing and fails the request with the place it pointed to
/// (scheme, host and port only), instead of `Policy::none()`'s bare 3xx response, which the
/// query client could only report as an unparseable answer.
fn refuse_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let target = attempt.url();
        let origin = match (target.host_str(), target.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", target.scheme()),
            (Some(host), None) => format!("{}://{host}", target.scheme()),
            (None, _) => target.scheme().to_string(),
        };
        let status = attempt.status();
        attempt.error(format!(
            "it answered {status}, pointing to {origin}; redirects are not followed (they would carry the query and the metric's headers elsewhere): set the metric's address to where Prometheus really is"
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
            if let Some(redirect) = reqwest_error.filter(|r| r.is_redirect()) {
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

/// The error and its causes on one line ("error sending request: connection refused"),
/// without the request URL: it repeats the address and carries the whole encoded query.
fn describe_chain(error: &dyn std::error::Error) -> String {
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
