//! Preparing a `graphite` metric: Argo's `target=` prefix taken off, placeholders filled with
//! values that must be metric-path text (a value with `(`, `,` or a quote would change the
//! target's structure and is refused), headers and address checked as for any HTTP provider.

use super::influxdb_metric::checked_headers;
use super::render::{self, Variables};
use super::run::{ProviderRequest, SecretValues};
use crate::api::analysis_template::{DEFAULT_QUERY_TIMEOUT, GraphiteProvider};
use crate::metrics::{AddressPolicy, ProviderQuery, without_userinfo};

/// Graphite's `from` when the metric sets none.
const DEFAULT_FROM: &str = "-5min";

/// Renders and checks a graphite metric; or every problem as (field under the metric, message).
pub(crate) fn prepare(
    graphite: &GraphiteProvider,
    declared: &[&str],
    variables: &Variables,
    secrets: &dyn SecretValues,
) -> Result<ProviderRequest, Vec<(String, String)>> {
    let GraphiteProvider {
        address,
        query,
        from,
        timeout,
        headers,
        insecure,
    } = graphite;
    let mut problems: Vec<(String, String)> = Vec::new();
    let target = query.trim();
    let target = target.strip_prefix("target=").unwrap_or(target);
    for placeholder in render::placeholders(target) {
        let value = placeholder
            .strip_prefix("args.")
            .and_then(|name| variables.args.get(name.trim()))
            .or_else(|| variables.context.get(placeholder));
        if let Some(value) = value
            && !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.*{}[]:".contains(c))
        {
            problems.push((
                "provider.graphite.query".into(),
                format!("the value of {placeholder} holds characters that would change the target's structure (only letters, digits and _ - . * {{ }} [ ] : may be placed in a metric path)"),
            ));
        }
    }
    let rendered = render::render_text(target, declared, variables, &|_, value| value.to_string())
        .map_err(|e| problems.push(("provider.graphite.query".into(), e.to_string())))
        .ok();
    if without_userinfo(address) != *address {
        problems.push((
            "provider.graphite.address".into(),
            "credentials in the address would be shown wherever the address is: send them in a header from a Secret (headers[].valueFrom.secretKeyRef)".into(),
        ));
    }
    if let Some(why) = AddressPolicy::default().refusal(address) {
        problems.push(("provider.graphite.address".into(), why));
    }
    let (sent, header_secrets) =
        checked_headers(headers, "provider.graphite", secrets, &mut problems);
    if let Some(too_long) = timeout.and_then(crate::api::Duration::too_long) {
        problems.push(("provider.graphite.timeout".into(), too_long));
    }
    match rendered {
        Some(query) if problems.is_empty() => Ok(ProviderRequest {
            address: address.clone(),
            query,
            timeout: timeout.unwrap_or(DEFAULT_QUERY_TIMEOUT).as_std(),
            headers: sent,
            header_secrets,
            insecure: *insecure,
            provider: ProviderQuery::Graphite {
                from: from.clone().unwrap_or_else(|| DEFAULT_FROM.to_string()),
            },
            compare: None,
        }),
        _ => Err(problems),
    }
}
