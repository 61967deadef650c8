//! An Argo Rollouts `Rollout` as a `Deployment` (its pod template, selector and replicas) and
//! a `Canary` (its strategy).

use serde_json::{Map, Value, json};

use super::{
    Inputs, check_converted_canary, duration, first_container_port, metadata_of, not_carried,
    progress_deadline, spec_and_name, whole_number,
};
use crate::analysis::import::{Note, error, warning};
use crate::api::API_VERSION;

const ROLLOUT_REASONS: &[(&str, &str)] = &[
    (
        "paused",
        "a Canary is not paused from its manifest; `canary pause` holds a rollout, `spec.suspend` starts none",
    ),
    (
        "progressDeadlineAbort",
        "a canary that misses its progress deadline is always rolled back",
    ),
    (
        "restartAt",
        "no restarts: `kubectl rollout restart` the managed Deployments",
    ),
    (
        "rollbackWindow",
        "a rollback always rolls out the stable version again",
    ),
    (
        "analysis",
        "analysis-run history is kept in the Canary's status, latest measurements only",
    ),
];

/// Converts a Rollout; returns the objects to print and the notes.
pub(crate) fn convert_rollout(rollout: &Value, inputs: &Inputs) -> (Vec<Value>, Vec<Note>) {
    let mut notes = Vec::new();
    let (spec, name) = spec_and_name(rollout);
    not_carried(
        &spec,
        "spec",
        &[
            "replicas",
            "selector",
            "template",
            "workloadRef",
            "strategy",
            "minReadySeconds",
            "revisionHistoryLimit",
            "progressDeadlineSeconds",
        ],
        ROLLOUT_REASONS,
        &mut notes,
    );
    let mut objects = Vec::new();
    // The Deployment: the Rollout's own, or the one its workloadRef names.
    let (target, pod_template, template_from) = match spec.get("workloadRef") {
        Some(reference) => {
            let kind = reference.get("kind").and_then(Value::as_str).unwrap_or("");
            let target = reference
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if kind != "Deployment" {
                notes.push(error(
                    "spec.workloadRef.kind",
                    format!("{kind:?}: a Canary targets a Deployment only"),
                ));
            }
            if spec.get("template").is_some() {
                notes.push(warning(
                    "spec.template",
                    "not carried: the Rollout has a workloadRef, whose Deployment holds the pod template",
                ));
            }
            let deployment = inputs.deployment(&target);
            let replicas_note = match spec.get("replicas") {
                Some(replicas) => format!(
                    "Argo ran {replicas} replicas from the Rollout and asked for the Deployment at 0; set Deployment {target}'s spec.replicas to {replicas} before applying the Canary (the controller sizes the versions from it)"
                ),
                None => format!(
                    "set Deployment {target}'s spec.replicas to the size the Rollout ran (Argo asked for 0 there); the controller sizes the versions from it"
                ),
            };
            notes.push(warning("spec.workloadRef", replicas_note));
            if let Some(mode) = reference.get("scaleDown").and_then(Value::as_str) {
                notes.push(warning(
                    "spec.workloadRef.scaleDown",
                    format!(
                        "not carried ({mode}): the controller keeps the Deployment at zero replicas while it manages it"
                    ),
                ));
            }
            (
                target,
                deployment
                    .and_then(|d| d.pointer("/spec/template"))
                    .cloned(),
                format!(
                    "Deployment {}",
                    reference.get("name").and_then(Value::as_str).unwrap_or("")
                ),
            )
        }
        None => {
            let mut deployment_spec = Map::new();
            for key in [
                "replicas",
                "selector",
                "template",
                "minReadySeconds",
                "revisionHistoryLimit",
            ] {
                if let Some(v) = spec.get(key) {
                    deployment_spec.insert(key.into(), v.clone());
                }
            }
            if spec.get("selector").is_none() || spec.get("template").is_none() {
                notes.push(error(
                    "spec",
                    "a Rollout without workloadRef needs selector and template",
                ));
            }
            objects.push(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": metadata_of(rollout, true),
                "spec": deployment_spec,
            }));
            (
                name.clone(),
                spec.get("template").cloned(),
                "spec.template".to_string(),
            )
        }
    };
    let port = first_container_port(pod_template.as_ref(), &template_from, &mut notes);

    let mut canary_spec = Map::new();
    canary_spec.insert("targetRef".into(), json!({"name": target}));
    canary_spec.insert("service".into(), json!({"port": port.unwrap_or(80)}));
    if let Some(deadline) = spec.get("progressDeadlineSeconds")
        && let Some(seconds) = progress_deadline(deadline, &mut notes)
    {
        canary_spec.insert("progressDeadlineSeconds".into(), json!(seconds));
    }
    let strategy = spec.get("strategy").cloned().unwrap_or(Value::Null);
    let rollout_meta = rollout.get("metadata").cloned().unwrap_or(Value::Null);
    match (strategy.get("canary"), strategy.get("blueGreen")) {
        (Some(canary), None) => {
            canary_strategy(canary, &rollout_meta, inputs, &mut canary_spec, &mut notes)
        }
        (None, Some(blue_green)) => blue_green_strategy(
            blue_green,
            &rollout_meta,
            inputs,
            &mut canary_spec,
            &mut notes,
        ),
        _ => notes.push(error(
            "spec.strategy",
            "a Rollout has exactly one of strategy.canary and strategy.blueGreen",
        )),
    }
    let canary = json!({
        "apiVersion": API_VERSION,
        "kind": "Canary",
        "metadata": metadata_of(rollout, false),
        "spec": canary_spec,
    });
    notes.extend(check_converted_canary(&canary));
    objects.push(canary);
    (objects, notes)
}

const CANARY_REASONS: &[(&str, &str)] = &[
    (
        "maxSurge",
        "the managed Deployments are sized from the weight, not surged",
    ),
    (
        "maxUnavailable",
        "the managed Deployments are sized from the weight",
    ),
    (
        "antiAffinity",
        "put affinity rules in the Deployment's pod template",
    ),
    (
        "canaryMetadata",
        "the canary's pods are labelled canary.dev/subset: canary",
    ),
    (
        "stableMetadata",
        "the stable pods are labelled canary.dev/subset: stable",
    ),
    (
        "dynamicStableScale",
        "stable keeps its size until promotion",
    ),
    (
        "scaleDownDelayRevisionLimit",
        "only the current canary is kept running",
    ),
    (
        "abortScaleDownDelaySeconds",
        "an abort takes the canary's traffic at once; its pods follow scaleDownDelaySeconds",
    ),
    (
        "pingPong",
        "the stable and canary Deployments keep their roles",
    ),
    (
        "minPodsPerReplicaSet",
        "each version keeps at least one pod while both have traffic",
    ),
    (
        "replicaProgressThreshold",
        "a step waits for every pod of its weight to be ready",
    ),
    (
        "canaryService",
        "no separate Services per version: the Istio router splits by DestinationRule subsets, the replica split behind your one Service",
    ),
    (
        "stableService",
        "no separate Services per version: the Istio router splits by DestinationRule subsets, the replica split behind your one Service",
    ),
];

fn canary_strategy(
    canary: &Value,
    rollout_meta: &Value,
    inputs: &Inputs,
    spec: &mut Map<String, Value>,
    notes: &mut Vec<Note>,
) {
    let path = "spec.strategy.canary";
    let routing = canary.get("trafficRouting");
    let gateway_plugin = routing
        .and_then(|r| r.pointer("/plugins/argoproj-labs~1gatewayAPI"))
        .is_some();
    let mut handled = vec![
        "steps",
        "analysis",
        "trafficRouting",
        "scaleDownDelaySeconds",
    ];
    if gateway_plugin {
        handled.extend(["canaryService", "stableService"]);
    }
    not_carried(canary, path, &handled, CANARY_REASONS, notes);
    if let Some(routing) = routing
        && let Some(router) =
            traffic_routing(routing, canary, &format!("{path}.trafficRouting"), notes)
    {
        spec.insert("trafficRouting".into(), router);
    }
    if let Some(delay) = canary.get("scaleDownDelaySeconds")
        && let Some(seconds) =
            whole_number(delay, &format!("{path}.scaleDownDelaySeconds"), 3600, notes)
    {
        spec.insert("scaleDownDelaySeconds".into(), json!(seconds));
    }

    // Steps, and where each Argo step landed (steps not carried shift the rest).
    let mut steps = Vec::new();
    let mut position = Vec::new();
    let argo_steps = canary
        .get("steps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, argo_step) in argo_steps.iter().enumerate() {
        position.push(steps.len());
        if let Some(converted) = step(
            argo_step,
            &format!("{path}.steps[{i}]"),
            rollout_meta,
            inputs,
            notes,
        ) {
            steps.push(converted);
        }
    }
    let weights: Vec<u64> = steps
        .iter()
        .filter_map(|s| s.get("setWeight").and_then(Value::as_u64))
        .collect();
    if weights.windows(2).any(|w| w[1] < w[0]) {
        notes.push(error(
            format!("{path}.steps"),
            "setWeight goes down: a canary's weight only rises until promotion (abort or roll back instead)",
        ));
    }
    if steps.is_empty() {
        notes.push(warning(
            format!("{path}.steps"),
            "no steps: Argo promotes as soon as the new version is ready; the Canary gets one step, setWeight: 100",
        ));
        steps.push(json!({"setWeight": 100}));
    }
    spec.insert("steps".into(), Value::Array(steps));

    if let Some(background) = canary.get("analysis") {
        let analysis_path = format!("{path}.analysis");
        let mut converted = analysis(
            background,
            &analysis_path,
            rollout_meta,
            inputs,
            notes,
            &["startingStep"],
        );
        if let Some(start) = background.get("startingStep")
            && let Some(index) =
                whole_number(start, &format!("{analysis_path}.startingStep"), 1000, notes)
        {
            let ours = position
                .get(index as usize)
                .copied()
                .unwrap_or(position.len());
            if ours != index as usize {
                notes.push(warning(
                    format!("{analysis_path}.startingStep"),
                    format!("{index} became {ours}: steps before it were not carried"),
                ));
            }
            converted.insert("startingStep".into(), json!(ours));
        }
        spec.insert("analysis".into(), Value::Object(converted));
    }
}

fn step(
    argo_step: &Value,
    path: &str,
    rollout_meta: &Value,
    inputs: &Inputs,
    notes: &mut Vec<Note>,
) -> Option<Value> {
    let Some((kind, body)) = argo_step.as_object().and_then(|o| o.iter().next()) else {
        notes.push(error(path, "an empty step"));
        return None;
    };
    let path = format!("{path}.{kind}");
    match kind.as_str() {
        "setWeight" => {
            whole_number(body, &path, 100, notes).map(|weight| json!({"setWeight": weight}))
        }
        "pause" => {
            let mut pause = Map::new();
            if let Some(d) = body.get("duration")
                && let Some(d) = duration(d, &format!("{path}.duration"), notes)
            {
                pause.insert("duration".into(), json!(d.to_string()));
            }
            Some(json!({"pause": pause}))
        }
        "analysis" => {
            Some(json!({"analysis": analysis(body, &path, rollout_meta, inputs, notes, &[])}))
        }
        "setHeaderRoute" => {
            let name = body.get("name").and_then(Value::as_str).unwrap_or("");
            let matches: Vec<Value> = body
                .get("match")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, m)| {
                    let header = m.get("headerName")?.clone();
                    let value = m.get("headerValue")?.as_object()?;
                    let kept: Map<String, Value> = value
                        .iter()
                        .filter(|(k, _)| ["exact", "prefix", "regex"].contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if kept.len() != value.len() {
                        notes.push(error(
                            format!("{path}.match[{i}].headerValue"),
                            "only exact, prefix and regex header matches are carried",
                        ));
                    }
                    Some(json!({"headerName": header, "headerValue": kept}))
                })
                .collect();
            let mut route = json!({"name": name});
            if !matches.is_empty() {
                route["match"] = Value::Array(matches);
            }
            Some(json!({"setHeaderRoute": route}))
        }
        "experiment" => {
            notes.push(warning(
                path,
                "not carried: experiments (extra ReplicaSets judged side by side) have no counterpart; the step is left out. A `compare` metric judges canary against stable instead",
            ));
            None
        }
        "setCanaryScale" => {
            notes.push(warning(
                path,
                "not carried: the canary's pods follow its weight; the step is left out",
            ));
            None
        }
        "setMirrorRoute" => {
            notes.push(warning(
                path,
                "not carried: traffic mirroring has no counterpart; the step is left out",
            ));
            None
        }
        other => {
            notes.push(warning(
                path,
                format!("not carried: a {other} step has no counterpart; the step is left out"),
            ));
            None
        }
    }
}

/// An Argo `RolloutAnalysis` (templates and args) as ours; `extra` fields are the caller's.
fn analysis(
    argo: &Value,
    path: &str,
    rollout_meta: &Value,
    inputs: &Inputs,
    notes: &mut Vec<Note>,
    extra: &[&str],
) -> Map<String, Value> {
    let mut handled = vec!["templates", "args"];
    handled.extend(extra);
    not_carried(
        argo,
        path,
        &handled,
        &[
            (
                "dryRun",
                "mark the metric dryRun: true in the template instead",
            ),
            (
                "measurementRetention",
                "status keeps each metric's latest measurements",
            ),
            (
                "analysisRunMetadata",
                "analysis runs are not objects here (they live in the Canary's status)",
            ),
        ],
        notes,
    );
    let mut templates = Vec::new();
    for (i, t) in argo
        .get("templates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(name) = t.get("templateName").and_then(Value::as_str) else {
            notes.push(error(
                format!("{path}.templates[{i}].templateName"),
                "a template reference needs templateName",
            ));
            continue;
        };
        let cluster_scope = t
            .get("clusterScope")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !inputs.has_template(name, cluster_scope) {
            let kind = if cluster_scope {
                "ClusterAnalysisTemplate"
            } else {
                "AnalysisTemplate"
            };
            notes.push(warning(
                format!("{path}.templates[{i}]"),
                format!("{kind} {name} is not among the files converted: convert it too (`canary convert` reads Argo templates) and apply it"),
            ));
        }
        let mut reference = json!({"templateName": name});
        if cluster_scope {
            reference["clusterScope"] = json!(true);
        }
        templates.push(reference);
    }
    if templates.is_empty() {
        notes.push(error(
            format!("{path}.templates"),
            "an analysis needs at least one template",
        ));
    }
    let mut args = Vec::new();
    for (i, arg) in argo
        .get("args")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let arg_path = format!("{path}.args[{i}]");
        let name = arg.get("name").and_then(Value::as_str).unwrap_or("");
        let value = match (arg.get("value"), arg.get("valueFrom")) {
            (Some(value), _) => Some(match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            (None, Some(from)) => value_from(
                from,
                name,
                &format!("{arg_path}.valueFrom"),
                rollout_meta,
                notes,
            ),
            (None, None) => {
                notes.push(error(
                    arg_path.clone(),
                    format!("argument {name} has neither value nor valueFrom"),
                ));
                None
            }
        };
        if let Some(value) = value {
            args.push(json!({"name": name, "value": value}));
        }
    }
    let mut converted = Map::new();
    converted.insert("templates".into(), Value::Array(templates));
    if !args.is_empty() {
        converted.insert("args".into(), Value::Array(args));
    }
    converted
}

/// `valueFrom` of an analysis argument: a `fieldRef` into the Rollout's own metadata is read
/// here, once; anything else cannot be carried (the argument is left out).
fn value_from(
    from: &Value,
    name: &str,
    path: &str,
    rollout_meta: &Value,
    notes: &mut Vec<Note>,
) -> Option<String> {
    if let Some(field_path) = from.pointer("/fieldRef/fieldPath").and_then(Value::as_str) {
        let resolved = match field_path {
            "metadata.name" => rollout_meta.get("name").and_then(Value::as_str),
            "metadata.namespace" => rollout_meta.get("namespace").and_then(Value::as_str),
            other => ["labels", "annotations"].iter().find_map(|map| {
                let key = other
                    .strip_prefix(&format!("metadata.{map}['"))?
                    .strip_suffix("']")?;
                rollout_meta.get(*map)?.get(key)?.as_str()
            }),
        };
        return match resolved {
            Some(value) => {
                notes.push(warning(
                    path,
                    format!("fieldRef {field_path} of the Rollout was read once: argument {name} is {value:?}"),
                ));
                Some(value.to_string())
            }
            None => {
                notes.push(error(
                    path,
                    format!("fieldRef {field_path} cannot be read from the Rollout's manifest: give argument {name} a value"),
                ));
                None
            }
        };
    }
    if let Some(which) = from.get("podTemplateHashValue").and_then(Value::as_str) {
        notes.push(error(
            path,
            format!(
                "not carried: podTemplateHashValue ({which}): the versions run in Deployments named <target>-stable and <target>-canary; select them with the context values {{{{stable}}}} and {{{{workload}}}} in the template's query instead of argument {name}"
            ),
        ));
        return None;
    }
    notes.push(error(
        path,
        format!("not carried: give argument {name} a value"),
    ));
    None
}

fn traffic_routing(
    routing: &Value,
    canary: &Value,
    path: &str,
    notes: &mut Vec<Note>,
) -> Option<Value> {
    let plugin = routing.pointer("/plugins/argoproj-labs~1gatewayAPI");
    let mut handled = vec!["istio", "managedRoutes"];
    if plugin.is_some() {
        handled.push("plugins");
    }
    for key in routing.as_object().into_iter().flat_map(|o| o.keys()) {
        if !handled.contains(&key.as_str()) {
            notes.push(error(
                format!("{path}.{key}"),
                format!("no {key} router: canary routes with Istio (VirtualService and DestinationRule subsets), the Gateway API (HTTPRoute backendRefs) or by replicas (leave trafficRouting out); choose one and write its trafficRouting"),
            ));
        }
    }
    if routing.get("managedRoutes").is_some() {
        notes.push(warning(
            format!("{path}.managedRoutes"),
            "not needed: header routes of setHeaderRoute steps are added and removed by the controller (Istio: routes named canary-header-<name>)",
        ));
    }
    if let Some(istio) = routing.get("istio") {
        let istio_path = format!("{path}.istio");
        let virtual_service = match (istio.get("virtualService"), istio.get("virtualServices")) {
            (Some(vs), _) => Some(vs.clone()),
            (None, Some(Value::Array(list))) if list.len() == 1 => Some(list[0].clone()),
            (None, Some(_)) => {
                notes.push(error(
                    format!("{istio_path}.virtualServices"),
                    "a Canary manages one VirtualService: merge the routes into one, or make one Canary per VirtualService",
                ));
                istio.pointer("/virtualServices/0").cloned()
            }
            (None, None) => None,
        };
        let Some(destination_rule) = istio.get("destinationRule") else {
            notes.push(error(
                istio_path,
                "host-level splitting (canaryService/stableService without a destinationRule) is not supported: add a DestinationRule with a stable and a canary subset and name it in destinationRule",
            ));
            return None;
        };
        let mut vs = json!({
            "name": virtual_service.as_ref().and_then(|v| v.get("name")).cloned().unwrap_or(json!("")),
        });
        let routes: Vec<Value> = virtual_service
            .as_ref()
            .and_then(|v| v.get("routes"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !routes.is_empty() {
            vs["routes"] = Value::Array(routes);
        }
        if virtual_service
            .as_ref()
            .and_then(|v| v.get("tlsRoutes").or(v.get("tcpRoutes")))
            .is_some()
        {
            notes.push(error(
                format!("{istio_path}.virtualService"),
                "TLS and TCP routes are not carried: the Istio router sets the weights of HTTP routes",
            ));
        }
        let mut dr = json!({"name": destination_rule.get("name").cloned().unwrap_or(json!(""))});
        for key in ["stableSubsetName", "canarySubsetName"] {
            if let Some(v) = destination_rule.get(key) {
                dr[key] = v.clone();
            }
        }
        return Some(json!({"istio": {"virtualService": vs, "destinationRule": dr}}));
    }
    if let Some(plugin) = plugin {
        let plugin_path = format!("{path}.plugins.argoproj-labs/gatewayAPI");
        not_carried(
            plugin,
            &plugin_path,
            &[
                "httpRoute",
                "httpRoutes",
                "grpcRoute",
                "grpcRoutes",
                "namespace",
            ],
            &[],
            notes,
        );
        let mut gateway = Map::new();
        let names = |single: &str, many: &str| -> Vec<Value> {
            plugin
                .get(single)
                .map(|n| vec![n.clone()])
                .unwrap_or_default()
                .into_iter()
                .chain(
                    plugin
                        .get(many)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.get("name").cloned()),
                )
                .collect()
        };
        let http = names("httpRoute", "httpRoutes");
        let grpc = names("grpcRoute", "grpcRoutes");
        if !http.is_empty() {
            gateway.insert("httpRoutes".into(), Value::Array(http));
        }
        if !grpc.is_empty() {
            gateway.insert("grpcRoutes".into(), Value::Array(grpc));
        }
        for (argo, ours) in [
            ("stableService", "stableService"),
            ("canaryService", "canaryService"),
        ] {
            match canary.get(argo) {
                Some(name) => {
                    gateway.insert(ours.into(), name.clone());
                }
                None => notes.push(error(
                    format!("spec.strategy.canary.{argo}"),
                    "the Gateway API router needs the stable and the canary Service",
                )),
            }
        }
        return Some(json!({"gatewayAPI": gateway}));
    }
    None
}

const BLUE_GREEN_REASONS: &[(&str, &str)] = &[
    (
        "antiAffinity",
        "put affinity rules in the Deployment's pod template",
    ),
    (
        "previewMetadata",
        "the preview pods are labelled by the controller",
    ),
    (
        "activeMetadata",
        "the active pods are labelled by the controller",
    ),
    (
        "scaleDownDelayRevisionLimit",
        "only the previous version is kept running, for scaleDownDelaySeconds",
    ),
    (
        "abortScaleDownDelaySeconds",
        "an abort switches back at once; the preview's pods follow scaleDownDelaySeconds",
    ),
    ("maxUnavailable", "the new version comes up at full size"),
];

fn blue_green_strategy(
    blue_green: &Value,
    rollout_meta: &Value,
    inputs: &Inputs,
    spec: &mut Map<String, Value>,
    notes: &mut Vec<Note>,
) {
    let path = "spec.strategy.blueGreen";
    not_carried(
        blue_green,
        path,
        &[
            "activeService",
            "previewService",
            "autoPromotionEnabled",
            "autoPromotionSeconds",
            "previewReplicaCount",
            "prePromotionAnalysis",
            "postPromotionAnalysis",
            "scaleDownDelaySeconds",
        ],
        BLUE_GREEN_REASONS,
        notes,
    );
    let mut converted = Map::new();
    match blue_green.get("activeService").and_then(Value::as_str) {
        Some(active) => {
            converted.insert("activeService".into(), json!(active));
        }
        None => notes.push(error(
            format!("{path}.activeService"),
            "a blue-green Rollout needs activeService",
        )),
    }
    if let Some(preview) = blue_green.get("previewService").and_then(Value::as_str) {
        converted.insert("previewService".into(), json!(preview));
    }
    if let Some(auto) = blue_green.get("autoPromotionEnabled") {
        converted.insert(
            "autoPromotionEnabled".into(),
            json!(auto.as_bool().unwrap_or(true)),
        );
    }
    for key in ["autoPromotionSeconds", "previewReplicaCount"] {
        if let Some(v) = blue_green.get(key)
            && let Some(n) = whole_number(v, &format!("{path}.{key}"), 86400, notes)
        {
            converted.insert(key.into(), json!(n));
        }
    }
    for key in ["prePromotionAnalysis", "postPromotionAnalysis"] {
        if let Some(a) = blue_green.get(key) {
            let analysis = analysis(
                a,
                &format!("{path}.{key}"),
                rollout_meta,
                inputs,
                notes,
                &[],
            );
            converted.insert(key.into(), Value::Object(analysis));
        }
    }
    if let Some(delay) = blue_green.get("scaleDownDelaySeconds")
        && let Some(seconds) =
            whole_number(delay, &format!("{path}.scaleDownDelaySeconds"), 3600, notes)
    {
        spec.insert("scaleDownDelaySeconds".into(), json!(seconds));
    }
    spec.insert("strategy".into(), json!({"blueGreen": converted}));
}
