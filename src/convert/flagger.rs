//! A Flagger `Canary` as ours, and its analysis metrics as one AnalysisTemplate,
//! `<name>-analysis`: Flagger keeps each metric's threshold in the Canary, canary keeps it in
//! the template, so the template is the Canary's own.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    Inputs, check_converted_canary, check_converted_template, duration, metadata_of, not_carried,
    progress_deadline, spec_and_name, whole_number,
};
use crate::analysis::import::{Note, Severity, carried_metric_name, error, read_document, warning};
use crate::api::analysis_template::{AnalysisTemplate, Argument, Metric, ThresholdRange};
use crate::api::{API_VERSION, Duration};

/// Flagger's default analysis interval, metric window and threshold.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
const DEFAULT_WINDOW: &str = "1m";

pub(crate) fn analysis_template_name(canary: &Value) -> String {
    format!(
        "{}-analysis",
        canary
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("canary")
    )
}

/// The MetricTemplates the Canary's metrics name.
pub(crate) fn metric_template_refs(canary: &Value) -> Vec<String> {
    canary
        .pointer("/spec/analysis/metrics")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.pointer("/templateRef/name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// Where the built-in metrics of a provider are measured here: our ready-made template for
/// the same system, and the unit its latency query returns.
struct Builtin {
    file: &'static str,
    text: &'static str,
    latency_in_seconds: bool,
}

fn builtin_for(provider: &str) -> Option<Builtin> {
    let (file, text, latency_in_seconds) = match provider {
        "istio" => (
            "istio.yaml",
            include_str!("../../analysis-templates/istio.yaml"),
            false,
        ),
        "linkerd" => (
            "linkerd.yaml",
            include_str!("../../analysis-templates/linkerd.yaml"),
            false,
        ),
        "nginx" => (
            "ingress-nginx.yaml",
            include_str!("../../analysis-templates/ingress-nginx.yaml"),
            true,
        ),
        p if p == "kubernetes" || p.starts_with("gatewayapi") => (
            "generic-http.yaml",
            include_str!("../../analysis-templates/generic-http.yaml"),
            true,
        ),
        _ => return None,
    };
    Some(Builtin {
        file,
        text,
        latency_in_seconds,
    })
}

const SPEC_REASONS: &[(&str, &str)] = &[
    (
        "revertOnDeletion",
        "deleting a Canary hands the Deployment back as it is",
    ),
    (
        "ingressRef",
        "no Ingress router: the split is by replicas behind your Service (the ingress name is passed to the metrics)",
    ),
    (
        "upstreamRef",
        "no Gloo router: the split is by replicas behind your Service",
    ),
    (
        "routeRef",
        "no Skipper/Gloo route: the split is by replicas behind your Service",
    ),
];

const SERVICE_REASONS: &[(&str, &str)] = &[
    (
        "name",
        "the Services are yours here (Flagger generated them)",
    ),
    (
        "targetPort",
        "the Services are yours here: set targetPort in them",
    ),
    (
        "portName",
        "the Services are yours here: name the port in them",
    ),
    ("portDiscovery", "the Services are yours here"),
    ("appProtocol", "the Services are yours here"),
    (
        "gateways",
        "the VirtualService is yours here: Flagger generated it from these fields",
    ),
    (
        "hosts",
        "the VirtualService is yours here: Flagger generated it from these fields",
    ),
    (
        "trafficPolicy",
        "the DestinationRule is yours here: Flagger generated it from these fields",
    ),
    (
        "retries",
        "the VirtualService is yours here: put retries in its route",
    ),
    (
        "timeout",
        "the VirtualService is yours here: put the timeout in its route",
    ),
    (
        "headers",
        "the VirtualService is yours here: put header operations in its route",
    ),
    (
        "corsPolicy",
        "the VirtualService is yours here: put the CORS policy in its route",
    ),
    (
        "match",
        "the VirtualService is yours here: put the match in its route",
    ),
    (
        "rewrite",
        "the VirtualService is yours here: put the rewrite in its route",
    ),
    ("delegation", "the VirtualService is yours here"),
    ("apex", "the Services are yours here: label them yourself"),
    (
        "primary",
        "the stable pods are labelled canary.dev/subset: stable",
    ),
    (
        "canary",
        "the canary pods are labelled canary.dev/subset: canary",
    ),
    (
        "backends",
        "the routing objects are yours here (Flagger generated them)",
    ),
    (
        "gatewayRefs",
        "the HTTPRoute is yours here: Flagger generated it from these fields",
    ),
];

const ANALYSIS_REASONS: &[(&str, &str)] = &[
    (
        "mirror",
        "traffic mirroring has no counterpart: the canary gets a share of live traffic",
    ),
    ("mirrorWeight", "traffic mirroring has no counterpart"),
    (
        "stepWeightPromotion",
        "promotion moves all traffic back to the promoted stable at once",
    ),
    (
        "primaryReadyThreshold",
        "a step waits for every pod of its weight to be ready",
    ),
    (
        "canaryReadyThreshold",
        "a step waits for every pod of its weight to be ready",
    ),
    (
        "alerts",
        "no alert providers: follow the Canary's events (`canary status --watch`, or an event exporter)",
    ),
    (
        "sessionAffinity",
        "no session affinity: write a cookie match with a setHeaderRoute step",
    ),
];

pub(crate) fn convert_canary(flagger: &Value, inputs: &Inputs) -> (Vec<Value>, Vec<Note>) {
    let mut notes = Vec::new();
    let (spec, name) = spec_and_name(flagger);
    not_carried(
        &spec,
        "spec",
        &[
            "provider",
            "targetRef",
            "service",
            "analysis",
            "progressDeadlineSeconds",
            "skipAnalysis",
            "suspend",
            "ingressRef",
            "autoscalerRef",
        ],
        SPEC_REASONS,
        &mut notes,
    );
    let target = spec
        .pointer("/targetRef/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match spec.pointer("/targetRef/kind").and_then(Value::as_str) {
        Some("Deployment") | None => {}
        Some(kind) => notes.push(error(
            "spec.targetRef.kind",
            format!("{kind}: a Canary targets a Deployment only"),
        )),
    }
    let service = spec.get("service").cloned().unwrap_or(Value::Null);
    not_carried(
        &service,
        "spec.service",
        &["port"],
        SERVICE_REASONS,
        &mut notes,
    );
    let port = match service.get("port") {
        Some(p) => whole_number(p, "spec.service.port", 65535, &mut notes),
        None => {
            notes.push(error(
                "spec.service.port",
                "a Flagger Canary needs service.port",
            ));
            None
        }
    };
    // Flagger's apex Service is named after service.name, or the target.
    let apex = service
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(&target)
        .to_string();
    let provider = match spec.get("provider").and_then(Value::as_str) {
        Some(p) => p.to_string(),
        None => {
            notes.push(warning(
                "spec.provider",
                "absent: Flagger used its installation's meshProvider; converted as istio (its default). Set provider in the Flagger Canary and convert again if yours was another",
            ));
            "istio".to_string()
        }
    };

    let analysis = spec.get("analysis").cloned().unwrap_or(Value::Null);
    not_carried(
        &analysis,
        "spec.analysis",
        &[
            "interval",
            "threshold",
            "maxWeight",
            "stepWeight",
            "stepWeights",
            "iterations",
            "match",
            "metrics",
            "webhooks",
        ],
        ANALYSIS_REASONS,
        &mut notes,
    );
    let interval = match analysis.get("interval") {
        Some(v) => duration(v, "spec.analysis.interval", &mut notes).unwrap_or(DEFAULT_INTERVAL),
        None => DEFAULT_INTERVAL,
    };
    let threshold = analysis
        .get("threshold")
        .and_then(|v| whole_number(v, "spec.analysis.threshold", 1000, &mut notes))
        .filter(|t| *t > 0)
        .unwrap_or(1);
    let iterations = analysis
        .get("iterations")
        .and_then(|v| whole_number(v, "spec.analysis.iterations", 10000, &mut notes));
    for (i, hook) in analysis
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        notes.push(webhook_note(i, hook));
    }

    let mut canary_spec = Map::new();
    canary_spec.insert("targetRef".into(), json!({"name": target}));
    canary_spec.insert("service".into(), json!({"port": port.unwrap_or(80)}));
    if let Some(v) = spec.get("progressDeadlineSeconds")
        && let Some(seconds) = progress_deadline(v, &mut notes)
    {
        canary_spec.insert("progressDeadlineSeconds".into(), json!(seconds));
    }
    for key in ["skipAnalysis", "suspend"] {
        if spec.get(key).and_then(Value::as_bool) == Some(true) {
            canary_spec.insert(key.into(), json!(true));
        }
    }
    // Flagger's HPA scales the target Deployment, as ours must: the controller derives
    // stable's HPA from it.
    if let Some(reference) = spec.get("autoscalerRef") {
        let kind = reference.get("kind").and_then(Value::as_str);
        match (kind, reference.get("name").and_then(Value::as_str)) {
            (Some("HorizontalPodAutoscaler") | None, Some(hpa)) => {
                canary_spec.insert("autoscalerRef".into(), json!({"name": hpa}));
            }
            _ => notes.push(warning(
                "spec.autoscalerRef",
                format!(
                    "not carried: only a HorizontalPodAutoscaler (autoscaling/v2) is followed, not {}; see the README's \"Autoscaling (HPA)\"",
                    kind.unwrap_or("a reference without a kind")
                ),
            )),
        }
    }

    let matches = analysis.get("match").and_then(Value::as_array);
    let step_weights = analysis.get("stepWeights").and_then(Value::as_array);
    let blue_green = matches.is_none()
        && step_weights.is_none()
        && analysis.get("stepWeight").is_none()
        && iterations.is_some();

    // The metrics, as one template of the Canary's own.
    // Blue/green and A/B tests run their checks `iterations` times, then promote: an analysis
    // that runs to completion. (A background analysis would not do for A/B: the canary has no
    // weight, only header routes, and the background analysis starts with the first weight.)
    let count = if blue_green || matches.is_some() {
        iterations
    } else {
        None
    };
    let context = FlaggerContext {
        canary: &name,
        namespace: flagger
            .pointer("/metadata/namespace")
            .and_then(Value::as_str),
        service: &apex,
        // Flagger fills `ingress` and `route` with the target's name when the Canary names
        // no ingressRef / routeRef.
        ingress: spec
            .pointer("/ingressRef/name")
            .and_then(Value::as_str)
            .or(Some(target.as_str())),
        route: spec
            .pointer("/routeRef/name")
            .and_then(Value::as_str)
            .unwrap_or(&target),
        interval,
        threshold,
        count,
        provider: &provider,
    };
    let (template, external) = metrics_template(flagger, &analysis, &context, inputs, &mut notes);
    let mut templates: Vec<Value> = external
        .iter()
        .map(|name| json!({"templateName": name}))
        .collect();
    if let Some(template) = &template {
        templates.insert(0, json!({"templateName": analysis_template_name(flagger)}));
        notes.extend(check_converted_template(template));
    }
    let mut analysis_ref = (!templates.is_empty()).then(|| json!({"templates": templates}));

    if blue_green {
        let mut strategy = Map::new();
        strategy.insert("activeService".into(), json!(apex));
        strategy.insert("previewService".into(), json!(format!("{apex}-canary")));
        if let Some(a) = &analysis_ref {
            strategy.insert("prePromotionAnalysis".into(), a.clone());
        }
        notes.push(warning(
            "spec.analysis.iterations",
            format!("blue/green: the new version comes up behind preview Service {apex}-canary, its metrics are checked {} times every {interval} (prePromotionAnalysis, count {}), then Service {apex} is switched to it. Flagger generated Services {apex}, {apex}-primary and {apex}-canary; here {apex} and {apex}-canary are yours: keep them, selecting the Deployment's pod labels (the controller sets their version selector)", iterations.unwrap_or(0), iterations.unwrap_or(0)),
        ));
        if provider != "kubernetes" {
            notes.push(warning(
                "spec.provider",
                format!("{provider} is not used for blue/green here: the switch is the active Service's selector, in one write, not a weight in the mesh's routing objects"),
            ));
        }
        canary_spec.insert("strategy".into(), json!({"blueGreen": strategy}));
    } else {
        if let Some(router) = router(&provider, &apex, &mut notes) {
            canary_spec.insert("trafficRouting".into(), router);
        }
        let mut steps: Vec<Value> = Vec::new();
        if let Some(matches) = matches {
            for (i, m) in matches.iter().enumerate() {
                if let Some(route) = header_route(i, m, &mut notes) {
                    steps.push(json!({"setHeaderRoute": route}));
                }
            }
            match iterations {
                Some(n) => {
                    let hold = Duration::from_secs(interval.as_std().as_secs().saturating_mul(n));
                    match analysis_ref.take() {
                        Some(a) => steps.push(json!({"analysis": a})),
                        None => steps.push(json!({"pause": {"duration": hold.to_string()}})),
                    }
                    notes.push(warning(
                        "spec.analysis.match",
                        format!("A/B test: requests matching it go to the canary while an analysis step checks the metrics {n} times every {interval} ({hold}), then the canary is promoted"),
                    ));
                }
                None => notes.push(error(
                    "spec.analysis.iterations",
                    "an A/B test (match) needs iterations: how many intervals the matching requests go to the canary",
                )),
            }
        }
        if let Some(weights) = step_weights {
            for (i, w) in weights.iter().enumerate() {
                if let Some(w) = whole_number(
                    w,
                    &format!("spec.analysis.stepWeights[{i}]"),
                    100,
                    &mut notes,
                ) {
                    steps.push(json!({"setWeight": w}));
                    steps.push(json!({"pause": {"duration": interval.to_string()}}));
                }
            }
        } else if let Some(step) = analysis.get("stepWeight") {
            let step = whole_number(step, "spec.analysis.stepWeight", 100, &mut notes);
            let max = analysis.get("maxWeight").map_or(Some(100), |m| {
                whole_number(m, "spec.analysis.maxWeight", 100, &mut notes)
            });
            if steps.is_empty() {
                canary_spec.insert("stepWeight".into(), json!(step.unwrap_or(10)));
                canary_spec.insert("maxWeight".into(), json!(max.unwrap_or(100)));
                canary_spec.insert("interval".into(), json!(interval.to_string()));
            } else if let (Some(step), Some(max)) = (step.filter(|s| *s > 0), max) {
                // Header routes first, then the weights: the shorthand cannot follow steps.
                let mut weight = 0;
                while weight < max {
                    weight = (weight + step).min(max);
                    steps.push(json!({"setWeight": weight}));
                    steps.push(json!({"pause": {"duration": interval.to_string()}}));
                }
            }
        } else if matches.is_none() {
            notes.push(error(
                "spec.analysis",
                "neither stepWeight, stepWeights, iterations nor match: say how traffic moves",
            ));
        }
        if !steps.is_empty() {
            canary_spec.insert("steps".into(), Value::Array(steps));
        }
        if let Some(a) = analysis_ref {
            canary_spec.insert("analysis".into(), a);
        }
    }

    let canary = json!({
        "apiVersion": API_VERSION,
        "kind": "Canary",
        "metadata": metadata_of(flagger, false),
        "spec": canary_spec,
    });
    notes.extend(check_converted_canary(&canary));
    let mut objects = vec![canary];
    objects.extend(template);
    (objects, notes)
}

fn webhook_note(i: usize, hook: &Value) -> Note {
    let name = hook
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("(unnamed)");
    let kind = hook
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("rollout");
    let instead = match kind {
        "confirm-rollout" => {
            "gate the start in your pipeline before `canary run`, or use spec.suspend"
        }
        "confirm-promotion" => "end the steps with a `pause: {}` step: `canary promote` passes it",
        "confirm-traffic-increase" => {
            "add `pause: {}` steps between the weights: `canary promote` passes each"
        }
        "pre-rollout" => "run it in your pipeline before `canary run --wait`",
        "post-rollout" => "run it in your pipeline after `canary run --wait` returns",
        "rollback" => "roll back by hand with `canary abort`",
        "event" => "follow the Canary's events instead",
        // `rollout` (the default): typically a load test run at every interval.
        _ => {
            "generate the traffic some other way while the rollout runs (the analysis needs requests to measure)"
        }
    };
    warning(
        format!("spec.analysis.webhooks[{i}]"),
        format!("webhook {name} (type {kind}) is not carried: canary calls no webhooks; {instead}"),
    )
}

fn router(provider: &str, apex: &str, notes: &mut Vec<Note>) -> Option<Value> {
    match provider {
        "istio" => {
            notes.push(warning(
                "spec.provider",
                format!("istio: Flagger generated VirtualService {apex} and DestinationRules {apex}-canary and {apex}-primary; canary uses yours: a VirtualService {apex} whose HTTP route has a destination for subset stable and one for subset canary, and a DestinationRule {apex} with those two subsets (see docs/routers/istio.md). Rename them in trafficRouting.istio if yours are named otherwise"),
            ));
            Some(json!({"istio": {
                "virtualService": {"name": apex},
                "destinationRule": {"name": apex},
            }}))
        }
        p if p.starts_with("gatewayapi") => {
            notes.push(warning(
                "spec.provider",
                format!("{p}: Flagger generated HTTPRoute {apex} over Services {apex}-primary and {apex}-canary; canary uses yours: an HTTPRoute {apex} with a rule whose backendRefs name both Services (createServices: true makes the controller create the two Services)"),
            ));
            Some(json!({"gatewayAPI": {
                "httpRoute": apex,
                "stableService": format!("{apex}-primary"),
                "canaryService": format!("{apex}-canary"),
                "createServices": true,
            }}))
        }
        "kubernetes" => None,
        other => {
            notes.push(warning(
                "spec.provider",
                format!("{other}: canary has no {other} router; the Canary splits by replicas behind your Service {apex} (granularity one pod). Istio and the Gateway API (which Linkerd, Contour, Kuma and others read) split exactly: write trafficRouting for one of them to keep exact weights"),
            ));
            None
        }
    }
}

/// One entry of Flagger's `match` (its headers are ANDed; entries are ORed) as a header route.
fn header_route(i: usize, entry: &Value, notes: &mut Vec<Note>) -> Option<Value> {
    let path = format!("spec.analysis.match[{i}]");
    not_carried(
        entry,
        &path,
        &["headers"],
        &[
            ("sourceLabels", "header routes match request headers only"),
            ("uri", "header routes match request headers only"),
            ("method", "header routes match request headers only"),
            ("queryParams", "header routes match request headers only"),
        ],
        notes,
    );
    let mut matches = Vec::new();
    for (header, value) in entry
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let kept: Map<String, Value> = value
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| ["exact", "prefix", "regex"].contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if kept.len() != 1 {
            notes.push(error(
                format!("{path}.headers.{header}"),
                "only one of exact, prefix or regex is carried per header",
            ));
            continue;
        }
        matches.push(json!({"headerName": header, "headerValue": kept}));
    }
    if matches.is_empty() {
        notes.push(warning(path, "not carried: no header to match on"));
        return None;
    }
    Some(json!({"name": format!("ab-test-{}", i + 1), "match": matches}))
}

struct FlaggerContext<'a> {
    canary: &'a str,
    namespace: Option<&'a str>,
    service: &'a str,
    ingress: Option<&'a str>,
    route: &'a str,
    interval: Duration,
    threshold: u64,
    count: Option<u64>,
    provider: &'a str,
}

/// The Canary's metrics as one template (None when every metric was left out); also the names
/// of MetricTemplates named but not among the files, referred to as templates of that name.
fn metrics_template(
    flagger: &Value,
    analysis: &Value,
    context: &FlaggerContext,
    inputs: &Inputs,
    notes: &mut Vec<Note>,
) -> (Option<Value>, Vec<String>) {
    let mut metrics = Vec::new();
    let mut args: Vec<Argument> = Vec::new();
    let mut external = Vec::new();
    let limit = u32::try_from(context.threshold.saturating_sub(1)).unwrap_or(u32::MAX);
    let metric_list = analysis
        .get("metrics")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !metric_list.is_empty() {
        notes.push(warning(
            "spec.analysis.threshold",
            format!("{} failed checks rolled back in Flagger, counted over all metrics; here each metric fails after {} failed or {} inconclusive (no data) measurements of its own (failureLimit and inconclusiveLimit {limit})", context.threshold, context.threshold, context.threshold),
        ));
    }
    for (i, m) in metric_list.iter().enumerate() {
        let path = format!("spec.analysis.metrics[{i}]");
        not_carried(
            m,
            &path,
            &[
                "name",
                "interval",
                "thresholdRange",
                "threshold",
                "templateRef",
                "templateVariables",
                "query",
            ],
            &[],
            notes,
        );
        let written = m.get("name").and_then(Value::as_str).unwrap_or("");
        let name = carried_metric_name(written, &format!("{path}.name"), notes);
        let window = m
            .get("interval")
            .map(|w| match w {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| DEFAULT_WINDOW.to_string());
        let range = m.get("thresholdRange").map(|r| ThresholdRange {
            min: r.get("min").and_then(Value::as_f64),
            max: r.get("max").and_then(Value::as_f64),
        });
        let source = if let Some(reference) = m.get("templateRef") {
            let template_name = reference.get("name").and_then(Value::as_str).unwrap_or("");
            match inputs.metric_template(template_name) {
                Some(metric_template) => {
                    from_metric_template(metric_template, &path, m, context, &mut args, notes)
                }
                None => {
                    notes.push(warning(
                        format!("{path}.templateRef"),
                        format!("MetricTemplate {template_name} is not among the files converted: the Canary refers to AnalysisTemplate {template_name}; convert it with this Canary (`canary convert canary.yaml metric-templates.yaml`) to carry the threshold, or add thresholdRange {} to that template's metric yourself", m.get("thresholdRange").map(Value::to_string).unwrap_or_default()),
                    ));
                    external.push(template_name.to_string());
                    None
                }
            }
        } else if let Some(query) = m.get("query").and_then(Value::as_str) {
            let wrapped = json!({
                "apiVersion": super::FLAGGER_API_VERSION, "kind": "MetricTemplate",
                "metadata": {"name": name},
                "spec": {"provider": {"type": "prometheus"}, "query": query},
            });
            from_metric_template(&wrapped, &path, m, context, &mut args, notes)
        } else {
            builtin(&name, &path, m, range.as_ref(), context, &mut args, notes)
        };
        let Some(mut metric) = source else { continue };
        metric.name = name.clone();
        metric.interval = Some(context.interval);
        metric.count = context.count.and_then(|c| u32::try_from(c).ok());
        metric.failure_limit = Some(limit);
        metric.inconclusive_limit = Some(limit);
        // Flagger measures every `interval` over a window of the metric's own interval.
        for written in ["{{interval}}", "{{ interval }}"] {
            metric.provider.prometheus.query =
                metric.provider.prometheus.query.replace(written, &window);
        }
        if metric.threshold_range.is_none() {
            match (range, m.get("threshold").and_then(Value::as_f64)) {
                (Some(range), _) => metric.threshold_range = Some(range),
                (None, Some(_)) => notes.push(error(
                    format!("{path}.threshold"),
                    "the deprecated metric threshold is carried for the built-in metrics only: write thresholdRange",
                )),
                (None, None) => notes.push(error(
                    format!("{path}.thresholdRange"),
                    "a metric needs thresholdRange (min and/or max)",
                )),
            }
        }
        metrics.push(metric);
    }
    if metrics.is_empty() {
        return (None, external);
    }
    let template = AnalysisTemplate::new(
        &analysis_template_name(flagger),
        crate::api::analysis_template::AnalysisTemplateSpec { args, metrics },
    );
    let mut value = serde_json::to_value(&template).unwrap_or_default();
    if let Some(ns) = context.namespace {
        value["metadata"]["namespace"] = json!(ns);
    }
    (Some(value), external)
}

/// `request-success-rate` and `request-duration`, measured by our template for the system.
fn builtin(
    name: &str,
    path: &str,
    m: &Value,
    range: Option<&ThresholdRange>,
    context: &FlaggerContext,
    args: &mut Vec<Argument>,
    notes: &mut Vec<Note>,
) -> Option<Metric> {
    let (ours, legacy_is_min) = match name {
        "request-success-rate" => ("success-rate", true),
        "request-duration" => ("latency-p99", false),
        other => {
            notes.push(error(
                path,
                format!("{other} is not a Flagger built-in metric and names no templateRef: write its query as a MetricTemplate and refer to it"),
            ));
            return None;
        }
    };
    let Some(source) = builtin_for(context.provider) else {
        notes.push(error(
            path,
            format!("no ready-made template measures {name} for provider {}: write the query as a Flagger MetricTemplate (templateRef) and convert it with this Canary", context.provider),
        ));
        return None;
    };
    let template: AnalysisTemplate = serde_saphyr::from_str(source.text).ok()?;
    let mut metric = template
        .spec
        .metrics
        .iter()
        .find(|m| m.name == ours)?
        .clone();
    metric.success_condition = None;
    metric.failure_condition = None;
    // Flagger's success rate is a percentage and its duration milliseconds; ours are a ratio
    // and the unit of the system's metric.
    let scale = match (ours, source.latency_in_seconds) {
        ("success-rate", _) => 100.0,
        (_, true) => 1000.0,
        (_, false) => 1.0,
    };
    let legacy = m.get("threshold").and_then(Value::as_f64).map(|t| {
        if legacy_is_min {
            ThresholdRange {
                min: Some(t),
                max: None,
            }
        } else {
            ThresholdRange {
                min: None,
                max: Some(t),
            }
        }
    });
    let Some(range) = range.cloned().or(legacy) else {
        notes.push(error(
            format!("{path}.thresholdRange"),
            "a metric needs thresholdRange (min and/or max)",
        ));
        return None;
    };
    let scaled = ThresholdRange {
        min: range.min.map(|v| v / scale),
        max: range.max.map(|v| v / scale),
    };
    notes.push(warning(
        path,
        format!(
            "{name}: measured by the {ours} query of analysis-templates/{} ({}), thresholdRange {} → {}",
            source.file,
            if scale == 100.0 { "a ratio 0..1, not a percentage" } else if scale == 1000.0 { "in seconds, not milliseconds" } else { "in milliseconds" },
            range_text(&range),
            range_text(&scaled),
        ),
    ));
    let said = "Flagger read http_request_duration_seconds";
    if source.file == "generic-http.yaml" && !notes.iter().any(|n| n.message.starts_with(said)) {
        notes.push(warning(
            "spec.provider",
            "Flagger read http_request_duration_seconds by kubernetes_pod_name; generic-http reads http_requests_total and http_request_duration_seconds by the label of its argument pod_label (default pod): set the argument if your scrape names it kubernetes_pod_name",
        ));
    }
    metric.threshold_range = Some(scaled);
    for arg in &template.spec.args {
        let mut arg = arg.clone();
        if arg.name == "ingress" {
            arg.value = context.ingress.map(str::to_string);
        }
        add_arg(args, arg, path, notes);
    }
    Some(metric)
}

fn range_text(range: &ThresholdRange) -> String {
    let part = |label: &str, v: Option<f64>| v.map(|v| format!("{label}: {v}"));
    let parts: Vec<String> = [part("min", range.min), part("max", range.max)]
        .into_iter()
        .flatten()
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// A MetricTemplate's query as a metric of the Canary's template: its arguments get the
/// values Flagger gave them from this Canary (`name`, `service`, `ingress`, templateVariables).
fn from_metric_template(
    metric_template: &Value,
    path: &str,
    m: &Value,
    context: &FlaggerContext,
    args: &mut Vec<Argument>,
    notes: &mut Vec<Note>,
) -> Option<Metric> {
    let document = read_document(0, metric_template.clone());
    let template = match document.outcome {
        Ok(t) => t,
        Err(errors) => {
            notes.extend(errors.into_iter().map(|n| Note {
                field: format!("{path}.templateRef ({})", n.field),
                ..n
            }));
            return None;
        }
    };
    for note in &template.notes {
        // The threshold note is answered here: the Canary's thresholdRange goes in.
        if note.field == "spec" && note.severity == Severity::Warning {
            continue;
        }
        notes.push(Note {
            field: format!("{path} ({})", note.field),
            ..note.clone()
        });
    }
    if template.has_errors() {
        return None;
    }
    let variables: BTreeMap<String, String> = m
        .get("templateVariables")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string()),
            )
        })
        .collect();
    for arg in &template.spec.args {
        let value = match arg.name.as_str() {
            "name" => Some(context.canary.to_string()),
            "service" => Some(context.service.to_string()),
            "ingress" => context.ingress.map(str::to_string),
            "route" => Some(context.route.to_string()),
            other => variables.get(other).cloned(),
        };
        if value.is_none() {
            notes.push(error(
                format!("{path}.templateVariables"),
                format!(
                    "the query uses {} but the Canary gives it no value",
                    arg.name
                ),
            ));
        }
        add_arg(
            args,
            Argument {
                name: arg.name.clone(),
                value,
                value_from: None,
            },
            path,
            notes,
        );
    }
    template.spec.metrics.into_iter().next()
}

fn add_arg(args: &mut Vec<Argument>, arg: Argument, path: &str, notes: &mut Vec<Note>) {
    match args.iter().find(|a| a.name == arg.name) {
        None => args.push(arg),
        Some(existing) if existing.value == arg.value => {}
        Some(existing) => notes.push(error(
            path,
            format!(
                "argument {} is {:?} for another metric and {:?} here: one template cannot hold both; rename the variable in one MetricTemplate",
                arg.name, existing.value, arg.value
            ),
        )),
    }
}
