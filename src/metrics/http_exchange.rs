//! One request/answer exchange for the HTTP providers that are not Prometheus (InfluxDB,
//! Graphite): headers checked, the request sent on a client from
//! [`super::prometheus::checked_http_client`], at most [`MAX_ANSWER_BYTES`] read, the whole
//! bounded by the metric's timeout, and failures said the way every provider says them.

use super::address_policy::is_routing_header;
use super::prometheus::{MAX_ANSWER_BYTES, describe_chain, refused_connection};
use super::{MetricsError, QueryRequest, shortened};

/// How much of an answer an error quotes.
const EXCERPT_BYTES: usize = 200;

/// Sends `builder` with `request`'s headers and returns the successful answer's body.
/// `provider` and `address` name the endpoint in errors; a non-2xx answer is quoted (with
/// `request`'s secrets taken out) as the query being rejected.
pub(crate) async fn exchange(
    provider: &'static str,
    address: &str,
    request: &QueryRequest,
    mut builder: reqwest::RequestBuilder,
) -> Result<Vec<u8>, MetricsError> {
    let failed = |problem: String| MetricsError::Endpoint {
        provider,
        address: address.to_string(),
        problem,
    };
    for (name, value) in &request.headers {
        if is_routing_header(name) {
            return Err(MetricsError::Refused {
                address: address.to_string(),
                detail: format!(
                    "header {name} would change where the request goes; the HTTP client sets it"
                ),
            });
        }
        builder = builder.header(name.as_str(), value.as_str());
    }
    let timeout_ms = request.timeout.as_millis();
    let timed_out = || {
        failed(format!(
            "did not answer within {timeout_ms} ms (the metric's timeout)"
        ))
    };
    let too_large = || {
        failed(format!(
            "answered more than {} MiB, the most an answer may hold: select less",
            MAX_ANSWER_BYTES >> 20
        ))
    };
    let exchange = async {
        let mut response = builder.send().await.map_err(|e| {
            if let Some(detail) = refused_connection(&e) {
                MetricsError::Refused {
                    address: address.to_string(),
                    detail,
                }
            } else if e.is_timeout() {
                timed_out()
            } else if e.is_builder() {
                failed("could not be asked: a header name or value is not valid HTTP".into())
            } else if e.is_redirect() {
                failed(format!("refused the request: {}", describe_chain(&e)))
            } else {
                failed(format!(
                    "is unreachable: {}; check the address and that {provider} is running",
                    describe_chain(&e)
                ))
            }
        })?;
        if response
            .content_length()
            .is_some_and(|announced| announced > MAX_ANSWER_BYTES)
        {
            return Err(too_large());
        }
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(format!("broke off its answer: {}", describe_chain(&e))))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_ANSWER_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(failed(format!(
                "rejected the query ({status}): {}",
                excerpt(request, &body)
            )));
        }
        Ok(body)
    };
    tokio::time::timeout(request.timeout, exchange)
        .await
        .map_err(|_| timed_out())?
}

/// The start of an answer, on one line, with the request's secrets taken out first.
pub(crate) fn excerpt(request: &QueryRequest, body: &[u8]) -> String {
    let text = request.query.redact(&String::from_utf8_lossy(body));
    shortened(
        &text.split_whitespace().collect::<Vec<_>>().join(" "),
        EXCERPT_BYTES,
    )
}
