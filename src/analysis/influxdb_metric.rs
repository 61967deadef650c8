//! Preparing an `influxdb` metric: the query rendered with every value escaped for a quoted
//! string of its language, the headers checked as a Prometheus metric's are (a credential
//! only from a Secret), the address checked against the address policy.

use super::render::{self, Variables};
use super::run::{ProviderRequest, SecretValues, is_credential_header};
use crate::api::analysis_template::{DEFAULT_QUERY_TIMEOUT, Header, InfluxDbProvider};
use crate::metrics::address_policy::is_routing_header;
use crate::metrics::influxdb::InfluxQuery;
use crate::metrics::{AddressPolicy, ProviderQuery, without_userinfo};

/// Renders and checks an influxdb metric; or every problem as (field under the metric, message).
pub(crate) fn prepare(
    influxdb: &InfluxDbProvider,
    declared: &[&str],
    variables: &Variables,
    secrets: &dyn SecretValues,
) -> Result<ProviderRequest, Vec<(String, String)>> {
    let InfluxDbProvider {
        address,
        query,
        database,
        org,
        timeout,
        headers,
        insecure,
    } = influxdb;
    let mut problems: Vec<(String, String)> = Vec::new();
    let language = match (database, org) {
        (Some(database), None) => Some(InfluxQuery::InfluxQl {
            database: database.clone(),
        }),
        (None, Some(org)) => Some(InfluxQuery::Flux { org: org.clone() }),
        _ => {
            problems.push((
                "provider.influxdb".into(),
                "influxdb needs database (an InfluxQL query) or org (a Flux query), not both"
                    .into(),
            ));
            None
        }
    };
    // Backslashes and both quotes escaped: a value stays inside an InfluxQL '…' string or
    // "…" identifier, or a Flux "…" string.
    let query = render::render_text(query, declared, variables, &|_, value| {
        value
            .replace('\\', "\\\\")
            .replace('\'', "\\'")
            .replace('"', "\\\"")
    })
    .map_err(|e| problems.push(("provider.influxdb.query".into(), e.to_string())))
    .ok();
    if without_userinfo(address) != *address {
        problems.push((
            "provider.influxdb.address".into(),
            "credentials in the address would be shown wherever the address is: send them in a header from a Secret (headers[].valueFrom.secretKeyRef)".into(),
        ));
    }
    if let Some(why) = AddressPolicy::default().refusal(address) {
        problems.push(("provider.influxdb.address".into(), why));
    }
    let (sent, header_secrets) =
        checked_headers(headers, "provider.influxdb", secrets, &mut problems);
    if let Some(too_long) = timeout.and_then(crate::api::Duration::too_long) {
        problems.push(("provider.influxdb.timeout".into(), too_long));
    }
    match (query, language) {
        (Some(query), Some(language)) if problems.is_empty() => Ok(ProviderRequest {
            address: address.clone(),
            query,
            timeout: timeout.unwrap_or(DEFAULT_QUERY_TIMEOUT).as_std(),
            headers: sent,
            header_secrets,
            insecure: *insecure,
            provider: ProviderQuery::InfluxDb(language),
            compare: None,
        }),
        _ => Err(problems),
    }
}

/// Headers of an HTTP provider (`field` names it, e.g. `provider.influxdb`), by the rules of a
/// Prometheus metric's: no routing header, a credential only from a Secret. Returns the
/// headers to send and the secret values among them (by name), and adds every problem.
pub(crate) fn checked_headers(
    headers: &[Header],
    field: &str,
    secrets: &dyn SecretValues,
    problems: &mut Vec<(String, String)>,
) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let mut sent = Vec::new();
    let mut header_secrets = Vec::new();
    for (h, header) in headers.iter().enumerate() {
        let field = format!("{field}.headers[{h}]");
        if is_routing_header(&header.name) {
            problems.push((
                format!("{field}.name ({})", header.name),
                "this header would change where the request goes or how it is framed: remove it"
                    .into(),
            ));
            continue;
        }
        match (&header.value, &header.value_from) {
            (Some(_), _) if is_credential_header(&header.name) => problems.push((
                format!("{field}.value ({})", header.name),
                "a credential is written into the template: take it from a Secret with valueFrom.secretKeyRef".into(),
            )),
            (Some(value), _) => sent.push((header.name.clone(), value.clone())),
            (None, Some(from)) => match secrets.secret_value(&from.secret_key_ref) {
                Ok(value) => {
                    header_secrets.push((format!("header {}", header.name), value.clone()));
                    sent.push((header.name.clone(), value));
                }
                Err(message) => {
                    problems.push((format!("{field}.valueFrom ({})", header.name), message))
                }
            },
            (None, None) => problems.push((field, "a header needs value or valueFrom".into())),
        }
    }
    (sent, header_secrets)
}
