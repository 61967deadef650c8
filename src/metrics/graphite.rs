//! Graphite's render API: `POST /render` with `target`, `from` and `format=json`. `result` is
//! the list of every non-null datapoint of every series, oldest first. Requests follow the
//! rules of every metrics request (see [`super::http_exchange`]).

use std::sync::Arc;

use super::prometheus::checked_http_client;
use super::{
    AddressPolicy, MetricsError, MetricsSource, ProviderQuery, QueryOutput, QueryRequest, Series,
    http_exchange, without_userinfo,
};

const PROVIDER: &str = "Graphite";

#[derive(Clone, Debug)]
pub struct GraphiteSource {
    verified: reqwest::Client,
    insecure: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl GraphiteSource {
    pub fn with_policy(policy: Arc<AddressPolicy>) -> Result<Self, MetricsError> {
        Ok(Self {
            verified: checked_http_client(&policy, false, PROVIDER)?,
            insecure: checked_http_client(&policy, true, PROVIDER)?,
            policy,
        })
    }

    async fn render(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        let base = request.address.trim_end_matches('/');
        let address = without_userinfo(base);
        let failed = |problem: String| MetricsError::Endpoint {
            provider: PROVIDER,
            address: address.clone(),
            problem,
        };
        let ProviderQuery::Graphite { from } = &request.provider else {
            return Err(failed(format!(
                "was asked a query for {}",
                request.provider.name()
            )));
        };
        if let Some(detail) = self.policy.refusal(base) {
            return Err(MetricsError::Refused { address, detail });
        }
        let client = if request.insecure {
            &self.insecure
        } else {
            &self.verified
        };
        let builder = client.post(format!("{base}/render")).form(&[
            ("target", request.query.text_to_send()),
            ("from", from.as_str()),
            ("format", "json"),
        ]);
        let body = http_exchange::exchange(PROVIDER, &address, request, builder).await?;
        let values = render_values(&body)
            .map_err(|why| failed(format!("{why}: {}", http_exchange::excerpt(request, &body))))?;
        Ok(QueryOutput::Vector(
            values
                .into_iter()
                .map(|value| Series {
                    labels: Default::default(),
                    value,
                })
                .collect(),
        ))
    }
}

/// The non-null datapoints of a render answer (`[{"target", "datapoints": [[v, t], …]}]`).
pub fn render_values(body: &[u8]) -> Result<Vec<f64>, String> {
    let answer: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("answered something that is not render JSON ({e})"))?;
    let series = answer
        .as_array()
        .ok_or_else(|| "answered something that is not a list of series".to_string())?;
    Ok(series
        .iter()
        .flat_map(|s| s["datapoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|point| point.get(0).and_then(serde_json::Value::as_f64))
        .collect())
}

impl MetricsSource for GraphiteSource {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        self.render(request)
            .await
            .map_err(|e| e.with_secrets_redacted(&request.query).shortened())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_answers_give_every_non_null_datapoint() {
        let body = br#"[{"target":"a","datapoints":[[null,1],[0.5,2]]},{"target":"b","datapoints":[[1.5,2]]}]"#;
        assert_eq!(render_values(body).unwrap(), [0.5, 1.5]);
        assert!(render_values(b"[]").unwrap().is_empty());
        assert!(render_values(b"<html>").is_err());
    }
}
