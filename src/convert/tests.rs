//! Conversions of real manifests (Argo Rollouts' examples, Flagger's tutorials, the design's
//! seed) and of the cases those do not show: what each becomes, and what each note says.

use serde_json::{Value, json};

use super::*;

fn fixture(path: &str) -> Input {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    Input {
        file: path.to_string(),
        text: std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}")),
    }
}

fn inline(text: &str) -> Input {
    Input {
        file: "inline.yaml".into(),
        text: text.to_string(),
    }
}

fn object<'a>(conversion: &'a Conversion, kind: &str, name: &str) -> &'a Value {
    conversion
        .objects()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} {name} in {}",
                conversion.yaml().unwrap_or_default()
            )
        })
}

fn notes(conversion: &Conversion) -> Vec<&Note> {
    conversion.documents.iter().flat_map(|d| &d.notes).collect()
}

struct Case {
    name: &'static str,
    inputs: Vec<Input>,
    /// The Canary printed, and values at JSON pointers of it.
    canary: &'static str,
    expect: Vec<(&'static str, Value)>,
    /// Pointers the Canary must not have.
    absent: &'static [&'static str],
    /// Objects printed, as `Kind name`, in order.
    printed: &'static [&'static str],
    /// Notes that must be there: severity, field, part of the message.
    said: &'static [(Severity, &'static str, &'static str)],
    /// Whether the conversion has errors.
    errors: bool,
}

const W: Severity = Severity::Warning;
const E: Severity = Severity::Error;

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "the seed's blue-green Rollout",
            inputs: vec![fixture(
                "tests/fixtures/convert/seed-bluegreen-rollout.yaml",
            )],
            canary: "api-server",
            expect: vec![
                ("/spec/targetRef/name", json!("api-server")),
                ("/spec/service/port", json!(3000)),
                ("/spec/scaleDownDelaySeconds", json!(30)),
                (
                    "/spec/strategy/blueGreen",
                    json!({
                        "activeService": "api-server-active",
                        "previewService": "api-server-preview",
                        "autoPromotionEnabled": false,
                        "prePromotionAnalysis": {
                            "templates": [{"templateName": "success-rate"}],
                            "args": [{"name": "service-name", "value": "api-server-preview"}],
                        },
                        "postPromotionAnalysis": {
                            "templates": [{"templateName": "success-rate"}],
                            "args": [{"name": "service-name", "value": "api-server-active"}],
                        },
                    }),
                ),
            ],
            absent: &["/spec/steps", "/spec/analysis", "/spec/trafficRouting"],
            printed: &[
                "Deployment api-server",
                "Canary api-server",
                "AnalysisTemplate success-rate",
            ],
            said: &[(
                W,
                "spec.service.port",
                "first containerPort of container api-server",
            )],
            errors: false,
        },
        Case {
            name: "Argo: canary over Istio subsets",
            inputs: vec![fixture(
                "tests/fixtures/convert/argo/istio-subset-split.yaml",
            )],
            canary: "istio-subset-split",
            expect: vec![
                (
                    "/spec/trafficRouting/istio",
                    json!({
                        "virtualService": {"name": "istio-subset-split-vsvc", "routes": ["primary"]},
                        "destinationRule": {"name": "istio-subset-split-destrule", "stableSubsetName": "stable", "canarySubsetName": "canary"},
                    }),
                ),
                ("/spec/steps", json!([{"setWeight": 10}, {"pause": {}}])),
                ("/spec/service/port", json!(80)),
            ],
            absent: &["/spec/strategy"],
            printed: &[
                "Service istio-subset-split",
                "VirtualService istio-subset-split-vsvc",
                "DestinationRule istio-subset-split-destrule",
                "Deployment istio-subset-split",
                "Canary istio-subset-split",
            ],
            said: &[],
            errors: false,
        },
        Case {
            name: "Argo: basic canary, split by replicas",
            inputs: vec![fixture("tests/fixtures/convert/argo/rollout-canary.yaml")],
            canary: "rollout-canary",
            expect: vec![
                (
                    "/spec/steps",
                    json!([
                        {"setWeight": 20}, {"pause": {}},
                        {"setWeight": 40}, {"pause": {"duration": "40s"}},
                        {"setWeight": 60}, {"pause": {"duration": "20s"}},
                        {"setWeight": 80}, {"pause": {"duration": "20s"}},
                    ]),
                ),
                ("/spec/service/port", json!(8080)),
            ],
            absent: &["/spec/trafficRouting"],
            printed: &["Deployment rollout-canary", "Canary rollout-canary"],
            said: &[],
            errors: false,
        },
        Case {
            name: "Argo: background analysis, template not among the files",
            inputs: vec![fixture(
                "tests/fixtures/convert/argo/rollout-background-analysis.yaml",
            )],
            canary: "rollout-background-analysis",
            expect: vec![(
                "/spec/analysis",
                json!({"templates": [{"templateName": "random-fail"}]}),
            )],
            absent: &[],
            printed: &[
                "Deployment rollout-background-analysis",
                "Canary rollout-background-analysis",
            ],
            said: &[(
                W,
                "spec.strategy.canary.analysis.templates[0]",
                "AnalysisTemplate random-fail is not among the files",
            )],
            errors: false,
        },
        Case {
            name: "Argo: an analysis step with a cluster-scoped template",
            inputs: vec![fixture(
                "tests/fixtures/convert/argo/rollout-analysis-step.yaml",
            )],
            canary: "rollout-analysis-step",
            expect: vec![(
                "/spec/steps/1/analysis/templates",
                json!([{"templateName": "random-fail"}, {"templateName": "always-pass", "clusterScope": true}]),
            )],
            absent: &[],
            printed: &[
                "Deployment rollout-analysis-step",
                "Canary rollout-analysis-step",
            ],
            said: &[(
                W,
                "spec.strategy.canary.steps[1].analysis.templates[1]",
                "ClusterAnalysisTemplate always-pass",
            )],
            errors: false,
        },
        Case {
            name: "Argo: an experiment step is left out and said",
            inputs: vec![fixture(
                "tests/fixtures/convert/argo/rollout-experiment-step.yaml",
            )],
            canary: "rollout-experiment-step",
            expect: vec![("/spec/steps/0", json!({"setWeight": 25}))],
            absent: &["/spec/steps/1/experiment"],
            printed: &[
                "Deployment rollout-experiment-step",
                "Canary rollout-experiment-step",
            ],
            said: &[(
                W,
                "spec.strategy.canary.steps[1].experiment",
                "not carried: experiments",
            )],
            errors: false,
        },
        Case {
            name: "Argo: workloadRef targets the Deployment, which passes through",
            inputs: vec![fixture("tests/fixtures/convert/argo/workload-ref.yaml")],
            canary: "rollout-ref-deployment",
            expect: vec![
                ("/spec/targetRef/name", json!("rollout-ref-deployment")),
                ("/spec/service/port", json!(8080)),
                (
                    "/spec/steps",
                    json!([{"setWeight": 20}, {"pause": {"duration": "10s"}}]),
                ),
            ],
            absent: &[],
            printed: &[
                "Deployment rollout-ref-deployment",
                "Canary rollout-ref-deployment",
            ],
            said: &[(
                W,
                "spec.workloadRef",
                "set Deployment rollout-ref-deployment's spec.replicas to 5",
            )],
            errors: false,
        },
        Case {
            name: "Argo: blue-green example with its Services",
            inputs: vec![fixture(
                "tests/fixtures/convert/argo/rollout-bluegreen.yaml",
            )],
            canary: "rollout-bluegreen",
            expect: vec![(
                "/spec/strategy/blueGreen",
                json!({
                    "activeService": "rollout-bluegreen-active",
                    "previewService": "rollout-bluegreen-preview",
                    "autoPromotionEnabled": false,
                }),
            )],
            absent: &["/spec/scaleDownDelaySeconds"],
            printed: &[
                "Deployment rollout-bluegreen",
                "Canary rollout-bluegreen",
                "Service rollout-bluegreen-active",
                "Service rollout-bluegreen-preview",
            ],
            said: &[],
            errors: false,
        },
        Case {
            name: "Argo: header routes, args from the Rollout, startingStep past a dropped step",
            inputs: vec![inline(ARGO_EVERYTHING)],
            canary: "checkout",
            expect: vec![
                (
                    "/spec/steps",
                    json!([
                        {"setHeaderRoute": {"name": "testers", "match": [{"headerName": "x-canary", "headerValue": {"exact": "yes"}}]}},
                        {"setWeight": 10},
                        {"analysis": {"templates": [{"templateName": "success-rate"}], "args": [{"name": "service", "value": "checkout"}]}},
                        {"setWeight": 50},
                        {"pause": {"duration": "1h"}},
                    ]),
                ),
                ("/spec/analysis/startingStep", json!(3)),
                (
                    "/spec/analysis/args",
                    json!([{"name": "team", "value": "payments"}]),
                ),
                ("/spec/progressDeadlineSeconds", json!(300)),
                ("/spec/scaleDownDelaySeconds", json!(10)),
                (
                    "/spec/trafficRouting/istio/destinationRule",
                    json!({"name": "checkout"}),
                ),
            ],
            absent: &[],
            printed: &[
                "Deployment checkout",
                "Canary checkout",
                "AnalysisTemplate success-rate",
            ],
            said: &[
                (
                    W,
                    "spec.strategy.canary.steps[2].setCanaryScale",
                    "not carried",
                ),
                (
                    W,
                    "spec.strategy.canary.steps[5].setMirrorRoute",
                    "not carried",
                ),
                (
                    W,
                    "spec.strategy.canary.analysis.startingStep",
                    "4 became 3",
                ),
                (
                    W,
                    "spec.strategy.canary.analysis.args[0].valueFrom",
                    "argument team is \"payments\"",
                ),
                (
                    E,
                    "spec.strategy.canary.analysis.args[1].valueFrom",
                    "podTemplateHashValue",
                ),
                (W, "spec.strategy.canary.maxSurge", "not carried"),
                (W, "spec.paused", "not carried"),
                (
                    W,
                    "spec.strategy.canary.trafficRouting.managedRoutes",
                    "not needed",
                ),
            ],
            errors: true,
        },
        Case {
            name: "Argo: a router canary does not have, and a weight that goes down",
            inputs: vec![inline(ARGO_NGINX_DOWN)],
            canary: "web",
            expect: vec![],
            absent: &["/spec/trafficRouting"],
            printed: &["Deployment web", "Canary web"],
            said: &[
                (
                    E,
                    "spec.strategy.canary.trafficRouting.nginx",
                    "no nginx router",
                ),
                (E, "spec.strategy.canary.steps", "setWeight goes down"),
                // Our own validation of the output says the same, as the API server would.
                (E, "(converted Canary) spec.steps", "must not decrease"),
            ],
            errors: true,
        },
        Case {
            name: "Argo: the Gateway API plugin",
            inputs: vec![inline(ARGO_GATEWAY_API)],
            canary: "web",
            expect: vec![(
                "/spec/trafficRouting/gatewayAPI",
                json!({"httpRoutes": ["web-route"], "stableService": "web-stable", "canaryService": "web-canary"}),
            )],
            absent: &[],
            printed: &["Deployment web", "Canary web"],
            said: &[],
            errors: false,
        },
        Case {
            name: "Flagger: Istio canary with built-in metrics and webhooks",
            inputs: vec![fixture(
                "tests/fixtures/convert/flagger/istio-progressive-delivery.yaml",
            )],
            canary: "podinfo",
            expect: vec![
                ("/metadata/namespace", json!("test")),
                ("/spec/stepWeight", json!(10)),
                ("/spec/maxWeight", json!(50)),
                ("/spec/interval", json!("1m")),
                ("/spec/progressDeadlineSeconds", json!(60)),
                ("/spec/service/port", json!(9898)),
                ("/spec/autoscalerRef", json!({"name": "podinfo"})),
                (
                    "/spec/trafficRouting/istio",
                    json!({"virtualService": {"name": "podinfo"}, "destinationRule": {"name": "podinfo"}}),
                ),
                (
                    "/spec/analysis",
                    json!({"templates": [{"templateName": "podinfo-analysis"}]}),
                ),
            ],
            absent: &["/spec/steps"],
            printed: &["Canary podinfo", "AnalysisTemplate podinfo-analysis"],
            said: &[
                (
                    W,
                    "spec.analysis.webhooks[0]",
                    "webhook acceptance-test (type pre-rollout) is not carried",
                ),
                (
                    W,
                    "spec.analysis.webhooks[1]",
                    "webhook load-test (type rollout) is not carried",
                ),
                (
                    W,
                    "spec.provider",
                    "Flagger generated VirtualService podinfo and DestinationRules podinfo-canary and podinfo-primary",
                ),
                (W, "spec.analysis.metrics[0]", "{min: 99} → {min: 0.99}"),
                (W, "spec.service.gateways", "not carried"),
            ],
            errors: false,
        },
        Case {
            name: "Flagger: A/B test with header matches",
            inputs: vec![fixture(
                "tests/fixtures/convert/flagger/istio-ab-testing.yaml",
            )],
            canary: "podinfo",
            expect: vec![
                (
                    "/spec/steps/0/setHeaderRoute",
                    json!({"name": "ab-test-1", "match": [{"headerName": "user-agent", "headerValue": {"regex": ".*Firefox.*"}}]}),
                ),
                ("/spec/steps/1/setHeaderRoute/name", json!("ab-test-2")),
                (
                    "/spec/steps/2/analysis",
                    json!({"templates": [{"templateName": "podinfo-analysis"}]}),
                ),
            ],
            absent: &["/spec/analysis", "/spec/steps/3", "/spec/stepWeight"],
            printed: &["Canary podinfo", "AnalysisTemplate podinfo-analysis"],
            said: &[(
                W,
                "spec.analysis.match",
                "checks the metrics 10 times every 1m",
            )],
            errors: false,
        },
        Case {
            name: "Flagger: blue/green on plain Kubernetes",
            inputs: vec![fixture(
                "tests/fixtures/convert/flagger/kubernetes-blue-green.yaml",
            )],
            canary: "podinfo",
            expect: vec![(
                "/spec/strategy/blueGreen",
                json!({
                    "activeService": "podinfo",
                    "previewService": "podinfo-canary",
                    "prePromotionAnalysis": {"templates": [{"templateName": "podinfo-analysis"}]},
                }),
            )],
            absent: &[
                "/spec/trafficRouting",
                "/spec/analysis",
                "/spec/steps",
                "/spec/stepWeight",
            ],
            printed: &["Canary podinfo", "AnalysisTemplate podinfo-analysis"],
            said: &[
                (W, "spec.analysis.iterations", "blue/green"),
                (W, "spec.analysis.metrics[1]", "{max: 500} → {max: 0.5}"),
            ],
            errors: false,
        },
        Case {
            name: "Flagger: custom metric from a MetricTemplate, stepWeights, Gateway API",
            inputs: vec![inline(FLAGGER_CUSTOM)],
            canary: "web",
            expect: vec![
                (
                    "/spec/steps",
                    json!([
                        {"setWeight": 5}, {"pause": {"duration": "30s"}},
                        {"setWeight": 20}, {"pause": {"duration": "30s"}},
                    ]),
                ),
                (
                    "/spec/trafficRouting/gatewayAPI",
                    json!({"httpRoute": "web", "stableService": "web-primary", "canaryService": "web-canary", "createServices": true}),
                ),
                ("/spec/skipAnalysis", json!(true)),
                (
                    "/spec/analysis/templates",
                    json!([{"templateName": "web-analysis"}, {"templateName": "elsewhere"}]),
                ),
            ],
            absent: &[],
            printed: &["Canary web", "AnalysisTemplate web-analysis"],
            said: &[
                (
                    W,
                    "metadata.name",
                    "folded into AnalysisTemplate web-analysis",
                ),
                (
                    W,
                    "spec.analysis.metrics[1].templateRef",
                    "MetricTemplate elsewhere is not among the files",
                ),
                (
                    W,
                    "spec.analysis.webhooks[0]",
                    "webhook gate (type confirm-promotion)",
                ),
            ],
            errors: false,
        },
    ]
}

#[test]
fn converts_each_manifest_as_it_behaves_and_says_what_it_cannot_carry() {
    for case in cases() {
        let conversion = convert(&case.inputs);
        let yaml = conversion.yaml().unwrap();
        let report = conversion.human_report();
        let context = format!("{}:\n{yaml}\n{report}", case.name);
        let printed: Vec<String> = conversion.objects().map(kind_and_name).collect();
        assert_eq!(printed, case.printed, "{context}");
        let canary = object(&conversion, "Canary", case.canary);
        for (pointer, expected) in &case.expect {
            assert_eq!(
                canary.pointer(pointer),
                Some(expected),
                "{pointer} in {context}"
            );
        }
        for pointer in case.absent {
            assert_eq!(canary.pointer(pointer), None, "{pointer} in {context}");
        }
        for (severity, field, part) in case.said {
            assert!(
                notes(&conversion).iter().any(|n| n.severity == *severity
                    && n.field == *field
                    && n.message.contains(part)),
                "no {severity:?} at {field} saying {part:?} in {context}"
            );
        }
        assert_eq!(conversion.has_errors(), case.errors, "{context}");
        if !case.errors {
            // What is printed is what `canary validate` (and the API server) accepts.
            assert_eq!(check_converted_canary(canary), Vec::new(), "{context}");
            for template in conversion
                .objects()
                .filter(|o| o["kind"] == "AnalysisTemplate")
            {
                let problems: Vec<Note> = check_converted_template(template)
                    .into_iter()
                    .filter(|n| n.severity == Severity::Error)
                    .collect();
                assert_eq!(problems, Vec::new(), "{context}");
            }
        }
    }
}

#[test]
fn flagger_metrics_keep_their_thresholds_windows_and_variables() {
    let conversion = convert(&[inline(FLAGGER_CUSTOM)]);
    let template = object(&conversion, "AnalysisTemplate", "web-analysis");
    let metric = &template["spec"]["metrics"][0];
    assert_eq!(metric["name"], "error-rate");
    // Checked at the analysis interval, over the metric's own window.
    assert_eq!(metric["interval"], "30s");
    assert_eq!(metric["thresholdRange"], json!({"max": 1.0}));
    assert_eq!(metric["failureLimit"], 2);
    let query = metric["provider"]["prometheus"]["query"].as_str().unwrap();
    assert!(query.contains("[2m]"), "{query}");
    assert!(query.contains("{{workload}}"), "{query}");
    assert!(query.contains("{{args.code}}"), "{query}");
    assert_eq!(
        template["spec"]["args"],
        json!([{"name": "code", "value": "5.."}])
    );
}

#[test]
fn files_that_are_not_yaml_or_empty_are_errors_and_the_rest_still_converts() {
    let conversion = convert(&[
        inline("kind: [unclosed"),
        fixture("tests/fixtures/convert/argo/rollout-canary.yaml"),
    ]);
    assert!(conversion.has_errors());
    assert!(
        conversion.file_errors[0]
            .error
            .starts_with("not valid YAML")
    );
    object(&conversion, "Canary", "rollout-canary");
}

#[test]
fn a_rollout_without_ports_or_strategy_says_what_to_write() {
    let conversion = convert(&[inline(
        "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata: {name: bare}\nspec:\n  selector: {matchLabels: {app: bare}}\n  template:\n    metadata: {labels: {app: bare}}\n    spec: {containers: [{name: app, image: nginx}]}\n",
    )]);
    let said: Vec<(String, Severity)> = notes(&conversion)
        .iter()
        .map(|n| (n.field.clone(), n.severity))
        .collect();
    assert!(said.contains(&("spec.service.port".into(), E)), "{said:?}");
    assert!(said.contains(&("spec.strategy".into(), E)), "{said:?}");
}

const ARGO_EVERYTHING: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: checkout
  labels: {team: payments}
spec:
  replicas: 4
  paused: false
  progressDeadlineSeconds: 300
  selector: {matchLabels: {app: checkout}}
  template:
    metadata: {labels: {app: checkout}}
    spec:
      containers:
      - name: checkout
        image: shop/checkout:1.0
        ports: [{name: http, containerPort: 8080}]
  strategy:
    canary:
      maxSurge: "25%"
      scaleDownDelaySeconds: 10
      trafficRouting:
        managedRoutes: [{name: testers}]
        istio:
          virtualService: {name: checkout}
          destinationRule: {name: checkout}
      analysis:
        startingStep: 4
        templates: [{templateName: success-rate}]
        args:
        - name: team
          valueFrom: {fieldRef: {fieldPath: "metadata.labels['team']"}}
        - name: hash
          valueFrom: {podTemplateHashValue: Latest}
      steps:
      - setHeaderRoute:
          name: testers
          match: [{headerName: x-canary, headerValue: {exact: "yes"}}]
      - setWeight: 10
      - setCanaryScale: {replicas: 2}
      - analysis:
          templates: [{templateName: success-rate}]
          args: [{name: service, value: checkout}]
      - setWeight: 50
      - setMirrorRoute: {name: mirror}
      - pause: {duration: 1h}
---
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata: {name: success-rate}
spec:
  args: [{name: service, value: checkout}, {name: team, value: x}]
  metrics:
  - name: success-rate
    interval: 1m
    count: 3
    successCondition: result[0] >= 0.99
    provider:
      prometheus:
        query: sum(rate(http_requests_total{service="{{args.service}}",team="{{args.team}}",code!~"5.."}[1m])) / sum(rate(http_requests_total{service="{{args.service}}"}[1m]))
"#;

const ARGO_NGINX_DOWN: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
  strategy:
    canary:
      canaryService: web-canary
      stableService: web-stable
      trafficRouting:
        nginx: {stableIngress: web}
      steps: [{setWeight: 50}, {setWeight: 20}]
"#;

const ARGO_GATEWAY_API: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]}
  strategy:
    canary:
      canaryService: web-canary
      stableService: web-stable
      trafficRouting:
        plugins:
          argoproj-labs/gatewayAPI: {httpRoute: web-route, namespace: default}
      steps: [{setWeight: 30}, {pause: {duration: 30}}]
"#;

const FLAGGER_CUSTOM: &str = r#"
apiVersion: flagger.app/v1beta1
kind: Canary
metadata: {name: web, namespace: shop}
spec:
  provider: gatewayapi:v1
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  service: {port: 8080}
  skipAnalysis: true
  analysis:
    interval: 30s
    threshold: 3
    stepWeights: [5, 20]
    metrics:
    - name: error-rate
      templateRef: {name: error-rate, namespace: shop}
      templateVariables: {code: "5.."}
      thresholdRange: {max: 1}
      interval: 2m
    - name: other
      templateRef: {name: elsewhere}
      thresholdRange: {min: 1}
    webhooks:
    - name: gate
      type: confirm-promotion
      url: http://flagger-loadtester.test/gate/check
---
apiVersion: flagger.app/v1beta1
kind: MetricTemplate
metadata: {name: error-rate, namespace: shop}
spec:
  provider: {type: prometheus, address: http://prometheus.monitoring:9090}
  query: |
    100 * sum(rate(http_requests_total{namespace="{{ namespace }}", pod=~"{{ target }}-.*", code=~"{{ variables.code }}"}[{{ interval }}]))
    / sum(rate(http_requests_total{namespace="{{ namespace }}", pod=~"{{ target }}-.*"}[{{ interval }}]))
"#;

/// Flagger fills its template variables from the Canary (`toMetricModel` in Flagger's
/// scheduler): `name` the Canary, `service` `service.name` or the target, `ingress` and
/// `route` the ingressRef's / routeRef's name or else the target; `target` is the Deployment
/// that runs the canary (`{{workload}}` here), `namespace` and `interval` (the metric's window)
/// keep their meaning.
#[test]
fn flagger_variables_get_the_values_flagger_gives_them() {
    let template = |query: &str| {
        format!(
            "apiVersion: flagger.app/v1beta1\nkind: MetricTemplate\nmetadata: {{name: vars}}\nspec:\n  provider: {{type: prometheus, address: 'http://prometheus:9090'}}\n  query: '{query}'\n"
        )
    };
    let canary = |extra: &str| {
        format!(
            "apiVersion: flagger.app/v1beta1\nkind: Canary\nmetadata: {{name: shop, namespace: prod}}\nspec:\n  provider: kubernetes\n  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: web}}\n  service: {{port: 80}}\n{extra}  analysis:\n    interval: 30s\n    stepWeight: 10\n    metrics:\n    - name: vars\n      templateRef: {{name: vars}}\n      thresholdRange: {{max: 1}}\n      interval: 2m\n"
        )
    };
    let query = "sum(rate(x{a=\"{{ name }}\",b=\"{{ service }}\",c=\"{{ ingress }}\",d=\"{{ route }}\",e=\"{{ target }}\",f=\"{{ namespace }}\"}[{{ interval }}]))";
    let args_of = |conversion: &Conversion| {
        let template = object(conversion, "AnalysisTemplate", "shop-analysis");
        let metric = &template["spec"]["metrics"][0];
        (
            template["spec"]["args"].clone(),
            metric["provider"]["prometheus"]["query"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let bare = convert(&[inline(&template(query)), inline(&canary(""))]);
    assert!(!bare.has_errors(), "{}", bare.human_report());
    let (args, converted) = args_of(&bare);
    assert_eq!(
        args,
        json!([
            {"name": "name", "value": "shop"},
            {"name": "service", "value": "web"},
            {"name": "ingress", "value": "web"},
            {"name": "route", "value": "web"},
        ]),
        "{}",
        bare.human_report()
    );
    assert_eq!(
        converted,
        "sum(rate(x{a=\"{{args.name}}\",b=\"{{args.service}}\",c=\"{{args.ingress}}\",d=\"{{args.route}}\",e=\"{{workload}}\",f=\"{{ namespace }}\"}[2m]))"
    );
    let named = convert(&[
        inline(&template(query)),
        inline(&canary(
            "  ingressRef: {apiVersion: networking.k8s.io/v1, kind: Ingress, name: shop-ingress}\n  routeRef: {apiVersion: gateway.solo.io/v1, kind: RouteTable, name: shop-route}\n",
        )),
    ]);
    let (args, _) = args_of(&named);
    assert_eq!(args[2], json!({"name": "ingress", "value": "shop-ingress"}));
    assert_eq!(args[3], json!({"name": "route", "value": "shop-route"}));
}
