//! Argo Rollouts' `web` provider: an HTTP request to an endpoint that answers JSON; the
//! answer, or the part of it that `jsonPath` selects, is the measurement's `result`.
//!
//! It follows the rules every metrics request follows (see [`super::prometheus`]): the
//! address policy is applied before sending and at every name resolution, redirects are
//! never followed (they would carry the headers elsewhere), at most [`MAX_ANSWER_BYTES`] of
//! an answer are read, the metric's timeout covers connecting, sending and reading, and the
//! secret values sent (arguments from Secrets in the URL, body or headers, headers from
//! Secrets) are taken out of whatever the endpoint answers before anyone reads it.

use std::sync::Arc;

use jsonpath_rust::JsonPath;

use super::address_policy::is_routing_header;
use super::prometheus::{
    MAX_ANSWER_BYTES, checked_http_client, describe_chain, refused_connection,
};
use super::{
    AddressPolicy, MetricsError, MetricsSource, ProviderQuery, Query, QueryOutput, QueryRequest,
    shortened, without_userinfo,
};
use crate::api::analysis_template::WebMethod;

/// How much of an answer that is not the expected JSON is quoted in the error.
const EXCERPT_BYTES: usize = 200;
const PROVIDER: &str = "the web endpoint";

/// What a web request needs besides the URL (the request's query), timeout and headers.
#[derive(Clone, Debug, PartialEq)]
pub struct WebQuery {
    pub method: WebMethod,
    /// The rendered body; it may hold secret argument values.
    pub body: Option<Query>,
    /// The body is JSON (`jsonBody`): sent as `application/json` unless a header says else.
    pub body_is_json: bool,
    /// The JSONPath that selects `result`, normalised (`$.data.ok`); `None`: the whole answer.
    pub json_path: Option<String>,
}

/// Argo's `{$.data.ok}` and Kubernetes' `{.data.ok}` as the JSONPath `$.data.ok`.
pub fn normalized_json_path(written: &str) -> String {
    let trimmed = written.trim();
    let inner = trimmed
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(trimmed)
        .trim();
    if inner.starts_with('$') {
        inner.to_string()
    } else if inner.starts_with('.') || inner.starts_with('[') {
        format!("${inner}")
    } else {
        format!("$.{inner}")
    }
}

/// Why `path` (normalised) is not a JSONPath, if it is not one.
pub fn json_path_problem(path: &str) -> Option<String> {
    serde_json::Value::Null
        .query(path)
        .err()
        .map(|e| format!("{path:?} is not a JSONPath: {e}"))
}

/// `answer` narrowed by `json_path`: nothing selected is `Null` (no data), one value is that
/// value, several are a list of them.
pub fn select(
    answer: serde_json::Value,
    json_path: Option<&str>,
) -> Result<serde_json::Value, String> {
    let Some(path) = json_path else {
        return Ok(answer);
    };
    let found = answer
        .query(path)
        .map_err(|e| format!("{path:?} is not a JSONPath: {e}"))?;
    Ok(match found.as_slice() {
        [] => serde_json::Value::Null,
        [one] => (*one).clone(),
        many => serde_json::Value::Array(many.iter().map(|v| (*v).clone()).collect()),
    })
}

/// Sends web requests. Cheap to clone; connections are pooled inside the shared clients.
#[derive(Clone, Debug)]
pub struct WebSource {
    verified: reqwest::Client,
    insecure: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl WebSource {
    pub fn with_policy(policy: Arc<AddressPolicy>) -> Result<Self, MetricsError> {
        Ok(Self {
            verified: checked_http_client(&policy, false, PROVIDER)?,
            insecure: checked_http_client(&policy, true, PROVIDER)?,
            policy,
        })
    }

    async fn fetch(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        let url = request.query.text_to_send();
        // Errors name the URL's origin only: the path and query may hold argument values.
        let address = without_userinfo(&request.address);
        let failed = |problem: String| MetricsError::Endpoint {
            provider: PROVIDER,
            address: address.clone(),
            problem,
        };
        let ProviderQuery::Web(web) = &request.provider else {
            return Err(failed(format!(
                "was asked a query for {}",
                request.provider.name()
            )));
        };
        if let Some(detail) = self.policy.refusal(url) {
            return Err(MetricsError::Refused { address, detail });
        }
        let client = if request.insecure {
            &self.insecure
        } else {
            &self.verified
        };
        let method = match web.method {
            WebMethod::Get => reqwest::Method::GET,
            WebMethod::Post => reqwest::Method::POST,
            WebMethod::Put => reqwest::Method::PUT,
        };
        let mut headers = reqwest::header::HeaderMap::new();
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
                failed(format!("has a header name {name:?} that is not valid HTTP"))
            })?;
            let value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                // The value may be a secret: name the header only.
                failed(format!(
                    "has a value of header {name} that is not a valid HTTP header value"
                ))
            })?;
            headers.append(name, value);
        }
        if web.body_is_json && !headers.contains_key(reqwest::header::CONTENT_TYPE) {
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static("application/json"),
            );
        }
        let mut builder = client.request(method, url).headers(headers);
        if let Some(body) = &web.body {
            builder = builder.body(body.text_to_send().to_string());
        }
        let timeout_ms = request.timeout.as_millis();
        let timed_out = || {
            failed(format!(
                "did not answer within {timeout_ms} ms (the metric's timeout)"
            ))
        };
        let exchange = async {
            let response = builder.send().await.map_err(|e| {
                if let Some(detail) = refused_connection(&e) {
                    MetricsError::Refused {
                        address: address.clone(),
                        detail,
                    }
                } else if e.is_timeout() {
                    timed_out()
                } else if e.is_redirect() {
                    failed(format!("refused the request: {}", describe_chain(&e)))
                } else {
                    failed(format!(
                        "is unreachable: {}; check the URL and that the endpoint is running",
                        describe_chain(&e)
                    ))
                }
            })?;
            read_json(response, &request.query, &failed).await
        };
        let answer = tokio::time::timeout(request.timeout, exchange)
            .await
            .map_err(|_| timed_out())??;
        select(answer, web.json_path.as_deref())
            .map(QueryOutput::Json)
            .map_err(failed)
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of a successful JSON answer. Anything else is an
/// error quoting the answer, with `query`'s secrets taken out before it is cut short.
async fn read_json(
    mut response: reqwest::Response,
    query: &Query,
    failed: &(dyn Fn(String) -> MetricsError + Sync),
) -> Result<serde_json::Value, MetricsError> {
    let too_large = |bytes: u64| {
        failed(format!(
            "answered more than {} MiB ({bytes} bytes read or announced), the most an answer may hold: select less at the endpoint",
            MAX_ANSWER_BYTES >> 20
        ))
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
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| failed(format!("broke off its answer: {}", describe_chain(&e))))?
    {
        let read = (body.len() + chunk.len()) as u64;
        if read > MAX_ANSWER_BYTES {
            return Err(too_large(read));
        }
        body.extend_from_slice(&chunk);
    }
    let excerpt = || {
        let text = query.redact(&String::from_utf8_lossy(&body));
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        shortened(&text, EXCERPT_BYTES)
    };
    if !status.is_success() {
        return Err(failed(format!("answered {status}: {}", excerpt())));
    }
    serde_json::from_slice(&body).map_err(|e| {
        failed(format!(
            "answered {status} ({content_type}) with something that is not JSON ({e}): {}",
            excerpt()
        ))
    })
}

impl MetricsSource for WebSource {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        self.fetch(request)
            .await
            .map_err(|e| e.with_secrets_redacted(&request.query).shortened())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_paths_are_read_as_argo_and_kubernetes_write_them() {
        for (written, normalized) in [
            ("{$.data.ok}", "$.data.ok"),
            ("{.data.ok}", "$.data.ok"),
            ("$.data", "$.data"),
            (" { $.items[0] } ", "$.items[0]"),
            ("data.ok", "$.data.ok"),
        ] {
            assert_eq!(normalized_json_path(written), normalized, "{written}");
        }
        assert!(json_path_problem("$.data[").is_some());
        assert!(json_path_problem("$.data.ok").is_none());
    }

    #[test]
    fn selection_gives_one_value_a_list_or_null() {
        let answer = json!({"data": {"ok": true, "rates": [0.9, 0.95]}});
        let cases = [
            (None, answer.clone()),
            (Some("$.data.ok"), json!(true)),
            (Some("$.data.rates[*]"), json!([0.9, 0.95])),
            (Some("$.data.missing"), serde_json::Value::Null),
        ];
        for (path, expected) in cases {
            assert_eq!(select(answer.clone(), path).unwrap(), expected, "{path:?}");
        }
    }
}
