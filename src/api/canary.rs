//! `Canary` (`canary.dev/v1alpha1`): one service's progressive delivery — which Deployment,
//! how traffic is split, the steps, the analysis — and, in status, everything needed to
//! continue a rollout after a restart and to explain every decision.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::duration::Duration;
use crate::analysis::assessment::{AnalysisPhase, Tally};
use crate::analysis::compare::CompareRecord;
use crate::analysis::measurement::MeasurementPhase;
use crate::analysis::sequential::Assessment;

/// The single-slot annotation of a manual request: `<action>:<id>` (see [`RequestAction`]).
/// The controller acts once per id and action, answers in `status.lastRequest` and
/// `status.recentRequests`, then removes the annotation. An annotation, not a spec field, so
/// GitOps tools that own the spec do not revert it.
pub const REQUEST_ANNOTATION: &str = "canary.dev/request";
/// The prefix of one-annotation-per-request keys, `request.canary.dev/<id>: <action>`: writers
/// of different ids never overwrite each other, so no request is lost to a concurrent one.
pub const REQUEST_KEY_PREFIX: &str = "request.canary.dev/";
/// Default progress deadline, as in Flagger and Argo Rollouts.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;
pub const DEFAULT_SCALE_DOWN_DELAY_SECONDS: u32 = 30;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "canary.dev",
    version = "v1alpha1",
    kind = "Canary",
    namespaced,
    cel,
    status = "CanaryStatus",
    shortname = "cnry",
    doc = "Progressive delivery of one Deployment: traffic moves to the canary in steps while analysis judges it; then it is promoted or rolled back.",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Effective","type":"integer","jsonPath":".status.effectiveWeight"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.stepDisplay"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!(has(self.steps) && (has(self.stepWeight) || has(self.maxWeight) || has(self.interval)))").message("use either steps or the stepWeight/maxWeight/interval shorthand, not both"))]
#[x_kube(validation = Rule::new("has(self.steps) || (has(self.stepWeight) && has(self.maxWeight)) || (has(self.strategy) && has(self.strategy.blueGreen))").message("give steps, or stepWeight and maxWeight, or strategy.blueGreen"))]
#[x_kube(validation = Rule::new("!has(self.strategy) || !has(self.strategy.blueGreen) || [has(self.steps), has(self.stepWeight), has(self.maxWeight), has(self.interval), has(self.trafficRouting), has(self.analysis)].all(x, !x)").message("strategy.blueGreen switches Services instead of walking steps: remove steps, stepWeight, maxWeight, interval, trafficRouting and analysis (use blueGreen.prePromotionAnalysis and postPromotionAnalysis)"))]
#[x_kube(validation = Rule::new("!has(self.stepWeight) || !has(self.maxWeight) || self.stepWeight <= self.maxWeight").message("stepWeight must not be greater than maxWeight"))]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// The Deployment whose pod template is the desired version (CI or GitOps changes it).
    pub target_ref: TargetRef,
    /// The port the service listens on.
    pub service: ServicePort,
    /// Where the split lives: `istio` or `gatewayAPI`. Absent: no mesh, the service's one
    /// Service selects both versions and a weight is the canary's share of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
    /// How a revision moves. Absent: canary, by `steps` (or the stepWeight shorthand) over the
    /// router of `trafficRouting`. `blueGreen`: the new revision comes up in full behind a
    /// preview Service, and the active Service is switched to it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The rollout, step by step. Each step is exactly one of setWeight, pause, analysis,
    /// setHeaderRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(s, [has(s.setWeight), has(s.pause), has(s.analysis), has(s.setHeaderRoute)].filter(x, x).size() == 1)").message("each step has exactly one of setWeight, pause, analysis or setHeaderRoute"))]
    #[x_kube(validation = Rule::new("self.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()").message("setWeight steps must not decrease"))]
    #[schemars(length(min = 1, max = 64))]
    pub steps: Option<Vec<Step>>,
    /// Shorthand: raise the canary weight by this much at each interval...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub step_weight: Option<u8>,
    /// ...up to this weight, then promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_weight: Option<u8>,
    /// Shorthand: how long each weight is held (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Analysis that runs in the background from `startingStep` until promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
    /// A canary that is not ready this long after it was (re)deployed or scaled is rolled back
    /// (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: Option<u32>,
    /// How long the canary's pods outlive its traffic (promotion, rollback, abort), so that
    /// proxies still holding the previous routes do not send requests to terminating pods
    /// (default 30, like Argo Rollouts' scaleDownDelaySeconds; 0: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 3600))]
    pub scale_down_delay_seconds: Option<u32>,
    /// What a failed analysis does: roll back (default), or pause for a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_analysis_failure: Option<OnAnalysisFailure>,
    /// Promote new revisions without steps or analysis (emergency fixes).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_analysis: bool,
    /// Start no new rollout; a running one holds where it is (its weight, its step, a newer
    /// revision waiting) while its background analysis goes on judging it; `abort` and
    /// `promote-full` still act.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// The HorizontalPodAutoscaler (autoscaling/v2, in the Canary's namespace) that scales the
    /// target. Absent: the one whose `scaleTargetRef` is the target, if there is one. The
    /// controller derives `<target>-stable`'s HPA from it; see the README's "Autoscaling (HPA)".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler_ref: Option<AutoscalerRef>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AutoscalerRef {
    /// The HorizontalPodAutoscaler's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `apps/v1` (the only one supported).
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// `Deployment` (the only one supported).
    #[serde(default = "default_kind")]
    pub kind: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_api_version() -> String {
    "apps/v1".into()
}

fn default_kind() -> String {
    "Deployment".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ServicePort {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// Exactly one router.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.istio), has(self.gatewayAPI)].filter(x, x).size() == 1").message("trafficRouting names exactly one router: istio or gatewayAPI (or leave trafficRouting out to split by replicas)"))]
pub struct TrafficRouting {
    /// Istio: weights of a VirtualService's routes over a DestinationRule's subsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouting>,
    /// Gateway API: weights of the stable and canary backendRefs of HTTPRoutes (or GRPCRoutes).
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouting>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// Blue-green: two full environments, and a switch between them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
}

/// Blue-green, as Argo Rollouts names it. The new revision runs in `<target>-canary` behind
/// the preview Service; promotion points the active Service's selector at it in one write
/// (only once every pod it needs is ready); a failing post-promotion analysis or an abort
/// points it back at `<target>-stable`, which keeps the previous revision at full size until
/// the rollout is over.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreen {
    /// The Service production traffic goes through; the controller adds
    /// `canary.dev/subset: stable | canary` to its selector.
    #[schemars(length(min = 1, max = 63))]
    pub active_service: String,
    /// A Service that always selects the new revision's pods (`canary.dev/subset: canary`),
    /// for tests and the pre-promotion analysis before it gets production traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub preview_service: Option<String>,
    /// Switch as soon as the preview is ready and the pre-promotion analysis passed (after
    /// `autoPromotionSeconds`, if given). `false`: wait for `canary promote`. Default true.
    #[serde(default = "default_true")]
    pub auto_promotion_enabled: bool,
    /// With auto-promotion, how long the preview is held before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub auto_promotion_seconds: Option<u32>,
    /// Pods of the preview before the switch (default: the service's size). It is scaled to
    /// the service's size, and ready, before the active Service points at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub preview_replica_count: Option<i32>,
    /// Analysis of the preview that must pass before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<StepAnalysis>,
    /// Analysis after the switch, while the previous revision is still running: a failure
    /// switches back at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<StepAnalysis>,
}

fn default_true() -> bool {
    true
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// The HTTPRoute whose rules with both backends carry the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub http_route: Option<String>,
    /// More HTTPRoutes, managed alike.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub http_routes: Vec<String>,
    /// GRPCRoutes, managed alike.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub grpc_routes: Vec<String>,
    /// The Service of the stable pods (a backendRef name).
    #[schemars(length(min = 1, max = 63))]
    pub stable_service: String,
    /// The Service of the canary pods (a backendRef name).
    #[schemars(length(min = 1, max = 63))]
    pub canary_service: String,
    /// Create and own the two Services (the target's selector plus `canary.dev/subset`,
    /// `spec.service.port`); otherwise they are the user's and must exist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create_services: bool,
}

impl GatewayApiRouting {
    /// Every HTTPRoute named, in order, without repeats.
    pub fn http_route_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for name in self.http_route.iter().chain(&self.http_routes) {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouting {
    pub virtual_service: VirtualServiceRef,
    pub destination_rule: DestinationRuleRef,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VirtualServiceRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Names of the HTTP routes whose weights are managed; absent: every route with a
    /// destination for each of the two subsets (other routes are left as written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_stable_subset")]
    pub stable_subset_name: String,
    #[serde(default = "default_canary_subset")]
    pub canary_subset_name: String,
}

fn default_stable_subset() -> String {
    "stable".into()
}

fn default_canary_subset() -> String {
    "canary".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Send this share of traffic (0–100) to the canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub set_weight: Option<u8>,
    /// Hold: for a duration, or (without one) until `canary promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// Run these templates to completion before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<StepAnalysis>,
    /// Send the requests that match these headers to the canary, whatever its weight (for
    /// testers, as Argo Rollouts' setHeaderRoute); without `match`, remove the route of that
    /// name. Header routes are removed on promotion, abort and rollback. Istio and Gateway API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_header_route: Option<HeaderRoute>,
}

/// A route, by request headers, to the canary.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeaderRoute {
    /// Names the route (in the router's objects and in status).
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Every header must match (AND); empty: remove the route.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<HeaderMatch>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[schemars(length(min = 1, max = 256))]
    pub header_name: String,
    pub header_value: HeaderValue,
}

/// Exactly one of exact, prefix, regex.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("[has(self.exact), has(self.prefix), has(self.regex)].filter(x, x).size() == 1").message("headerValue takes exactly one of exact, prefix or regex"))]
pub struct HeaderValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub prefix: Option<String>,
    /// RE2 syntax, as Istio and Gateway API read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub regex: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Pause {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StepAnalysis {
    #[schemars(length(min = 1, max = 16))]
    pub templates: Vec<TemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundAnalysis {
    #[schemars(length(min = 1, max = 16))]
    pub templates: Vec<TemplateRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<AnalysisArg>,
    /// The step index from which it runs (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub starting_step: Option<u32>,
    /// When every `compare` metric of this analysis says NoRegression (measured during the
    /// current step), a timed pause ends early, but never before it has lasted this long
    /// (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_step_duration: Option<Duration>,
}

/// Default of `spec.analysis.minStepDuration`.
pub const DEFAULT_MIN_STEP_DURATION: Duration = Duration::from_secs(60);

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    #[schemars(length(min = 1, max = 253))]
    pub template_name: String,
    /// A ClusterAnalysisTemplate instead of an AnalysisTemplate in the Canary's namespace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_scope: bool,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AnalysisArg {
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    pub value: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnAnalysisFailure {
    #[default]
    Rollback,
    Pause,
}

/// The one way a step is shown to people (CLI, JSON's `step.display`, `kubectl get`, events):
/// counted from 1, `4/6` being the fourth of six steps, at `status.currentStepIndex` 3. Past
/// the last step (the background analysis concluding before promotion) it stays `6/6`.
pub fn step_display(index: u32, total: usize) -> String {
    let number = (u64::from(index) + 1).min(total as u64);
    format!("{number}/{total}")
}

/// A rollout step after the shorthand is expanded.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum RolloutStep {
    SetWeight(u8),
    Pause(Option<Duration>),
    Analysis(StepAnalysis),
    SetHeaderRoute(HeaderRoute),
}

impl CanarySpec {
    /// The steps to walk: the explicit ones, or the shorthand expanded into
    /// `setWeight: n·stepWeight` + `pause: interval` pairs up to `maxWeight`.
    pub fn rollout_steps(&self) -> Vec<RolloutStep> {
        if let Some(blue_green) = self.blue_green() {
            return blue_green.rollout_steps(self.scale_down_delay());
        }
        if let Some(steps) = &self.steps {
            return steps
                .iter()
                .filter_map(
                    |s| match (s.set_weight, &s.pause, &s.analysis, &s.set_header_route) {
                        (Some(w), _, _, _) => Some(RolloutStep::SetWeight(w)),
                        (None, Some(p), _, _) => Some(RolloutStep::Pause(p.duration)),
                        (None, None, Some(a), _) => Some(RolloutStep::Analysis(a.clone())),
                        (None, None, None, Some(h)) => Some(RolloutStep::SetHeaderRoute(h.clone())),
                        (None, None, None, None) => None,
                    },
                )
                .collect();
        }
        let (Some(step), Some(max)) = (self.step_weight, self.max_weight) else {
            return Vec::new();
        };
        let interval = self.interval.unwrap_or(Duration::from_secs(60));
        let mut steps = Vec::new();
        let mut weight = 0u8;
        while weight < max {
            weight = weight.saturating_add(step).min(max);
            steps.push(RolloutStep::SetWeight(weight));
            steps.push(RolloutStep::Pause(Some(interval)));
        }
        steps
    }

    /// Every template the Canary's analysis refers to: the background analysis' and the
    /// analysis steps' (blue-green's pre- and post-promotion analyses included).
    pub fn template_refs(&self) -> Vec<&TemplateRef> {
        let background = self.analysis.iter().flat_map(|a| &a.templates);
        let steps = self
            .steps
            .iter()
            .flatten()
            .filter_map(|s| s.analysis.as_ref())
            .flat_map(|a| &a.templates);
        let blue_green = self
            .blue_green()
            .into_iter()
            .flat_map(|b| [&b.pre_promotion_analysis, &b.post_promotion_analysis])
            .flatten()
            .flat_map(|a| &a.templates);
        background.chain(steps).chain(blue_green).collect()
    }

    /// The blue-green strategy, if the spec chose it.
    pub fn blue_green(&self) -> Option<&BlueGreen> {
        self.strategy.as_ref()?.blue_green.as_ref()
    }

    pub fn scale_down_delay(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.scale_down_delay_seconds
                .unwrap_or(DEFAULT_SCALE_DOWN_DELAY_SECONDS),
        ))
    }

    pub fn progress_deadline(&self) -> Duration {
        Duration::from_secs(u64::from(
            self.progress_deadline_seconds
                .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
        ))
    }

    pub fn stable_name(&self) -> String {
        format!("{}-stable", self.target_ref.name)
    }

    pub fn canary_name(&self) -> String {
        format!("{}-canary", self.target_ref.name)
    }
}

impl BlueGreen {
    /// Blue-green as steps of the one rollout state machine: the preview ready at its size
    /// without production traffic (weight 0), the pre-promotion analysis of the preview, the
    /// approval gate (or the auto-promotion wait), the switch (weight 100: the active Service
    /// selects the new revision), the post-promotion analysis, and a hold of the scale-down
    /// delay during which the previous revision still runs at full size, so an abort
    /// switches back at once; then promotion (stable takes the new revision).
    pub fn rollout_steps(&self, scale_down_delay: Duration) -> Vec<RolloutStep> {
        let mut steps = vec![RolloutStep::SetWeight(0)];
        if let Some(analysis) = &self.pre_promotion_analysis {
            steps.push(RolloutStep::Analysis(analysis.clone()));
        }
        match (self.auto_promotion_enabled, self.auto_promotion_seconds) {
            (false, _) => steps.push(RolloutStep::Pause(None)),
            (true, Some(seconds)) => steps.push(RolloutStep::Pause(Some(Duration::from_secs(
                u64::from(seconds),
            )))),
            (true, None) => {}
        }
        steps.push(RolloutStep::SetWeight(100));
        if let Some(analysis) = &self.post_promotion_analysis {
            steps.push(RolloutStep::Analysis(analysis.clone()));
        }
        if !scale_down_delay.is_zero() {
            steps.push(RolloutStep::Pause(Some(scale_down_delay)));
        }
        steps
    }
}

/// Where the rollout is; see the README's phase table.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Phase {
    #[default]
    Initializing,
    Idle,
    Progressing,
    Paused,
    Promoting,
    Promoted,
    RollingBack,
    RolledBack,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Initializing,
        Phase::Idle,
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoting,
        Phase::Promoted,
        Phase::RollingBack,
        Phase::RolledBack,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Idle => "Idle",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoting => "Promoting",
            Phase::Promoted => "Promoted",
            Phase::RollingBack => "RollingBack",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }
}

/// Why a rollout is paused.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseReason {
    /// A `pause` step without a duration: waits for `canary promote`.
    Step,
    /// `canary pause`.
    Manual,
    /// Analysis failed and `onAnalysisFailure` is `pause`.
    AnalysisFailed,
    /// Analysis was inconclusive: a human decides.
    AnalysisInconclusive,
}

/// Why a rollout is being (or was) rolled back.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RollbackReason {
    AnalysisFailed,
    ProgressDeadlineExceeded,
    Aborted,
    /// The target went back to the stable revision while the canary was out.
    TargetReverted,
    /// The analysis ended in Error: `consecutiveErrorLimit` measurements in a row could not
    /// be taken or judged (the metrics source unreachable, timing out or refusing the query).
    /// Nothing shows the canary is bad, but it is never promoted without data.
    MetricsUnavailable,
}

/// The manual actions of the request annotation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RequestAction {
    /// Finish the current step now and go on.
    Promote,
    /// Skip the remaining steps and analysis: promote now.
    PromoteFull,
    Pause,
    Resume,
    /// Send all traffic to stable and roll back.
    Abort,
    /// Roll out the revision that was rolled back again.
    Retry,
}

impl RequestAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestAction::Promote => "promote",
            RequestAction::PromoteFull => "promote-full",
            RequestAction::Pause => "pause",
            RequestAction::Resume => "resume",
            RequestAction::Abort => "abort",
            RequestAction::Retry => "retry",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            RequestAction::Promote,
            RequestAction::PromoteFull,
            RequestAction::Pause,
            RequestAction::Resume,
            RequestAction::Abort,
            RequestAction::Retry,
        ]
        .into_iter()
        .find(|a| a.as_str() == text)
    }
}

/// A manual request read from an annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub action: RequestAction,
    pub id: String,
    /// For `promote`: the step it finishes, as `status.currentStepIndex` counts. A promote for
    /// a step that is already finished is answered without skipping another one, so
    /// concurrent promotes of the same gate finish it once.
    pub step: Option<u32>,
}

impl Request {
    /// Parses the single-slot form `<action>:<id>`; anything else is reported, not guessed.
    pub fn parse(value: &str) -> Result<Self, String> {
        let (action, id) = value.split_once(':').ok_or_else(|| {
            format!("{REQUEST_ANNOTATION} must be <action>:<id>, e.g. abort:1; got {value:?}")
        })?;
        let action = RequestAction::parse(action.trim()).ok_or_else(|| {
            format!(
                "unknown action {action:?} in {REQUEST_ANNOTATION}: use promote, promote-full, pause, resume, abort or retry"
            )
        })?;
        if id.trim().is_empty() {
            return Err(format!("{REQUEST_ANNOTATION} {value:?} has an empty id"));
        }
        Ok(Self {
            action,
            id: id.trim().to_string(),
            step: None,
        })
    }

    /// The request of one annotation: `request.canary.dev/<id>: <action>[@<step>]` or the
    /// single slot `canary.dev/request: <action>:<id>`; `None` for other annotations.
    pub fn from_annotation(key: &str, value: &str) -> Option<Result<Self, String>> {
        if key == REQUEST_ANNOTATION {
            return Some(Self::parse(value));
        }
        let id = key.strip_prefix(REQUEST_KEY_PREFIX)?;
        let (action_text, step) = match value.trim().split_once('@') {
            Some((action, step)) => (action, Some(step)),
            None => (value.trim(), None),
        };
        let Some(action) = RequestAction::parse(action_text) else {
            return Some(Err(format!(
                "unknown action {action_text:?} in {key}: use promote, promote-full, pause, resume, abort or retry (promote may name its step: promote@2)"
            )));
        };
        let step = match step {
            None => None,
            Some(text) => match text.parse::<u32>() {
                Ok(step) if action == RequestAction::Promote => Some(step),
                _ => {
                    return Some(Err(format!(
                        "{key}: {value:?} is not a request: only promote names a step, as promote@<status.currentStepIndex>"
                    )));
                }
            },
        };
        Some(Ok(Self {
            action,
            id: id.to_string(),
            step,
        }))
    }

    /// The request's own annotation (key and value), as the CLI writes it.
    pub fn annotation(&self) -> (String, String) {
        let value = match self.step {
            Some(step) => format!("{}@{step}", self.action.as_str()),
            None => self.action.as_str().to_string(),
        };
        (format!("{REQUEST_KEY_PREFIX}{}", self.id), value)
    }

    /// Whether the controller has answered this request (an answer for this id and action is
    /// in status); a request is acted on once.
    pub fn answered_in(&self, status: Option<&CanaryStatus>) -> bool {
        status.is_some_and(|s| {
            s.answers()
                .any(|answer| answer.id == self.id && answer.action == self.action)
        })
    }
}

/// Every request among `annotations` (both forms), in key order.
pub fn requests(annotations: &BTreeMap<String, String>) -> Vec<Result<Request, String>> {
    annotations
        .iter()
        .filter_map(|(key, value)| Request::from_annotation(key, value))
        .collect()
}

/// The request annotations (key and value) whose requests `status` answers: the controller
/// removes them once the answer is stored, so answered requests do not pile up and the
/// single slot is free for the next request.
pub fn answered_request_annotations(
    annotations: &BTreeMap<String, String>,
    status: &CanaryStatus,
) -> Vec<(String, String)> {
    annotations
        .iter()
        .filter(|(key, value)| {
            Request::from_annotation(key, value)
                .and_then(Result::ok)
                .is_some_and(|request| request.answered_in(Some(status)))
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    #[serde(default)]
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision (pod template hash) the stable Deployment runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The revision being rolled out, while a rollout is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    /// The last revision that was rolled back; it is not rolled out again unless retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_revision: Option<String>,
    /// The revision of the target's pod template the controller last planned for (rolling it
    /// out, holding it, or refusing it with the reason in `Ready`): `canary run --wait` knows
    /// from it that a controller has seen the revision it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_revision: Option<String>,
    /// The image(s) of the canary revision, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_images: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<u32>,
    /// The step under way for people and `kubectl get`, counted from 1: `4/6` is the fourth
    /// of six steps (`currentStepIndex` 3), as the CLI and events say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_display: Option<String>,
    /// The revision the Canary is about, for `kubectl get`: the canary's while a rollout is
    /// under way, otherwise stable's (never empty once initialized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The share of traffic (0–100) the rollout gives the canary.
    #[serde(default)]
    pub canary_weight: u8,
    /// The share the canary actually receives, as last observed: the weight the routing
    /// holds, or, split by replicas, the canary's share of the ready pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_weight: Option<u8>,
    /// The header routes to the canary in place (`setHeaderRoute` steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub header_routes: Vec<HeaderRoute>,
    /// The objects this Canary owns, as `Kind/name`: its target Deployment and its routing
    /// objects. The first Canary to claim an object owns it; another that names it is refused
    /// (`Ready=False`, reason `RoutingConflict`) and changes nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub claimed_objects: Vec<String>,
    /// How many replicas the service runs when not in a rollout (from the target Deployment;
    /// autoscaled, stable's current size, which the derived HPA decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Autoscaled: the stable size the derived HPA's `minReplicas` is held at while the
    /// rollout is under way (stable's size when it started), so stable can take all traffic
    /// back at once. Absent when settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_stable_replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_reason: Option<PauseReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_reason: Option<RollbackReason>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started_at: Option<String>,
    /// When the current step (or pause, or promotion phase) began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// When the timed pause step under way ends (evidence may end it earlier, see
    /// `spec.analysis.minStepDuration`); absent at any other step, and while paused or
    /// without traffic (the pause's clock starts again on resume). Status holds this time,
    /// not a countdown: `canary status` says how long is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_ends_at: Option<String>,
    /// When the canary Deployment was last changed (template or replicas): the progress
    /// deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_updated_at: Option<String>,
    /// Since when the canary has not been ready for its weight (absent while it is): the
    /// progress deadline counts from here or from the last change, whichever is later, so a
    /// pod lost mid-pause gets the whole deadline to come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_unready_since: Option<String>,
    /// When the canary's weight last changed: the clock of the analysis at that weight. The
    /// background analysis starts once the canary has traffic, and promotion needs a passing
    /// measurement taken since the final weight took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_changed_at: Option<String>,
    /// The weight the canary had when its traffic went to stable because it had no ready pod;
    /// it gets that weight back once it is ready for it (the progress deadline decides
    /// meanwhile). Absent while the canary serves its weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_weight: Option<u8>,
    /// When the canary's pods, which no longer have traffic, are to be scaled down (see
    /// `spec.scaleDownDelaySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_scale_down_at: Option<String>,
    /// A fingerprint of the steps this rollout walks: when the spec's steps change mid-rollout,
    /// the walk starts again from the first step rather than continue at an index that means
    /// something else now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_fingerprint: Option<String>,
    /// The answer to the latest request acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<RequestStatus>,
    /// Recent answers, newest last: every request whose annotation is still there, and the
    /// latest others (several requests may be answered at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_requests: Vec<RequestStatus>,
    /// The analysis runs of this rollout: `background` and `step-N`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis_runs: Vec<AnalysisRunStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// What is happening and why, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl CanaryStatus {
    /// Every answer to a manual request that status holds.
    pub fn answers(&self) -> impl Iterator<Item = &RequestStatus> {
        self.last_request.iter().chain(&self.recent_requests)
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestStatus {
    pub id: String,
    pub action: RequestAction,
    /// True when the controller acted on it; false with a message when it did not apply.
    pub accepted: bool,
    pub message: String,
    pub at: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRunStatus {
    /// `background`, or `step-N` for the analysis step at index N.
    pub name: String,
    pub phase: AnalysisPhase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub started_at: String,
    pub metrics: Vec<MetricStatus>,
}

/// One metric's recent history: enough to say why, small enough for status.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    pub name: String,
    pub template: String,
    pub phase: AnalysisPhase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub tally: Tally,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_measurement_at: Option<String>,
    /// When the latest passing measurement was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_passed_at: Option<String>,
    /// The most recent measurements, newest last (at most [`MEASUREMENTS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub measurements: Vec<MeasurementStatus>,
    /// For `compare` metrics: the judge's verdict with its evidence and every interval's
    /// counts (from which the judge is rebuilt after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareStatus>,
}

/// A comparison's state and latest assessment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CompareStatus {
    /// The end of the last measured interval: the next one starts here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    /// Verdict (`Regressed`, `NoRegression`, `Continue`), evidence both ways, the effect
    /// estimate with its confidence sequence, and the explanation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assessment: Option<Assessment>,
    #[serde(flatten)]
    pub record: CompareRecord,
}

/// How many measurements per metric status keeps.
pub const MEASUREMENTS_KEPT: usize = 5;

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeasurementStatus {
    pub time: String,
    pub phase: MeasurementPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub reason: String,
}

/// Labels: which pods are which.
pub const SUBSET_LABEL: &str = "canary.dev/subset";
/// Annotation on managed pod templates: the revision they run.
pub const REVISION_ANNOTATION: &str = "canary.dev/revision";

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn canary(spec: serde_json::Value) -> Canary {
        let mut full = serde_json::json!({
            "targetRef": {"name": "checkout"},
            "service": {"port": 8080},
            "trafficRouting": {"istio": {
                "virtualService": {"name": "checkout"},
                "destinationRule": {"name": "checkout"},
            }},
        });
        full.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({
            "apiVersion": "canary.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": "checkout", "namespace": "shop"},
            "spec": full,
        }))
        .expect("test object deserializes")
    }

    #[test]
    fn cel_rules_reject_impossible_specs() {
        let good = [
            serde_json::json!({"steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}]}),
            serde_json::json!({"stepWeight": 10, "maxWeight": 50, "interval": "1m"}),
        ];
        for spec in good {
            canary(spec.clone())
                .validate_cel()
                .unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let bad = [
            (
                serde_json::json!({"steps": [{"setWeight": 50}, {"setWeight": 10}]}),
                "must not decrease",
            ),
            (
                serde_json::json!({"steps": [{"setWeight": 10, "pause": {}}]}),
                "exactly one of",
            ),
            (serde_json::json!({"steps": [{}]}), "exactly one of"),
            (
                serde_json::json!({"steps": [{"setWeight": 10}], "stepWeight": 10, "maxWeight": 50}),
                "not both",
            ),
            (serde_json::json!({"stepWeight": 10}), "give steps"),
            (
                serde_json::json!({"stepWeight": 60, "maxWeight": 50}),
                "must not be greater than maxWeight",
            ),
        ];
        for (spec, expected) in bad {
            let err = canary(spec.clone())
                .validate_cel()
                .expect_err(&spec.to_string());
            assert!(err.to_string().contains(expected), "{spec}: {err}");
        }
    }

    #[test]
    fn shorthand_expands_into_weight_and_pause_steps() {
        let spec =
            canary(serde_json::json!({"stepWeight": 20, "maxWeight": 50, "interval": "30s"})).spec;
        let half = Some(Duration::from_secs(30));
        assert_eq!(
            spec.rollout_steps(),
            vec![
                RolloutStep::SetWeight(20),
                RolloutStep::Pause(half),
                RolloutStep::SetWeight(40),
                RolloutStep::Pause(half),
                RolloutStep::SetWeight(50),
                RolloutStep::Pause(half),
            ]
        );
    }

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            Request::parse("promote-full:42").unwrap(),
            Request {
                action: RequestAction::PromoteFull,
                id: "42".into(),
                step: None,
            }
        );
        for bad in ["abort", "explode:1", "abort:", ""] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_annotations_of_both_forms_parse_and_others_are_not_requests() {
        use RequestAction::*;
        let request = |action, id: &str, step| {
            Some(Ok(Request {
                action,
                id: id.into(),
                step,
            }))
        };
        // (key, value, expected: None = not a request, Some(Err(part of the message)))
        let cases: [(&str, &str, Option<Result<Request, &str>>); 10] = [
            (
                "request.canary.dev/1700-42",
                "abort",
                request(Abort, "1700-42", None),
            ),
            ("request.canary.dev/a", " pause ", request(Pause, "a", None)),
            (
                "request.canary.dev/a",
                "promote@2",
                request(Promote, "a", Some(2)),
            ),
            (
                "request.canary.dev/a",
                "promote-full",
                request(PromoteFull, "a", None),
            ),
            ("canary.dev/request", "resume:7", request(Resume, "7", None)),
            (
                "request.canary.dev/a",
                "explode",
                Some(Err("unknown action \"explode\"")),
            ),
            (
                "request.canary.dev/a",
                "promote@x",
                Some(Err("currentStepIndex")),
            ),
            (
                "request.canary.dev/a",
                "abort@2",
                Some(Err("only promote names a step")),
            ),
            (
                "canary.dev/request",
                "abort",
                Some(Err("must be <action>:<id>")),
            ),
            ("canary.dev/revision", "abort", None),
        ];
        for (key, value, expected) in cases {
            let parsed = Request::from_annotation(key, value);
            match (&parsed, &expected) {
                (Some(Err(message)), Some(Err(part))) => {
                    assert!(message.contains(part), "{key}={value}: {message}")
                }
                (parsed, Some(Ok(request))) => {
                    assert_eq!(parsed, &Some(Ok(request.clone())), "{key}={value}")
                }
                (parsed, None) => assert_eq!(parsed, &None, "{key}={value}"),
                (parsed, expected) => panic!("{key}={value}: {parsed:?}, expected {expected:?}"),
            }
        }
        // What the CLI writes reads back as the same request.
        let written = Request {
            action: Promote,
            id: "1700-42".into(),
            step: Some(3),
        };
        let (key, value) = written.annotation();
        assert_eq!(
            (key.as_str(), value.as_str()),
            ("request.canary.dev/1700-42", "promote@3")
        );
        assert_eq!(Request::from_annotation(&key, &value), Some(Ok(written)));
    }

    #[test]
    fn answered_requests_are_the_annotations_to_remove() {
        let answer = |id: &str, action| RequestStatus {
            id: id.into(),
            action,
            accepted: true,
            message: "ok".into(),
            at: String::new(),
        };
        let status = CanaryStatus {
            last_request: Some(answer("9", RequestAction::Abort)),
            recent_requests: vec![
                answer("1", RequestAction::Pause),
                answer("2", RequestAction::Resume),
            ],
            ..Default::default()
        };
        let annotations: BTreeMap<String, String> = [
            ("request.canary.dev/1", "pause"),    // answered
            ("request.canary.dev/2", "pause"),    // id answered for another action: new
            ("request.canary.dev/3", "resume"),   // not answered yet
            ("request.canary.dev/4", "nonsense"), // invalid: reported, left for a human
            ("canary.dev/request", "abort:9"),    // answered in lastRequest
            ("app.kubernetes.io/name", "web"),    // not a request
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            answered_request_annotations(&annotations, &status),
            vec![
                ("canary.dev/request".to_string(), "abort:9".to_string()),
                ("request.canary.dev/1".to_string(), "pause".to_string()),
            ]
        );
        assert_eq!(requests(&annotations).len(), 5);
    }

    #[test]
    fn crd_has_the_printer_columns_and_short_name() {
        let crd = serde_json::to_value(Canary::crd()).unwrap();
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "cnry");
        let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            ["Phase", "Weight", "Effective", "Step", "Revision", "Age"]
        );
        assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    }
}
