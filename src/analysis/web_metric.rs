//! Preparing a `web` metric: the URL, headers and body rendered from the arguments, checked
//! against the same rules as a Prometheus metric's address and headers.
//!
//! - Values placed in the URL's path or query are percent-encoded, so an argument cannot add
//!   a path segment or a query parameter; values before the path (a base URL as an argument)
//!   are placed as they are, and the rendered URL must parse as http(s).
//! - Values placed in `jsonBody` are JSON-escaped; `body` is free text, placed as written.
//! - A credential header (`Authorization`, `Cookie`, `X-Api-Key`, …) must draw its value from
//!   a Secret: `valueFrom.secretKeyRef`, or an argument declared with one (Argo's documented
//!   `Bearer {{args.api-token}}`). A value written into the template is refused.
//! - Secret values reach only the request: the URL people see shows `<secret:NAME>`, and
//!   whatever the endpoint answers has them taken out.

use super::render::{self, Variables};
use super::run::{ProviderRequest, SecretValues, is_credential_header};
use crate::api::analysis_template::WebProvider;
use crate::metrics::address_policy::is_routing_header;
use crate::metrics::web::{WebQuery, json_path_problem, normalized_json_path};
use crate::metrics::{AddressPolicy, ProviderQuery, Query, without_userinfo};

/// The longest a web request may take, as the CRD bounds `timeoutSeconds`.
const MAX_TIMEOUT_SECONDS: u32 = 3600;

/// Renders and checks a web metric; or every problem as (field under the metric, message).
pub(crate) fn prepare(
    web: &WebProvider,
    declared: &[&str],
    variables: &Variables,
    secrets: &dyn SecretValues,
) -> Result<ProviderRequest, Vec<(String, String)>> {
    let WebProvider {
        url,
        method,
        headers,
        body,
        json_body,
        timeout_seconds,
        json_path,
        insecure,
    } = web;
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut problem = |field: &str, message: String| problems.push((field.to_string(), message));

    let url = render::render_text(url, declared, variables, &place_in_url)
        .map_err(|e| problem("provider.web.url", e.to_string()))
        .ok();
    let origin = url.as_ref().and_then(|url| match checked_origin(url) {
        Ok(origin) => Some(origin),
        Err(why) => {
            problem("provider.web.url", why);
            None
        }
    });

    let mut sent_headers = Vec::new();
    let mut secret_values: Vec<(String, String)> = Vec::new();
    for (h, header) in headers.iter().enumerate() {
        let field = format!("provider.web.headers[{h}]");
        if is_routing_header(&header.key) {
            problem(
                &format!("{field}.key ({})", header.key),
                "this header would change where the request goes or how it is framed (the HTTP client sets it from the URL): remove it".into(),
            );
            continue;
        }
        match (&header.value, &header.value_from) {
            (Some(value), _) => {
                match render::render_text(value, declared, variables, &|_, value| {
                    value.to_string()
                }) {
                    Ok(rendered) if is_credential_header(&header.key) && rendered.secrets().is_empty() => problem(
                        &format!("{field}.value ({})", header.key),
                        "a credential is written into the template: take it from a Secret, with valueFrom.secretKeyRef on the header or on an argument the value uses (e.g. \"Bearer {{args.token}}\" with args[].valueFrom.secretKeyRef)".into(),
                    ),
                    Ok(rendered) => {
                        secret_values.extend(rendered.secrets().iter().cloned());
                        sent_headers.push((header.key.clone(), rendered.text_to_send().to_string()));
                    }
                    Err(e) => problem(&format!("{field}.value ({})", header.key), e.to_string()),
                }
            }
            (None, Some(from)) => match secrets.secret_value(&from.secret_key_ref) {
                Ok(value) => {
                    secret_values.push((format!("header {}", header.key), value.clone()));
                    sent_headers.push((header.key.clone(), value));
                }
                Err(message) => problem(&format!("{field}.valueFrom ({})", header.key), message),
            },
            (None, None) => problem(&field, "a header needs value or valueFrom".into()),
        }
    }

    let body = match (body, json_body) {
        (Some(_), Some(_)) => {
            problem(
                "provider.web.body",
                "web has body or jsonBody, not both".into(),
            );
            None
        }
        (Some(text), None) => {
            render::render_text(text, declared, variables, &|_, value| value.to_string())
                .map_err(|e| problem("provider.web.body", e.to_string()))
                .ok()
        }
        (None, Some(json)) => {
            render::render_text(&json.to_string(), declared, variables, &|_, value| {
                json_string_content(value)
            })
            .map_err(|e| problem("provider.web.jsonBody", e.to_string()))
            .ok()
        }
        (None, None) => None,
    };
    if let Some(body) = &body {
        secret_values.extend(body.secrets().iter().cloned());
    }

    let json_path = json_path.as_deref().map(normalized_json_path);
    if let Some(why) = json_path.as_deref().and_then(json_path_problem) {
        problem("provider.web.jsonPath", why);
    }
    if timeout_seconds_out_of_range(*timeout_seconds) {
        problem(
            "provider.web.timeoutSeconds",
            format!("must be between 1 and {MAX_TIMEOUT_SECONDS}"),
        );
    }

    match (url, origin) {
        (Some(url), Some(address)) if problems.is_empty() => Ok(ProviderRequest {
            address,
            query: url.with_more_secrets(secret_values.clone()),
            timeout: web.timeout().as_std(),
            headers: sent_headers,
            header_secrets: secret_values,
            insecure: *insecure,
            provider: ProviderQuery::Web(WebQuery {
                method: method.unwrap_or_default(),
                body,
                body_is_json: json_body.is_some(),
                json_path,
            }),
            compare: None,
        }),
        _ => Err(problems),
    }
}

fn timeout_seconds_out_of_range(seconds: Option<u32>) -> bool {
    seconds.is_some_and(|s| s == 0 || s > MAX_TIMEOUT_SECONDS)
}

/// A value placed in a URL: percent-encoded once the path has begun (after `scheme://host`),
/// as it is before (where a whole base URL may come from an argument).
fn place_in_url(before: &str, value: &str) -> String {
    let authority_start = before.find("://").map_or(0, |at| at + 3);
    let in_path = before[authority_start..].contains(['/', '?', '#']);
    if in_path {
        url::form_urlencoded::byte_serialize(value.as_bytes())
            .collect::<String>()
            .replace('+', "%20")
    } else {
        value.to_string()
    }
}

/// `value` as the inside of a JSON string (escaped, without the quotes).
fn json_string_content(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_string()
}

/// The rendered URL's origin (`scheme://host:port`), which errors name, once the URL is
/// checked: http(s), no credentials in it, not refused by the address policy.
fn checked_origin(url: &Query) -> Result<String, String> {
    let sent = url.text_to_send();
    let parsed = url::Url::parse(sent).map_err(|e| {
        format!(
            "{} is not a URL once its placeholders are filled in: {e}",
            without_userinfo(url.shown())
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the URL's scheme is {:?}: use http:// or https://",
            parsed.scheme()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("credentials in the URL would be shown wherever the URL is: send them in a header from a Secret (headers[].valueFrom.secretKeyRef)".into());
    }
    // The refusals that hold whatever the controller's allow-list (which its source
    // applies to every request, with these).
    if let Some(why) = AddressPolicy::default().refusal(sent) {
        return Err(why);
    }
    Ok(parsed.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::run::NoSecrets;
    use crate::api::analysis_template::WebHeader;
    use std::collections::{BTreeMap, BTreeSet};

    fn web(url: &str) -> WebProvider {
        serde_json::from_value(serde_json::json!({ "url": url })).unwrap()
    }

    fn variables(args: &[(&str, &str)], secret: &[&str]) -> Variables {
        Variables {
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            context: BTreeMap::new(),
            secret_args: secret
                .iter()
                .map(|s| s.to_string())
                .collect::<BTreeSet<_>>(),
        }
    }

    #[test]
    fn arguments_in_the_path_and_query_are_encoded_and_a_base_url_is_not() {
        let cases = [
            (
                "http://svc:8080/api/v1/measurement?service={{ args.service }}",
                "a&admin=1 b",
                "http://svc:8080/api/v1/measurement?service=a%26admin%3D1%20b",
            ),
            (
                "{{args.service}}/api",
                "http://svc:8080",
                "http://svc:8080/api",
            ),
            (
                "http://svc:8080/items/{{args.service}}",
                "../admin",
                "http://svc:8080/items/..%2Fadmin",
            ),
        ];
        for (url, value, expected) in cases {
            let prepared = prepare(
                &web(url),
                &["service"],
                &variables(&[("service", value)], &[]),
                &NoSecrets,
            )
            .unwrap_or_else(|p| panic!("{url}: {p:?}"));
            assert_eq!(prepared.query.text_to_send(), expected, "{url}");
        }
    }

    #[test]
    fn a_credential_header_must_come_from_a_secret() {
        let header = |value: &str| WebHeader {
            key: "Authorization".into(),
            value: Some(value.into()),
            value_from: None,
        };
        let mut provider = web("http://svc:8080/check");
        provider.headers = vec![header("Bearer {{args.token}}")];
        // The token argument is declared from a Secret: by reference, accepted, and redacted.
        let prepared = prepare(
            &provider,
            &["token"],
            &variables(&[("token", "s3cret-t0ken")], &["token"]),
            &NoSecrets,
        )
        .unwrap();
        assert_eq!(
            prepared.headers,
            [(
                "Authorization".to_string(),
                "Bearer s3cret-t0ken".to_string()
            )]
        );
        assert_eq!(
            prepared.query.redact("refused Bearer s3cret-t0ken"),
            "refused Bearer <secret:token>"
        );
        // The same token in a plain argument, or written inline, is refused.
        for (value, args) in [
            ("Bearer {{args.token}}", variables(&[("token", "t")], &[])),
            ("Bearer abc123", variables(&[], &[])),
        ] {
            provider.headers = vec![header(value)];
            let problems = prepare(&provider, &["token"], &args, &NoSecrets).unwrap_err();
            assert!(
                problems[0]
                    .1
                    .contains("a credential is written into the template"),
                "{value}: {problems:?}"
            );
        }
    }

    #[test]
    fn bad_urls_paths_and_timeouts_are_named_by_field() {
        let mut provider = web("http://user:pw@svc/x");
        provider.json_path = Some("{$.data[}".into());
        provider.timeout_seconds = Some(0);
        let problems = prepare(&provider, &[], &variables(&[], &[]), &NoSecrets).unwrap_err();
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "provider.web.url",
                "provider.web.jsonPath",
                "provider.web.timeoutSeconds"
            ],
            "{problems:?}"
        );
        let problems = prepare(
            &web("http://169.254.169.254/latest"),
            &[],
            &variables(&[], &[]),
            &NoSecrets,
        )
        .unwrap_err();
        assert!(problems[0].1.contains("link-local"), "{problems:?}");
    }
}
