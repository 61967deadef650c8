//! Prometheus over its HTTP API, through `prometheus-http-query` on shared reqwest clients.

use std::time::Duration;

use prometheus_http_query::response::Data;
use prometheus_http_query::{Client, Error as PrometheusError};

use super::{MetricsError, MetricsSource, QueryOutput, QueryRequest, Series};

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
        let address = request.address.trim_end_matches('/').to_string();
        let http = if request.insecure {
            &self.insecure
        } else {
            &self.verified
        };
        let client =
            Client::from(http.clone(), &address).map_err(|e| MetricsError::InvalidAddress {
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
        let response = tokio::time::timeout(request.timeout, builder.get())
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
            if reqwest_error.is_some_and(reqwest::Error::is_timeout) {
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
