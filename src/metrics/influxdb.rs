//! InfluxDB: InfluxQL through the 1.x API (`POST /query`, the query in the form body) or Flux
//! through `/api/v2/query` (annotated CSV). Requests follow the rules of every metrics
//! request (see [`super::http_exchange`]): address policy, no redirects, bounded answers, the
//! metric's timeout, secrets taken out of what is answered. `result` is the list of values
//! the query returned.

use std::sync::Arc;

use super::prometheus::checked_http_client;
use super::{
    AddressPolicy, MetricsError, MetricsSource, ProviderQuery, QueryOutput, QueryRequest, Series,
    http_exchange, without_userinfo,
};

const PROVIDER: &str = "InfluxDB";

/// Which query language, and where it runs.
#[derive(Clone, Debug, PartialEq)]
pub enum InfluxQuery {
    InfluxQl { database: String },
    Flux { org: String },
}

#[derive(Clone, Debug)]
pub struct InfluxDbSource {
    verified: reqwest::Client,
    insecure: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl InfluxDbSource {
    pub fn with_policy(policy: Arc<AddressPolicy>) -> Result<Self, MetricsError> {
        Ok(Self {
            verified: checked_http_client(&policy, false, PROVIDER)?,
            insecure: checked_http_client(&policy, true, PROVIDER)?,
            policy,
        })
    }

    async fn query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        let base = request.address.trim_end_matches('/');
        let address = without_userinfo(base);
        let failed = |problem: String| MetricsError::Endpoint {
            provider: PROVIDER,
            address: address.clone(),
            problem,
        };
        let ProviderQuery::InfluxDb(language) = &request.provider else {
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
        let text = request.query.text_to_send();
        let builder = match language {
            InfluxQuery::InfluxQl { database } => client.post(format!("{base}/query")).form(&[
                ("db", database.as_str()),
                ("q", text),
                ("epoch", "s"),
            ]),
            InfluxQuery::Flux { org } => client
                .post(format!("{base}/api/v2/query"))
                .query(&[("org", org.as_str())])
                .header(reqwest::header::CONTENT_TYPE, "application/vnd.flux")
                .header(reqwest::header::ACCEPT, "application/csv")
                .body(text.to_string()),
        };
        let body = http_exchange::exchange(PROVIDER, &address, request, builder).await?;
        let values = match language {
            InfluxQuery::InfluxQl { .. } => influxql_values(&body),
            InfluxQuery::Flux { .. } => flux_values(&String::from_utf8_lossy(&body)),
        }
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

/// The values of an InfluxQL answer: per row of every series, the first column after `time`.
/// A statement error is an error; no series is an empty list (no data).
pub fn influxql_values(body: &[u8]) -> Result<Vec<f64>, String> {
    let answer: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("answered something that is not InfluxDB JSON ({e})"))?;
    if let Some(error) = answer.get("error").and_then(|e| e.as_str()) {
        return Err(format!("rejected the query: {error}"));
    }
    let mut values = Vec::new();
    for result in answer["results"].as_array().into_iter().flatten() {
        if let Some(error) = result.get("error").and_then(|e| e.as_str()) {
            return Err(format!("rejected the query: {error}"));
        }
        for series in result["series"].as_array().into_iter().flatten() {
            let columns: Vec<&str> = series["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str())
                .collect();
            let column = columns.iter().position(|c| *c != "time").unwrap_or(0);
            for row in series["values"].as_array().into_iter().flatten() {
                values.push(number(&row[column]));
            }
        }
    }
    Ok(values)
}

/// The `_value` of every record of a Flux answer (annotated CSV, one or more tables).
pub fn flux_values(csv: &str) -> Result<Vec<f64>, String> {
    let mut values = Vec::new();
    let mut value_column: Option<usize> = None;
    for line in csv.lines().map(str::trim_end) {
        if line.is_empty() {
            value_column = None;
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let cells: Vec<&str> = line.split(',').collect();
        match value_column {
            None => {
                if cells.contains(&"error") && !cells.contains(&"_value") {
                    value_column = cells.iter().position(|c| *c == "error").map(|i| i + 1000);
                    continue;
                }
                value_column = Some(
                    cells
                        .iter()
                        .position(|c| *c == "_value")
                        .ok_or_else(|| "answered tables without a _value column".to_string())?,
                );
            }
            Some(error) if error >= 1000 => {
                return Err(format!(
                    "rejected the query: {}",
                    cells.get(error - 1000).unwrap_or(&"")
                ));
            }
            Some(column) => {
                let cell = cells.get(column).copied().unwrap_or("");
                values.push(cell.parse::<f64>().unwrap_or(f64::NAN));
            }
        }
    }
    Ok(values)
}

fn number(value: &serde_json::Value) -> f64 {
    match value {
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        serde_json::Value::String(s) => s.parse().unwrap_or(f64::NAN),
        // A null (no value in the window) is no data: NaN, so the judge says so.
        _ => f64::NAN,
    }
}

impl MetricsSource for InfluxDbSource {
    async fn instant_query(&self, request: &QueryRequest) -> Result<QueryOutput, MetricsError> {
        self.query(request)
            .await
            .map_err(|e| e.with_secrets_redacted(&request.query).shortened())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn influxql_answers_give_the_first_value_column_of_every_row() {
        let answer = br#"{"results":[{"statement_id":0,"series":[
            {"name":"requests","tags":{"pod":"a"},"columns":["time","mean"],"values":[[1,0.5],[2,null]]},
            {"name":"requests","tags":{"pod":"b"},"columns":["time","mean"],"values":[[1,0.25]]}]}]}"#;
        let values = influxql_values(answer).unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!((values[0], values[2]), (0.5, 0.25));
        assert!(values[1].is_nan());
        assert!(
            influxql_values(br#"{"results":[{"statement_id":0}]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(
            influxql_values(br#"{"results":[{"statement_id":0,"error":"database not found: x"}]}"#)
                .unwrap_err()
                .contains("database not found")
        );
    }

    #[test]
    fn flux_csv_gives_the_value_of_every_record_of_every_table() {
        let csv = "#datatype,string,long,double\n#group,false,false,false\n#default,_result,,\n,result,table,_value\n,,0,0.01\n,,0,0.02\n\n#datatype,string,long,double\n,result,table,_value\n,,1,0.5\n";
        assert_eq!(flux_values(csv).unwrap(), [0.01, 0.02, 0.5]);
        assert!(
            flux_values(",error,reference\n,bad query,\n")
                .unwrap_err()
                .contains("bad query")
        );
    }
}
