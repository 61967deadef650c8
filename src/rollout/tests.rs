//! Every transition of the rollout state machine, driven with explicit times and observations.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use jiff::Timestamp;

use super::*;
use crate::analysis::assessment::Limits;
use crate::analysis::compare::{CompareKind, CompareSetup, IntervalCounts, MeasuredInterval};
use crate::analysis::measurement::MeasurementPhase;
use crate::analysis::sequential::{SequentialConfig, Verdict};
use crate::api::canary::{CanarySpec, MeasurementStatus, Phase, Request, RequestAction};

const T0: i64 = 1_800_000_000;

pub(super) fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(T0 + seconds).unwrap()
}

fn spec(extra: serde_json::Value) -> CanarySpec {
    let mut base = serde_json::json!({
        "targetRef": {"name": "web"},
        "service": {"port": 8080},
        "trafficRouting": {"istio": {
            "virtualService": {"name": "web"},
            "destinationRule": {"name": "web"},
        }},
        "steps": [
            {"setWeight": 10},
            {"pause": {"duration": "1m"}},
            {"setWeight": 50},
            {"pause": {}},
        ],
    });
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

fn target(revision: &str) -> TargetState {
    TargetState {
        revision: revision.into(),
        replicas: 0,
        images: format!("app=web:{revision}"),
    }
}

pub(super) fn ready(revision: &str, replicas: i32) -> WorkloadState {
    WorkloadState {
        revision: Some(revision.into()),
        replicas,
        ready_replicas: replicas,
        settled: true,
        stalled: false,
    }
}

fn not_ready(revision: &str, replicas: i32) -> WorkloadState {
    WorkloadState {
        ready_replicas: 0,
        ..ready(revision, replicas)
    }
}

fn observed(target_revision: &str) -> Observed {
    Observed {
        generation: Some(1),
        target: Some(Ok(target(target_revision))),
        stable: Some(ready("r1", 4)),
        canary: None,
        requests: Vec::new(),
        analysis: Ok(BTreeMap::new()),
        measurements: Vec::new(),
        route_weight: None,
        router: crate::routing::Capabilities {
            granularity: crate::routing::Granularity::Exact,
            header_routes: true,
        },
        autoscaler: None,
        derived_autoscaler: None,
        canary_uid: String::new(),
    }
}

/// A service at rest on r1 with 4 replicas.
fn idle() -> CanaryStatus {
    CanaryStatus {
        phase: Phase::Idle,
        stable_revision: Some("r1".into()),
        desired_replicas: Some(4),
        ..Default::default()
    }
}

/// Rolling out r2, at `step` with `weight`, the step having started at `step_started`.
fn progressing(step: u32, weight: u8, step_started: i64) -> CanaryStatus {
    CanaryStatus {
        phase: Phase::Progressing,
        canary_revision: Some("r2".into()),
        current_step_index: Some(step),
        canary_weight: weight,
        step_started_at: Some(t(step_started).to_string()),
        canary_updated_at: Some(t(step_started).to_string()),
        rollout_started_at: Some(t(0).to_string()),
        ..idle()
    }
}

/// The Ready condition's status, reason and message (empty when there is none).
fn ready_condition(status: &CanaryStatus) -> (String, String, String) {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn reasons(plan: &Plan) -> Vec<&'static str> {
    plan.events.iter().map(|e| e.reason).collect()
}

fn request(action: RequestAction, id: &str) -> Vec<Result<Request, String>> {
    vec![Ok(Request {
        action,
        id: id.into(),
        step: None,
    })]
}

#[test]
fn initialization_creates_stable_then_takes_the_service_over() {
    let status = CanaryStatus::default();
    let mut seen = observed("r1");
    seen.target = Some(Ok(TargetState {
        replicas: 4,
        ..target("r1")
    }));
    seen.stable = None;
    let first = plan(&spec(serde_json::json!({})), &status, &seen, t(0));
    assert_eq!(first.status.phase, Phase::Initializing);
    assert_eq!(
        first.actions,
        vec![Action::EnsureStable {
            revision: "r1".into(),
            replicas: 4
        }]
    );
    assert_eq!(first.status.desired_replicas, Some(4));
    assert!(first.requeue_after.is_some());

    seen.stable = Some(ready("r1", 4));
    let second = plan(&spec(serde_json::json!({})), &first.status, &seen, t(5));
    assert_eq!(second.status.phase, Phase::Idle);
    assert_eq!(second.status.stable_revision.as_deref(), Some("r1"));
    assert_eq!(
        second.actions,
        vec![
            Action::SetWeight { weight: 0 },
            Action::EnsureStable {
                revision: "r1".into(),
                replicas: 4
            },
            Action::ScaleTargetToZero,
        ]
    );
}

#[test]
fn a_new_revision_starts_a_rollout_with_a_ready_canary_before_any_traffic() {
    let s = spec(serde_json::json!({}));
    let start = plan(&s, &idle(), &observed("r2"), t(0));
    assert_eq!(start.status.phase, Phase::Progressing);
    assert_eq!(start.status.canary_revision.as_deref(), Some("r2"));
    assert_eq!(reasons(&start), ["RolloutStarted"]);
    assert!(start.actions.contains(&Action::EnsureCanary {
        revision: "r2".into(),
        replicas: 1
    }));
    assert!(start.actions.contains(&Action::SetWeight { weight: 0 }));
    assert_eq!(start.status.canary_weight, 0);

    // Canary pods not ready: no traffic, wait.
    let mut seen = observed("r2");
    seen.canary = Some(not_ready("r2", 1));
    let waiting = plan(&s, &start.status, &seen, t(5));
    assert_eq!(waiting.status.canary_weight, 0);
    assert_eq!(waiting.status.current_step_index, Some(0));
    assert!(
        waiting
            .status
            .message
            .unwrap()
            .contains("waiting for 1 ready canary pods")
    );

    // Ready: 10% goes to the canary, after the canary is ensured; then the timed pause starts.
    seen.canary = Some(ready("r2", 1));
    let weighted = plan(&s, &start.status, &seen, t(10));
    assert_eq!(weighted.status.canary_weight, 10);
    assert_eq!(reasons(&weighted), ["WeightChanged"]);
    assert_eq!(weighted.status.current_step_index, Some(1));
    let set = weighted
        .actions
        .iter()
        .position(|a| a == &Action::SetWeight { weight: 10 })
        .unwrap();
    // The canary already runs its one ready pod: nothing to write before the weight.
    let ensure = weighted
        .actions
        .iter()
        .position(|a| matches!(a, Action::EnsureCanary { .. }));
    assert!(
        ensure.is_none_or(|ensure| ensure < set),
        "{:?}",
        weighted.actions
    );
    assert_eq!(weighted.requeue_after, Some(StdDuration::from_secs(60)));
}

#[test]
fn canary_replicas_follow_the_weight_and_are_never_zero() {
    let cases = [
        (4, 0, 1),
        (4, 10, 1),
        (4, 25, 1),
        (4, 26, 2),
        (4, 50, 2),
        (4, 100, 4),
        (10, 33, 4),
        (0, 50, 1),
        (1, 1, 1),
    ];
    for (desired, weight, expected) in cases {
        assert_eq!(
            canary_replicas(desired, weight),
            expected,
            "{desired} replicas at {weight}%"
        );
    }
}

#[test]
fn steps_advance_on_time_and_wait_for_replicas_for_a_higher_weight() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    // 30 s into the one-minute pause: hold, requeue for the rest.
    let holding = plan(&s, &progressing(1, 10, 0), &seen, t(30));
    assert_eq!(holding.status.current_step_index, Some(1));
    assert_eq!(holding.requeue_after, Some(StdDuration::from_secs(30)));
    // Pause over: 50% needs 2 canary pods; scale up and wait with 10% unchanged.
    let scaling = plan(&s, &progressing(1, 10, 0), &seen, t(61));
    assert_eq!(scaling.status.current_step_index, Some(2));
    assert_eq!(scaling.status.canary_weight, 10);
    assert!(scaling.actions.contains(&Action::EnsureCanary {
        revision: "r2".into(),
        replicas: 2
    }));
    assert!(!scaling.actions.contains(&Action::SetWeight { weight: 50 }));
    // Two ready: 50%, then the step pause without duration waits for a human.
    seen.canary = Some(ready("r2", 2));
    let paused = plan(&s, &scaling.status, &seen, t(70));
    assert_eq!(paused.status.canary_weight, 50);
    assert_eq!(paused.status.phase, Phase::Paused);
    assert_eq!(paused.status.pause_reason, Some(PauseReason::Step));
    assert_eq!(reasons(&paused), ["WeightChanged", "Paused"]);
}

#[test]
fn promote_request_passes_the_step_pause_and_promotion_completes() {
    let s = spec(serde_json::json!({}));
    let mut status = progressing(3, 50, 0);
    status.phase = Phase::Paused;
    status.pause_reason = Some(PauseReason::Step);
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 2));
    seen.requests = request(RequestAction::Promote, "1");
    let promoting = plan(&s, &status, &seen, t(100));
    assert_eq!(promoting.status.phase, Phase::Promoting);
    assert!(promoting.status.last_request.as_ref().unwrap().accepted);
    // Stable is updated first; the canary keeps serving its share meanwhile.
    assert!(promoting.actions.contains(&Action::EnsureStable {
        revision: "r2".into(),
        replicas: 4
    }));
    assert!(
        promoting
            .actions
            .contains(&Action::SetWeight { weight: 50 })
    );

    seen.requests = request(RequestAction::Promote, "1"); // the same request again: ignored
    seen.stable = Some(ready("r2", 4));
    let promoted = plan(&s, &promoting.status, &seen, t(130));
    assert_eq!(promoted.status.phase, Phase::Promoted);
    assert_eq!(promoted.status.stable_revision.as_deref(), Some("r2"));
    assert_eq!(promoted.status.canary_revision, None);
    assert_eq!(promoted.status.canary_weight, 0);
    assert_eq!(reasons(&promoted), ["Promoted"]);
    // All traffic back on stable; the canary's pods outlive their traffic by the scale-down
    // delay (30 s by default), so proxies with the old routes never meet terminating pods.
    assert_eq!(promoted.actions[0], Action::SetWeight { weight: 0 });
    let scales_down = |p: &Plan| p.actions.contains(&Action::ScaleCanary { replicas: 0 });
    assert!(!scales_down(&promoted), "{:?}", promoted.actions);
    assert_eq!(promoted.requeue_after, Some(StdDuration::from_secs(30)));
    seen.requests = Vec::new();
    let early = plan(&s, &promoted.status, &seen, t(159));
    assert!(!scales_down(&early), "{:?}", early.actions);
    let due = plan(&s, &early.status, &seen, t(160));
    assert!(scales_down(&due), "{:?}", due.actions);
    // Planning again on the same facts asks the same (an idempotent action); once the
    // canary has no pods, nothing more.
    assert_eq!(plan(&s, &due.status, &seen, t(160)).status, due.status);
    seen.canary = Some(ready("r2", 0));
    assert!(
        !scales_down(&plan(&s, &due.status, &seen, t(200))),
        "{:?}",
        due.status
    );
}

#[test]
fn a_superseding_revision_takes_traffic_off_the_canary_before_replacing_it() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r3");
    seen.canary = Some(ready("r2", 1));
    let next = plan(&s, &progressing(1, 10, 0), &seen, t(20));
    assert_eq!(next.status.canary_revision.as_deref(), Some("r3"));
    assert_eq!(next.status.current_step_index, Some(0));
    assert_eq!(next.actions[0], Action::SetWeight { weight: 0 });
    assert!(next.actions.contains(&Action::EnsureCanary {
        revision: "r3".into(),
        replicas: 1
    }));
    assert_eq!(reasons(&next), ["RolloutStarted"]);
    assert!(next.events[0].message.contains("superseding r2"));
}

#[test]
fn going_back_to_the_stable_revision_rolls_back() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r1");
    seen.canary = Some(ready("r2", 1));
    let back = plan(&s, &progressing(1, 10, 0), &seen, t(20));
    assert_eq!(back.status.phase, Phase::RolledBack);
    assert_eq!(
        back.status.rollback_reason,
        Some(RollbackReason::TargetReverted)
    );
    assert_eq!(back.actions[0], Action::SetWeight { weight: 0 });
}

#[test]
fn abort_puts_all_traffic_on_stable_first_and_is_remembered() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 2));
    seen.requests = request(RequestAction::Abort, "a1");
    let aborted = plan(&s, &progressing(2, 50, 0), &seen, t(20));
    assert_eq!(aborted.actions[0], Action::SetWeight { weight: 0 });
    // Without a scale-down delay the canary's pods go at once, after the traffic.
    let at_once = spec(serde_json::json!({"scaleDownDelaySeconds": 0}));
    let immediate = plan(&at_once, &progressing(2, 50, 0), &seen, t(20));
    assert_eq!(
        immediate.actions[..2],
        [
            Action::SetWeight { weight: 0 },
            Action::ScaleCanary { replicas: 0 }
        ]
    );
    assert_eq!(aborted.status.phase, Phase::RolledBack);
    assert_eq!(aborted.status.failed_revision.as_deref(), Some("r2"));
    assert_eq!(
        reasons(&aborted),
        ["AbortRequested", "Aborted", "RolledBack"]
    );

    // The same revision is not rolled out again by itself...
    seen.requests = request(RequestAction::Abort, "a1");
    let later = plan(&s, &aborted.status, &seen, t(40));
    assert_eq!(later.status.phase, Phase::RolledBack);
    assert!(later.events.is_empty());
    assert!(
        !later
            .actions
            .iter()
            .any(|a| matches!(a, Action::EnsureCanary { .. }))
    );
    // ...but `retry` does.
    seen.requests = request(RequestAction::Retry, "r-1");
    let retried = plan(&s, &later.status, &seen, t(60));
    assert_eq!(retried.status.phase, Phase::Progressing);
    assert_eq!(reasons(&retried), ["RetryRequested", "RolloutStarted"]);
}

#[test]
fn abort_during_promotion_restores_the_previous_stable_revision() {
    let s = spec(serde_json::json!({}));
    let mut status = progressing(4, 50, 0);
    status.phase = Phase::Promoting;
    let mut seen = observed("r2");
    seen.stable = Some(not_ready("r2", 4)); // stable is part-way to r2
    seen.canary = Some(ready("r2", 2));
    seen.requests = request(RequestAction::Abort, "x");
    let aborting = plan(&s, &status, &seen, t(20));
    assert_eq!(aborting.status.phase, Phase::RollingBack);
    assert_eq!(aborting.actions[0], Action::SetWeight { weight: 0 });
    assert!(aborting.actions.contains(&Action::EnsureStable {
        revision: "r1".into(),
        replicas: 4
    }));
    // Stable back on r1 and ready: done.
    seen.stable = Some(ready("r1", 4));
    seen.requests = Vec::new();
    let done = plan(&s, &aborting.status, &seen, t(40));
    assert_eq!(done.status.phase, Phase::RolledBack);
    assert_eq!(done.status.stable_revision.as_deref(), Some("r1"));
}

#[test]
fn a_canary_that_never_becomes_ready_hits_the_progress_deadline() {
    let s = spec(serde_json::json!({"progressDeadlineSeconds": 60}));
    let mut seen = observed("r2");
    seen.canary = Some(not_ready("r2", 1));
    let mut status = progressing(0, 0, 0);
    for (at, phase) in [
        (0, Phase::Progressing),
        (30, Phase::Progressing),
        (61, Phase::RolledBack),
    ] {
        let p = plan(&s, &status, &seen, t(at));
        assert_eq!(p.status.phase, phase, "at {at}s");
        if phase == Phase::RolledBack {
            assert_eq!(
                p.status.rollback_reason,
                Some(RollbackReason::ProgressDeadlineExceeded)
            );
            assert_eq!(reasons(&p), ["ProgressDeadlineExceeded", "RolledBack"]);
        }
        status = p.status;
    }
}

#[test]
fn the_progress_deadline_counts_from_when_the_canary_stopped_being_ready() {
    // At 50% in a 30-minute pause step, the canary last scaled 15 minutes ago; paused by a
    // request or not, a lost pod gets the whole deadline to come back.
    let s = spec(serde_json::json!({
        "progressDeadlineSeconds": 60,
        "steps": [{"setWeight": 50}, {"pause": {"duration": "30m"}}],
    }));
    for paused in [false, true] {
        let mut status = progressing(1, 50, 0);
        if paused {
            status.phase = Phase::Paused;
            status.pause_reason = Some(PauseReason::Manual);
        }
        let expected_phase = status.phase;
        let mut seen = observed("r2");
        let at = |seen: &Observed, status: &mut CanaryStatus, second: i64| {
            let p = plan(&s, status, seen, t(second));
            *status = p.status.clone();
            p
        };
        seen.canary = Some(ready("r2", 2));
        at(&seen, &mut status, 900);
        seen.canary = Some(WorkloadState {
            ready_replicas: 1,
            ..ready("r2", 2)
        });
        let lost = at(&seen, &mut status, 901);
        assert_eq!(
            lost.status.phase, expected_phase,
            "paused {paused}: not at once"
        );
        assert_eq!(
            lost.status.canary_unready_since.as_deref(),
            Some(t(901).to_string().as_str())
        );
        // Back within the deadline: the clock stops.
        seen.canary = Some(ready("r2", 2));
        let back = at(&seen, &mut status, 950);
        assert_eq!(back.status.canary_unready_since, None);
        // Lost again, for longer than the deadline this time.
        seen.canary = Some(not_ready("r2", 2));
        assert_eq!(at(&seen, &mut status, 1000).status.phase, expected_phase);
        let p = at(&seen, &mut status, 1061);
        assert_eq!(p.status.phase, Phase::RolledBack, "paused {paused}");
        assert_eq!(
            p.status.rollback_reason,
            Some(RollbackReason::ProgressDeadlineExceeded)
        );
    }
}

#[test]
fn a_service_scaled_mid_step_scales_the_canary_with_it() {
    // 4 → 8 replicas during the pause step at 50%: the canary needs 4 pods, not 2.
    let s = spec(serde_json::json!({
        "progressDeadlineSeconds": 60,
        "steps": [{"setWeight": 50}, {"pause": {"duration": "30m"}}],
    }));
    let mut status = progressing(1, 50, 0);
    status.desired_replicas = Some(8);
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 2));
    let p = plan(&s, &status, &seen, t(900));
    assert!(
        p.actions.contains(&Action::EnsureCanary {
            revision: "r2".into(),
            replicas: 4
        }),
        "{:?}",
        p.actions
    );
    assert_eq!(p.status.canary_updated_at, Some(t(900).to_string()));
    assert_eq!(p.status.phase, Phase::Progressing);
    // Sized and ready: nothing more to do.
    seen.canary = Some(ready("r2", 4));
    let settled = plan(&s, &p.status, &seen, t(930));
    assert!(
        !settled
            .actions
            .iter()
            .any(|a| matches!(a, Action::EnsureCanary { .. })),
        "{:?}",
        settled.actions
    );
}

fn analysis_spec(on_failure: &str) -> CanarySpec {
    spec(serde_json::json!({
        "steps": [
            {"setWeight": 10},
            {"analysis": {"templates": [{"templateName": "success"}]}},
            {"setWeight": 50},
        ],
        "onAnalysisFailure": on_failure,
    }))
}

fn definitions(run: &str, count: u32) -> Result<BTreeMap<String, Vec<MetricDefinition>>, String> {
    Ok(BTreeMap::from([(
        run.to_string(),
        vec![MetricDefinition {
            template: "success".into(),
            name: "success-rate".into(),
            interval: StdDuration::from_secs(10),
            initial_delay: StdDuration::ZERO,
            limits: Limits {
                count: Some(count),
                failure_limit: 0,
                inconclusive_limit: 0,
                consecutive_error_limit: 2,
            },
            dry_run: false,
            compare: None,
        }],
    )]))
}

fn measurement(run: &str, at: i64, phase: MeasurementPhase) -> NewMeasurement {
    NewMeasurement {
        run: run.into(),
        metric: "success-rate".into(),
        measurement: MeasurementStatus {
            time: t(at).to_string(),
            phase,
            value: Some("0.99".into()),
            reason: "test".into(),
        },
        compare: None,
    }
}

/// Drives an analysis step with the given measurements, one reconcile each, 10 s apart.
fn drive_analysis(on_failure: &str, phases: &[MeasurementPhase]) -> Vec<Plan> {
    let s = analysis_spec(on_failure);
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = definitions("step-1", 2);
    let mut status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    assert_eq!(
        due_measurements(&status, t(0)),
        vec![("step-1".to_string(), "success-rate".to_string())]
    );
    let mut plans = Vec::new();
    for (i, phase) in phases.iter().enumerate() {
        let at = 10 * i as i64;
        assert_eq!(
            due_measurements(&status, t(at)).len(),
            1,
            "measurement {i} is due"
        );
        seen.measurements = vec![measurement("step-1", at, *phase)];
        let p = plan(&s, &status, &seen, t(at + 1));
        status = p.status.clone();
        plans.push(p);
    }
    plans
}

#[test]
fn an_analysis_step_advances_only_on_success() {
    use MeasurementPhase::*;
    let plans = drive_analysis("rollback", &[Successful, Successful]);
    assert_eq!(
        plans[0].status.current_step_index,
        Some(1),
        "one of two measurements: wait"
    );
    let last = plans.last().unwrap();
    assert_eq!(reasons(last), ["AnalysisPassed"]);
    assert_eq!(last.status.current_step_index, Some(2));
    let run = &last.status.analysis_runs[0];
    assert_eq!(
        (run.name.as_str(), run.phase),
        ("step-1", AnalysisPhase::Successful)
    );
    assert_eq!(run.metrics[0].measurements.len(), 2);
}

#[test]
fn analysis_outcomes_follow_the_policy() {
    use MeasurementPhase::*;
    let cases: [(&str, Vec<MeasurementPhase>, Phase, Vec<&str>); 5] = [
        (
            "rollback",
            vec![Failed],
            Phase::RolledBack,
            vec!["AnalysisFailed", "RollingBack", "RolledBack"],
        ),
        (
            "pause",
            vec![Failed],
            Phase::Paused,
            vec!["AnalysisFailed", "Paused"],
        ),
        (
            "rollback",
            vec![Inconclusive],
            Phase::Paused,
            vec!["Paused"],
        ),
        // Prometheus unreachable: errors are retried, then the policy decides; never a promotion.
        ("rollback", vec![Error, Error], Phase::Progressing, vec![]),
        (
            "rollback",
            vec![Error, Error, Error],
            Phase::RolledBack,
            vec!["MetricsUnavailable", "RollingBack", "RolledBack"],
        ),
    ];
    for (policy, phases, expected, expected_reasons) in cases {
        let plans = drive_analysis(policy, &phases);
        let last = plans.last().unwrap();
        assert_eq!(last.status.phase, expected, "{policy} {phases:?}");
        assert_eq!(reasons(last), expected_reasons, "{policy} {phases:?}");
        assert!(
            plans
                .iter()
                .all(|p| p.status.current_step_index <= Some(1)
                    || p.status.phase == Phase::RolledBack)
        );
        if expected == Phase::Paused {
            assert!(
                last.status
                    .message
                    .as_ref()
                    .unwrap()
                    .contains("success-rate"),
                "the reason names the metric"
            );
        }
    }
}

/// Drives an analysis step whose every measurement is the error `reason`.
fn drive_errors(on_failure: &str, reason: &str) -> Vec<Plan> {
    let s = analysis_spec(on_failure);
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = definitions("step-1", 2);
    let mut status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    let mut plans = Vec::new();
    for i in 0..3 {
        let mut m = measurement("step-1", 10 * i, MeasurementPhase::Error);
        m.measurement.value = None;
        m.measurement.reason = reason.into();
        seen.measurements = vec![m];
        let p = plan(&s, &status, &seen, t(10 * i + 1));
        status = p.status.clone();
        plans.push(p);
    }
    plans
}

#[test]
fn an_unreachable_metrics_source_rolls_back_as_metrics_unavailable_not_as_a_bad_canary() {
    let unreachable = "Prometheus at http://127.0.0.1:9 is unreachable: connection refused; check the address and that Prometheus is running";
    // (policy, phase, rollback reason, pause reason, events of the last plan)
    let cases = [
        (
            "rollback",
            Phase::RolledBack,
            Some(RollbackReason::MetricsUnavailable),
            None,
            vec!["MetricsUnavailable", "RollingBack", "RolledBack"],
        ),
        (
            "pause",
            Phase::Paused,
            None,
            Some(PauseReason::AnalysisFailed),
            vec!["MetricsUnavailable", "Paused"],
        ),
    ];
    for (policy, phase, rollback, pause, events) in cases {
        let plans = drive_errors(policy, unreachable);
        let last = plans.last().unwrap();
        assert!(
            plans[..2]
                .iter()
                .all(|p| p.status.phase == Phase::Progressing),
            "{policy}: errors within consecutiveErrorLimit are retried"
        );
        assert_eq!(last.status.phase, phase, "{policy}");
        assert_eq!(last.status.rollback_reason, rollback, "{policy}");
        assert_eq!(last.status.pause_reason, pause, "{policy}");
        assert_eq!(reasons(last), events, "{policy}");
        let event = last
            .events
            .iter()
            .find(|e| e.reason == "MetricsUnavailable")
            .unwrap();
        assert_eq!(event.kind, EventType::Warning);
        // The event and the final status name the source and the error, and the metric.
        for text in [&event.message, last.status.message.as_ref().unwrap()] {
            for part in [
                "http://127.0.0.1:9",
                "connection refused",
                "success-rate",
                "not promoted without data",
            ] {
                assert!(text.contains(part), "{policy}: {part:?} in {text:?}");
            }
        }
    }
}

#[test]
fn status_names_the_target_revision_the_controller_planned_for_even_when_it_refuses_it() {
    let s = analysis_spec("rollback");
    let mut seen = observed("r2");
    seen.analysis = Err("AnalysisTemplate ns/success does not exist: create it".into());
    let refused = plan(&s, &idle(), &seen, t(0));
    assert_eq!(refused.status.phase, Phase::Idle);
    assert_eq!(refused.status.canary_revision, None);
    assert_eq!(refused.status.target_revision.as_deref(), Some("r2"));
    let (ready, reason, _) = ready_condition(&refused.status);
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    let at_rest = plan(&s, &idle(), &observed("r1"), t(0));
    assert_eq!(at_rest.status.target_revision.as_deref(), Some("r1"));
}

#[test]
fn failing_background_analysis_rolls_back_during_a_pause() {
    let s = spec(serde_json::json!({
        "analysis": {"templates": [{"templateName": "success"}], "startingStep": 1},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = definitions("background", 5);
    let started = plan(&s, &progressing(1, 10, 0), &seen, t(0));
    assert_eq!(started.status.analysis_runs[0].name, "background");
    seen.measurements = vec![measurement("background", 0, MeasurementPhase::Failed)];
    let failed = plan(&s, &started.status, &seen, t(1));
    assert_eq!(failed.status.phase, Phase::RolledBack);
    assert_eq!(
        failed.status.rollback_reason,
        Some(RollbackReason::AnalysisFailed)
    );
}

#[test]
fn requests_that_do_not_apply_are_refused_with_a_reason() {
    let s = spec(serde_json::json!({}));
    let cases: [(CanaryStatus, RequestAction, &str); 4] = [
        (idle(), RequestAction::Promote, "no rollout is under way"),
        (idle(), RequestAction::Abort, "no rollout is under way"),
        (idle(), RequestAction::Retry, "no rolled-back revision"),
        (progressing(1, 10, 0), RequestAction::Resume, "not paused"),
    ];
    for (status, action, why) in cases {
        let mut seen = observed(status.canary_revision.as_deref().unwrap_or("r1"));
        seen.canary = Some(ready("r2", 1));
        seen.requests = request(action, "q");
        let p = plan(&s, &status, &seen, t(5));
        let answer = p.status.last_request.unwrap();
        assert!(!answer.accepted, "{action:?}");
        assert!(
            answer.message.contains(why),
            "{action:?}: {}",
            answer.message
        );
        assert_eq!(p.status.phase, status.phase, "{action:?}");
    }
    let mut seen = observed("r1");
    seen.requests = vec![Err("unknown action \"explode\"".into())];
    let p = plan(&s, &idle(), &seen, t(5));
    assert_eq!(reasons(&p), ["InvalidRequest"]);
}

#[test]
fn pause_and_resume_by_request() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.requests = request(RequestAction::Pause, "p");
    let paused = plan(&s, &progressing(1, 10, 0), &seen, t(10));
    assert_eq!(paused.status.phase, Phase::Paused);
    assert_eq!(paused.status.pause_reason, Some(PauseReason::Manual));
    // Time passes while paused: the timed pause does not complete.
    seen.requests = request(RequestAction::Pause, "p");
    assert_eq!(
        plan(&s, &paused.status, &seen, t(500)).status.phase,
        Phase::Paused
    );
    seen.requests = request(RequestAction::Resume, "r");
    let resumed = plan(&s, &paused.status, &seen, t(500));
    assert_eq!(resumed.status.phase, Phase::Progressing);
    assert_eq!(
        resumed.status.current_step_index,
        Some(1),
        "the pause step restarts its timer"
    );
    assert_eq!(resumed.requeue_after, Some(StdDuration::from_secs(60)));
}

#[test]
fn resume_does_not_open_an_approval_gate_promote_does() {
    let s = spec(serde_json::json!({}));
    // At the `pause: {}` step (index 3 of 4).
    let gate = CanaryStatus {
        phase: Phase::Paused,
        pause_reason: Some(PauseReason::Step),
        ..progressing(3, 50, 0)
    };
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 2));
    seen.requests = request(RequestAction::Resume, "r");
    let refused = plan(&s, &gate, &seen, t(100));
    let answer = refused.status.last_request.clone().unwrap();
    assert!(!answer.accepted, "{answer:?}");
    assert!(
        answer
            .message
            .contains("resume does not apply: the rollout waits at an approval gate (pause step 4/4): `canary promote` passes it"),
        "{}",
        answer.message
    );
    assert_eq!(refused.status.phase, Phase::Paused, "the gate stays closed");
    assert_eq!(refused.status.pause_reason, Some(PauseReason::Step));
    assert_eq!(refused.status.current_step_index, Some(3));
    // Planned again with the answered request still annotated: still closed.
    let again = plan(&s, &refused.status, &seen, t(200));
    assert_eq!(
        (again.status.phase, again.status.current_step_index),
        (Phase::Paused, Some(3))
    );
    // Promote passes it.
    seen.requests = request(RequestAction::Promote, "p");
    let passed = plan(&s, &again.status, &seen, t(300));
    assert!(passed.status.last_request.unwrap().accepted);
    assert_eq!(passed.status.phase, Phase::Promoting);
    // Resume still ends a pause asked for by `canary pause`.
    let manual = CanaryStatus {
        pause_reason: Some(PauseReason::Manual),
        ..gate
    };
    seen.requests = request(RequestAction::Resume, "r2");
    let resumed = plan(&s, &manual, &seen, t(100));
    assert!(resumed.status.last_request.unwrap().accepted);
    assert_ne!(resumed.status.pause_reason, Some(PauseReason::Manual));
}

#[test]
fn the_step_is_counted_from_one_and_the_revision_is_never_empty() {
    // (index, steps, shown)
    for (index, total, shown) in [(0, 6, "1/6"), (3, 6, "4/6"), (5, 6, "6/6"), (6, 6, "6/6")] {
        assert_eq!(step_display(index, total), shown, "{index} of {total}");
    }
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    // At the timed pause, index 1 of 4.
    let p = plan(&s, &progressing(1, 10, 0), &seen, t(5));
    assert_eq!(p.status.current_step_index, Some(1));
    assert_eq!(p.status.step_display.as_deref(), Some("2/4"));
    assert_eq!(p.status.revision.as_deref(), Some("r2"), "the canary's");
    // Nothing in flight: no step, and the revision is stable's.
    let at_rest = plan(&s, &idle(), &observed("r1"), t(5));
    assert_eq!(at_rest.status.step_display, None);
    assert_eq!(at_rest.status.revision.as_deref(), Some("r1"), "stable's");
}

#[test]
fn a_missing_template_touches_no_traffic() {
    let s = spec(serde_json::json!({"analysis": {"templates": [{"templateName": "nope"}]}}));
    let mut seen = observed("r2");
    seen.analysis =
        Err("AnalysisTemplate shop/nope (spec.analysis.templates[0]) does not exist".into());
    let p = plan(&s, &idle(), &seen, t(0));
    assert_eq!(p.status.phase, Phase::Idle);
    assert_eq!(reasons(&p), ["InvalidSpec"]);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::EnsureCanary { .. }))
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::SetWeight { weight } if *weight > 0))
    );
    let (ready, reason, _) = ready_condition(&p.status);
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    // The event is not repeated at every reconcile.
    assert!(plan(&s, &p.status, &seen, t(10)).events.is_empty());
}

#[test]
fn a_missing_target_sends_traffic_to_stable_and_fails() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.target = None;
    let p = plan(&s, &progressing(1, 10, 0), &seen, t(0));
    assert_eq!(p.status.phase, Phase::Failed);
    assert_eq!(p.actions[0], Action::SetWeight { weight: 0 });
    assert!(
        p.status
            .message
            .unwrap()
            .contains("Deployment web (spec.targetRef) does not exist")
    );
}

#[test]
fn suspend_and_skip_analysis() {
    let suspended = plan(
        &spec(serde_json::json!({"suspend": true})),
        &idle(),
        &observed("r2"),
        t(0),
    );
    assert_eq!(suspended.status.phase, Phase::Idle);
    assert!(suspended.status.message.unwrap().contains("suspended"));

    let skip = plan(
        &spec(serde_json::json!({"skipAnalysis": true})),
        &idle(),
        &observed("r2"),
        t(0),
    );
    assert_eq!(skip.status.phase, Phase::Promoting);
    assert!(skip.actions.contains(&Action::EnsureStable {
        revision: "r2".into(),
        replicas: 4
    }));
    assert!(
        !skip
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetWeight { weight } if *weight > 0))
    );
}

#[test]
fn planning_again_on_the_same_facts_changes_nothing() {
    // Restart safety: a controller that plans twice on the same status and observations (e.g.
    // after a restart) makes the same decision, raises no new events and writes the same status.
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    let states = [idle(), progressing(1, 10, 0), progressing(3, 50, 0)];
    for status in states {
        let first = plan(&s, &status, &seen, t(30));
        let second = plan(&s, &first.status, &seen, t(30));
        assert_eq!(second.status, first.status, "{:?}", status.phase);
        assert!(
            second.events.is_empty(),
            "{:?}: {:?}",
            status.phase,
            second.events
        );
    }
}

// -- compare metrics: evidence-driven rollback and progression -----------------------------

fn compare_definitions(run: &str) -> Result<BTreeMap<String, Vec<MetricDefinition>>, String> {
    Ok(BTreeMap::from([(
        run.to_string(),
        vec![MetricDefinition {
            template: "compare".into(),
            name: "error-rate".into(),
            interval: StdDuration::from_secs(10),
            initial_delay: StdDuration::ZERO,
            limits: Limits {
                count: None,
                failure_limit: 0,
                inconclusive_limit: 0,
                consecutive_error_limit: 2,
            },
            dry_run: false,
            compare: Some(CompareSetup {
                kind: CompareKind::ErrorRate,
                config: SequentialConfig::default(),
            }),
        }],
    )]))
}

/// A compare interval: canary and stable `[requests, errors]` at 10% canary traffic.
fn compare_measurement(run: &str, at: i64, canary_errors: u64) -> NewMeasurement {
    NewMeasurement {
        run: run.into(),
        metric: "error-rate".into(),
        measurement: MeasurementStatus {
            time: t(at).to_string(),
            phase: MeasurementPhase::Successful,
            value: None,
            reason: String::new(),
        },
        compare: Some(Ok(MeasuredInterval {
            counts: IntervalCounts {
                canary: vec![100_000, canary_errors],
                stable: vec![900_000, 4_500],
                pods: None,
            },
            boundaries: Vec::new(),
        })),
    }
}

/// Rolls out with a background compare analysis over a 10-minute pause at 10%, measuring every
/// 10 s with `canary_errors` per 100,000 canary requests (stable: 0.5%); returns each plan.
fn drive_compare(extra: serde_json::Value, canary_errors: u64, intervals: usize) -> Vec<Plan> {
    let mut spec_json = serde_json::json!({
        "steps": [
            {"setWeight": 10},
            {"pause": {"duration": "10m"}},
            {"setWeight": 50},
            {"pause": {"duration": "10m"}},
        ],
        "analysis": {"templates": [{"templateName": "compare"}], "startingStep": 1},
    });
    spec_json
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let s = spec(spec_json);
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = compare_definitions(BACKGROUND);
    let mut status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    let mut plans = Vec::new();
    for i in 1..=intervals {
        let at = 10 * i as i64;
        seen.measurements = vec![compare_measurement(BACKGROUND, at, canary_errors)];
        let p = plan(&s, &status, &seen, t(at));
        status = p.status.clone();
        let done = p.status.current_step_index != Some(1) || p.status.phase != Phase::Progressing;
        plans.push(p);
        if done {
            break;
        }
    }
    plans
}

#[test]
fn a_regressed_compare_metric_fails_the_rollout_by_policy() {
    // ×5 errors (2.5% against 0.5%).
    let cases = [
        (
            "rollback",
            Phase::RolledBack,
            vec!["AnalysisFailed", "RollingBack", "RolledBack"],
        ),
        ("pause", Phase::Paused, vec!["AnalysisFailed", "Paused"]),
    ];
    for (policy, expected, expected_reasons) in cases {
        let plans = drive_compare(serde_json::json!({"onAnalysisFailure": policy}), 2_500, 30);
        let last = plans.last().unwrap();
        assert_eq!(last.status.phase, expected, "{policy}");
        assert_eq!(reasons(last), expected_reasons, "{policy}");
        assert_eq!(
            plans.len(),
            1,
            "{policy}: one interval of ×5 errors at 100k requests is enough"
        );
        let metric = &last.status.analysis_runs[0].metrics[0];
        let compare = metric.compare.as_ref().unwrap();
        let assessment = compare.assessment.as_ref().unwrap();
        assert_eq!(assessment.verdict, Verdict::Regressed);
        assert!(assessment.ratio_interval.lower > 1.1, "{assessment:?}");
        assert_eq!(compare.record.intervals.len(), 1);
        assert_eq!(metric.measurements[0].phase, MeasurementPhase::Failed);
        let failed = last
            .events
            .iter()
            .find(|e| e.reason == "AnalysisFailed")
            .unwrap();
        assert!(
            failed.message.contains("regressed, roll back"),
            "the event carries the explanation: {:?}",
            failed.message
        );
    }
}

#[test]
fn no_regression_ends_a_pause_early_but_not_before_the_minimum_step_time() {
    // Healthy: 0.5% on both sides. NoRegression needs several intervals; the pause is 10 min.
    let cases = [
        // (minStepDuration, expected seconds into the step when it ends early)
        (
            serde_json::json!({"analysis": {"templates": [{"templateName": "compare"}], "startingStep": 1, "minStepDuration": "10s"}}),
            None,
        ),
        (
            serde_json::json!({"analysis": {"templates": [{"templateName": "compare"}], "startingStep": 1, "minStepDuration": "4m"}}),
            Some(240),
        ),
    ];
    for (extra, ends_at) in cases {
        let plans = drive_compare(extra.clone(), 500, 60);
        let last = plans.last().unwrap();
        assert_eq!(
            last.status.current_step_index,
            Some(2),
            "{extra}: stepped up early"
        );
        assert_eq!(
            last.status.canary_weight, 10,
            "the next setWeight step follows"
        );
        assert!(
            reasons(last).contains(&"AnalysisPassed"),
            "{:?}",
            reasons(last)
        );
        let at = 10 * plans.len() as i64;
        assert!(at < 600, "{extra}: before the pause's 10 minutes");
        let compare = last.status.analysis_runs[0].metrics[0]
            .compare
            .as_ref()
            .unwrap();
        assert_eq!(
            compare.assessment.as_ref().unwrap().verdict,
            Verdict::NoRegression
        );
        let decided_at = plans
            .iter()
            .position(|p| {
                p.status.analysis_runs[0].metrics[0]
                    .compare
                    .as_ref()
                    .and_then(|c| c.assessment.as_ref())
                    .is_some_and(|a| a.verdict == Verdict::NoRegression)
            })
            .map(|i| 10 * (i as i64 + 1))
            .unwrap();
        match ends_at {
            // The evidence came after the minimum: the step ends with it.
            None => {
                assert!(decided_at > 10, "{decided_at}");
                assert_eq!(at, decided_at);
            }
            // The evidence came first: the step waits for the minimum, and says when.
            Some(minimum) => {
                assert!(decided_at < minimum, "{decided_at}");
                assert_eq!(at, minimum);
                let before = &plans[plans.len() - 2];
                assert_eq!(before.status.current_step_index, Some(1));
                assert!(before.requeue_after.unwrap() <= StdDuration::from_secs(10));
            }
        }
        // The background analysis keeps watching after the step.
        assert_eq!(last.status.analysis_runs[0].phase, AnalysisPhase::Running);
    }
}

#[test]
fn no_regression_needs_evidence_from_the_current_step() {
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 10}, {"pause": {"duration": "10m"}}],
        "analysis": {"templates": [{"templateName": "compare"}], "startingStep": 1, "minStepDuration": "10s"},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = compare_definitions(BACKGROUND);
    let mut status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    for i in 1..=40 {
        seen.measurements = vec![compare_measurement(BACKGROUND, 10 * i, 500)];
        status = plan(&s, &status, &seen, t(10 * i)).status;
        if status.current_step_index != Some(1) {
            break;
        }
    }
    let run = &status.analysis_runs[0];
    assert_eq!(
        run.metrics[0]
            .compare
            .as_ref()
            .unwrap()
            .assessment
            .as_ref()
            .unwrap()
            .verdict,
        Verdict::NoRegression
    );
    // The same status, but the step began after the last interval: no early end.
    let mut later = status.clone();
    later.current_step_index = Some(1);
    later.step_started_at = Some(t(1_000).to_string());
    seen.measurements = Vec::new();
    let held = plan(&s, &later, &seen, t(1_100));
    assert_eq!(held.status.current_step_index, Some(1));
    assert!(!reasons(&held).contains(&"AnalysisPassed"));
}

#[test]
fn a_compare_analysis_step_completes_on_no_regression() {
    let s = spec(serde_json::json!({
        "steps": [
            {"setWeight": 10},
            {"analysis": {"templates": [{"templateName": "compare"}]}},
            {"setWeight": 50},
        ],
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = compare_definitions("step-1");
    let mut status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    let mut steps = 0;
    for i in 1..=60 {
        seen.measurements = vec![compare_measurement("step-1", 10 * i, 500)];
        let p = plan(&s, &status, &seen, t(10 * i));
        status = p.status;
        steps = i;
        if status.current_step_index != Some(1) {
            assert_eq!(reasons_of(&p.events), ["AnalysisPassed"]);
            break;
        }
    }
    // On to the 50% step, which waits for its canary pods.
    assert_eq!(status.current_step_index, Some(2));
    assert!(steps < 60, "no count: only the evidence ended the step");
    assert_eq!(status.analysis_runs[0].phase, AnalysisPhase::Successful);
}

fn reasons_of(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.reason).collect()
}

#[test]
fn the_analysis_is_needed_unless_a_settled_canary_runs_the_stable_revision() {
    let settled = |phase: Phase| CanaryStatus { phase, ..idle() };
    // (status, target revision, needed)
    let cases = [
        (settled(Phase::Idle), Some("r1"), false),
        (settled(Phase::Promoted), Some("r1"), false),
        (settled(Phase::RolledBack), Some("r1"), false),
        (settled(Phase::Idle), Some("r2"), true),
        (settled(Phase::Promoted), Some("r2"), true),
        (settled(Phase::RolledBack), Some("r2"), true),
        (settled(Phase::Idle), None, true),
        (settled(Phase::Failed), Some("r1"), true),
        (settled(Phase::Initializing), Some("r1"), true),
        (progressing(1, 10, 0), Some("r2"), true),
        (settled(Phase::Paused), Some("r1"), true),
    ];
    for (status, target, needed) in cases {
        assert_eq!(
            needs_analysis(&status, target),
            needed,
            "{:?} with target {target:?}",
            status.phase
        );
    }
    // Where it says no, the plan uses the analysis only to say it is broken: an invalid one
    // changes nothing that is done for a settled Canary on the stable revision.
    let mut seen = observed("r1");
    seen.analysis = Err("template missing".into());
    let with_invalid = plan(&spec(serde_json::json!({})), &idle(), &seen, t(0));
    let with_valid = plan(&spec(serde_json::json!({})), &idle(), &observed("r1"), t(0));
    assert_eq!(with_invalid.actions, with_valid.actions);
    assert_eq!(with_invalid.status.phase, with_valid.status.phase);
    assert_eq!(reasons(&with_invalid), ["InvalidSpec"]);
}

#[test]
fn the_next_compare_interval_starts_to_the_nanosecond_where_the_last_ended() {
    // The controller reuses the counter readings of an interval's end only for the very same
    // instant, so the start read back from status must not lose precision.
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 10}, {"pause": {"duration": "10m"}}],
        "analysis": {"templates": [{"templateName": "compare"}], "startingStep": 1},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = compare_definitions(BACKGROUND);
    let status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    let end = t(10) + jiff::SignedDuration::from_nanos(123_456_789);
    let mut measured = compare_measurement(BACKGROUND, 10, 500);
    measured.measurement.time = end.to_string();
    seen.measurements = vec![measured];
    let status = plan(&s, &status, &seen, end).status;
    let interval = StdDuration::from_secs(10);
    let later = end + jiff::SignedDuration::from_secs(10);
    assert_eq!(
        compare_window_start(&status, BACKGROUND, "error-rate", interval, later),
        end
    );
}

/// Steps [setWeight 10, setWeight 50] with a background analysis from the start; the canary
/// is ready for 50%, so the walk reaches the end of the steps in the first reconcile.
fn at_the_end_of_the_steps() -> (CanarySpec, Observed, CanaryStatus) {
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 10}, {"setWeight": 50}],
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 2));
    seen.analysis = definitions("background", 100);
    let first = plan(&s, &progressing(1, 10, 0), &seen, t(0));
    (s, seen, first.status)
}

#[test]
fn promotion_needs_a_background_analysis_that_passed_not_one_that_never_measured() {
    use MeasurementPhase::*;
    // (measurements taken before the end of the steps is judged, phase afterwards)
    let cases: [(&[MeasurementPhase], Phase); 6] = [
        // Prometheus never answered, no data yet, or an initialDelay longer than the steps.
        (&[], Phase::Progressing),
        (&[Error, Error], Phase::Progressing),
        // The error limit ends the run: the policy (rollback) decides, never a promotion.
        (&[Error, Error, Error], Phase::RolledBack),
        (&[Successful], Phase::Promoting),
        (&[Error, Successful], Phase::Promoting),
        (&[Failed], Phase::RolledBack),
    ];
    for (phases, expected) in cases {
        let (s, mut seen, mut status) = at_the_end_of_the_steps();
        assert_eq!(status.phase, Phase::Progressing, "{phases:?}");
        assert_eq!(status.current_step_index, Some(2), "{phases:?}");
        let mut at = 0;
        for phase in phases {
            at += 10;
            seen.measurements = vec![measurement("background", at, *phase)];
            status = plan(&s, &status, &seen, t(at)).status;
        }
        seen.measurements.clear();
        let p = plan(&s, &status, &seen, t(at + 1));
        assert_eq!(
            p.status.phase, expected,
            "{phases:?}: {:?}",
            p.status.message
        );
        if expected == Phase::Progressing {
            let message = p.status.message.as_deref().unwrap();
            assert!(
                message.contains("waits for") && message.contains("success-rate"),
                "{message}"
            );
            assert_eq!(
                p.status.canary_weight, 50,
                "the canary keeps its share meanwhile"
            );
            assert!(p.requeue_after.is_some(), "the next measurement is awaited");
        }
        if expected == Phase::Promoting {
            let run = &p.status.analysis_runs[0];
            assert_eq!(run.phase, AnalysisPhase::Successful, "{phases:?}");
            assert!(
                due_measurements(&p.status, t(at + 1000)).is_empty(),
                "a concluded analysis measures no more"
            );
        }
    }
}

#[test]
fn a_background_analysis_without_usable_data_pauses_at_the_end_instead_of_promoting() {
    // Every interval Inconclusive (no data) within the limit: at the end the run has no pass,
    // and concluding it says so. Here the limit is 0, so the first one ends the run.
    let (s, mut seen, status) = at_the_end_of_the_steps();
    seen.measurements = vec![measurement(
        "background",
        10,
        MeasurementPhase::Inconclusive,
    )];
    let p = plan(&s, &status, &seen, t(10));
    assert_eq!(p.status.phase, Phase::Paused);
    assert_eq!(
        p.status.pause_reason,
        Some(PauseReason::AnalysisInconclusive)
    );
    // `promote` overrides the verdict but not the analysis: it starts afresh and must pass.
    seen.measurements.clear();
    seen.requests = request(RequestAction::Promote, "p1");
    let promoted = plan(&s, &p.status, &seen, t(20));
    assert_eq!(promoted.status.phase, Phase::Progressing);
    let run = &promoted.status.analysis_runs[0];
    assert_eq!(
        (run.phase, run.metrics[0].tally.measured),
        (AnalysisPhase::Pending, 0)
    );
    seen.requests = request(RequestAction::Promote, "p1");
    seen.measurements = vec![measurement("background", 30, MeasurementPhase::Successful)];
    let done = plan(&s, &promoted.status, &seen, t(30));
    assert_eq!(done.status.phase, Phase::Promoting);
}

#[test]
fn changed_templates_restart_a_running_analysis() {
    let (s, mut seen, status) = at_the_end_of_the_steps();
    seen.measurements = vec![measurement("background", 10, MeasurementPhase::Error)];
    let measured = plan(&s, &status, &seen, t(10)).status;
    assert_eq!(measured.analysis_runs[0].metrics[0].tally.errors, 1);
    // The template now defines another metric: the old one can never be measured again.
    let mut renamed = definitions("background", 100).unwrap();
    renamed.get_mut("background").unwrap()[0].name = "error-rate".into();
    seen.analysis = Ok(renamed);
    seen.measurements.clear();
    let p = plan(&s, &measured, &seen, t(11));
    let run = &p.status.analysis_runs[0];
    assert_eq!(run.metrics.len(), 1);
    assert_eq!(
        (run.metrics[0].name.as_str(), run.metrics[0].tally.errors),
        ("error-rate", 0)
    );
    assert_eq!(
        due_measurements(&p.status, t(11)),
        vec![("background".to_string(), "error-rate".to_string())]
    );
}

#[test]
fn an_ended_rollout_measures_nothing_more() {
    let s = spec(serde_json::json!({
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = definitions("background", 100);
    let running = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    assert_eq!(due_measurements(&running, t(0)).len(), 1);
    for action in [RequestAction::Abort, RequestAction::PromoteFull] {
        seen.requests = request(action, "x");
        let ended = plan(&s, &running, &seen, t(1)).status;
        assert!(
            matches!(
                ended.phase,
                Phase::RolledBack | Phase::RollingBack | Phase::Promoting | Phase::Promoted
            ),
            "{action:?}"
        );
        assert!(
            due_measurements(&ended, t(1000)).is_empty(),
            "{action:?}: {:?}",
            ended.analysis_runs
        );
        assert!(ended.analysis_runs[0].message.starts_with("not finished"));
    }
}

#[test]
fn editing_the_steps_mid_rollout_starts_the_walk_again_instead_of_promoting() {
    let four = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 2));
    // At the last step (an indefinite pause) of four, at 50%.
    let paused = plan(&four, &progressing(3, 50, 0), &seen, t(10)).status;
    assert_eq!(paused.phase, Phase::Paused);
    assert!(paused.steps_fingerprint.is_some());
    // The same steps again change nothing.
    assert!(plan(&four, &paused, &seen, t(20)).events.is_empty());
    // Now two steps: index 3 is past their end, which used to mean "promote".
    let two = spec(serde_json::json!({"steps": [{"setWeight": 20}, {"pause": {}}]}));
    let lowered = plan(&two, &paused, &seen, t(30));
    assert_eq!(reasons(&lowered), ["StepsChanged", "WeightChanged"]);
    // Less traffic first, with the canary still at its 50% size (2 pods); it shrinks after.
    assert_eq!(lowered.actions, [Action::SetWeight { weight: 20 }]);
    assert_eq!(lowered.status.canary_weight, 20);
    seen.canary = Some(ready("r2", 1));
    let p = plan(&two, &lowered.status, &seen, t(31));
    assert_eq!(reasons(&p), ["Paused"]);
    assert_eq!(p.status.phase, Phase::Paused);
    assert_eq!(p.status.current_step_index, Some(1));
    assert_eq!(p.status.canary_weight, 20);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::EnsureStable { .. })),
        "no promotion: {:?}",
        p.actions
    );
}

#[test]
fn a_rollout_from_before_fingerprints_keeps_its_place() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    let mut old = progressing(1, 10, 0);
    old.steps_fingerprint = None;
    let p = plan(&s, &old, &seen, t(10));
    assert!(p.events.is_empty(), "{:?}", p.events);
    assert_eq!(p.status.current_step_index, Some(1));
    assert!(p.status.steps_fingerprint.is_some());
}

#[test]
fn the_background_analysis_keeps_judging_a_canary_paused_for_approval() {
    use MeasurementPhase::*;
    let paused_spec = |on_failure: &str| {
        spec(serde_json::json!({
            "steps": [{"setWeight": 50}, {"pause": {}}],
            "analysis": {"templates": [{"templateName": "success"}]},
            "onAnalysisFailure": on_failure,
        }))
    };
    // (policy, pause, what the background analysis measures, phase and pause reason after)
    let cases = [
        (
            "rollback",
            RequestAction::Promote,
            Successful,
            Phase::Paused,
            Some(PauseReason::Step),
        ),
        (
            "rollback",
            RequestAction::Promote,
            Failed,
            Phase::RolledBack,
            None,
        ),
        (
            "pause",
            RequestAction::Promote,
            Failed,
            Phase::Paused,
            Some(PauseReason::AnalysisFailed),
        ),
        (
            "rollback",
            RequestAction::Pause,
            Failed,
            Phase::RolledBack,
            None,
        ),
    ];
    for (policy, how, measured, expected, reason) in cases {
        let s = paused_spec(policy);
        let mut seen = observed("r2");
        seen.canary = Some(ready("r2", 2));
        seen.analysis = definitions("background", 100);
        let mut status = plan(&s, &progressing(0, 0, 0), &seen, t(0)).status;
        if how == RequestAction::Pause {
            // Paused by a request at 50% instead of by the step.
            seen.requests = request(RequestAction::Pause, "p");
            status = plan(&s, &status, &seen, t(1)).status;
            seen.requests = Vec::new();
        }
        assert_eq!(status.phase, Phase::Paused, "{policy} {how:?}");
        let waiting = plan(&s, &status, &seen, t(2));
        assert_eq!(
            waiting.requeue_after,
            Some(MIN_REQUEUE),
            "the due measurement is taken while paused"
        );
        assert_eq!(due_measurements(&waiting.status, t(2)).len(), 1);
        seen.measurements = vec![measurement("background", 10, measured)];
        let p = plan(&s, &status, &seen, t(11));
        assert_eq!(p.status.phase, expected, "{policy} {how:?} {measured:?}");
        assert_eq!(
            p.status.pause_reason, reason,
            "{policy} {how:?} {measured:?}"
        );
        let run = &p.status.analysis_runs[0];
        assert_eq!(run.metrics[0].tally.measured, 1, "the measurement is kept");
    }
}

#[test]
fn suspend_holds_a_running_rollout_where_it_is() {
    let s = spec(serde_json::json!({
        "suspend": true,
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = definitions("background", 100);
    // Suspended in the one-minute pause step at 10%, with the background analysis under
    // way; ten minutes later: still there.
    let unsuspended = spec(serde_json::json!({
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let running = plan(&unsuspended, &progressing(1, 10, 0), &seen, t(0)).status;
    assert_eq!(running.analysis_runs.len(), 1);
    let held = plan(&s, &running, &seen, t(600));
    assert_eq!(
        (
            held.status.phase,
            held.status.current_step_index,
            held.status.canary_weight
        ),
        (Phase::Progressing, Some(1), 10)
    );
    assert!(
        held.status
            .message
            .as_deref()
            .unwrap()
            .starts_with("suspended at 10%")
    );
    // A newer revision waits too.
    seen.target = Some(Ok(target("r3")));
    let newer = plan(&s, &held.status, &seen, t(601));
    assert_eq!(newer.status.canary_revision.as_deref(), Some("r2"));
    assert!(
        newer
            .status
            .message
            .as_deref()
            .unwrap()
            .contains("r3 waits")
    );
    assert!(reasons(&newer).is_empty(), "{:?}", newer.events);
    // Promote is refused; abort is obeyed.
    seen.target = Some(Ok(target("r2")));
    seen.requests = request(RequestAction::Promote, "p");
    let refused = plan(&s, &held.status, &seen, t(602));
    assert!(!refused.status.last_request.as_ref().unwrap().accepted);
    assert_eq!(refused.status.current_step_index, Some(1));
    seen.requests = request(RequestAction::Abort, "a");
    assert_eq!(
        plan(&s, &held.status, &seen, t(603)).status.phase,
        Phase::RolledBack
    );
    // The background analysis goes on judging the canary that keeps its traffic.
    seen.requests = Vec::new();
    seen.measurements = vec![measurement("background", 604, MeasurementPhase::Failed)];
    assert_eq!(
        plan(&s, &held.status, &seen, t(605)).status.phase,
        Phase::RolledBack
    );
}

#[test]
fn an_analysis_step_needs_metrics_that_end() {
    // (run, count, compare, dry run, refused)
    let cases = [
        ("step-1", None, false, false, true),
        ("step-1", Some(3), false, false, false),
        ("step-1", None, true, false, false),
        ("step-1", None, false, true, false),
        (BACKGROUND, None, false, false, false),
    ];
    for (run, count, compare, dry_run, refused) in cases {
        let problem = endless_step_metric(run, count, compare, dry_run);
        assert_eq!(
            problem.is_some(),
            refused,
            "{run} {count:?} {compare} {dry_run}"
        );
        if let Some(problem) = problem {
            assert!(problem.contains("set count"), "{problem}");
        }
    }
}

#[test]
fn every_request_gets_an_answer_and_a_new_action_under_an_old_id_counts() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    // Pause then abort written under the same id (two `kubectl annotate` in one second).
    seen.requests = request(RequestAction::Pause, "1700000000");
    let paused = plan(&s, &progressing(1, 10, 0), &seen, t(1));
    assert_eq!(paused.status.phase, Phase::Paused);
    seen.requests = request(RequestAction::Abort, "1700000000");
    let aborted = plan(&s, &paused.status, &seen, t(2));
    assert_eq!(aborted.status.phase, Phase::RolledBack);
    let answer = aborted.status.last_request.as_ref().unwrap();
    assert!(
        answer.accepted && answer.action == RequestAction::Abort,
        "{answer:?}"
    );
    // A request in a phase that acts on none is answered, not silently "accepted".
    let mut rolling_back = progressing(1, 10, 0);
    rolling_back.phase = Phase::RollingBack;
    seen.stable = Some(not_ready("r1", 4));
    seen.requests = request(RequestAction::Promote, "late");
    let p = plan(&s, &rolling_back, &seen, t(3));
    let answer = p.status.last_request.unwrap();
    assert!(!answer.accepted, "{answer:?}");
    assert!(answer.message.contains("RollingBack"), "{}", answer.message);
}

#[test]
fn a_weight_changed_behind_the_rollouts_back_is_set_back_and_reported() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    // (phase of the rollout at 10%, weight found in the routing, drift reported)
    for (paused, found, drift) in [(false, 0, true), (true, 100, true), (false, 10, false)] {
        let mut status = progressing(1, 10, 0);
        if paused {
            status.phase = Phase::Paused;
            status.pause_reason = Some(PauseReason::Manual);
        }
        seen.route_weight = Some(found);
        let p = plan(&s, &status, &seen, t(10));
        assert_eq!(
            reasons(&p).contains(&"WeightDrift"),
            drift,
            "{found}: {:?}",
            p.events
        );
        if drift {
            assert!(
                p.actions.contains(&Action::SetWeight { weight: 10 }),
                "paused {paused}, found {found}: {:?}",
                p.actions
            );
        }
        assert_eq!(p.status.canary_weight, 10);
    }
}

#[test]
fn a_promotion_whose_stable_makes_no_progress_is_rolled_back() {
    let s = spec(serde_json::json!({}));
    let mut promoting = progressing(3, 50, 0);
    promoting.phase = Phase::Promoting;
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 2));
    // Stable part-way to r2: keep waiting, the canary keeps its share.
    seen.stable = Some(not_ready("r2", 4));
    let waiting = plan(&s, &promoting, &seen, t(100));
    assert_eq!(waiting.status.phase, Phase::Promoting);
    assert!(waiting.actions.contains(&Action::SetWeight { weight: 50 }));
    // The Deployment controller gave up on it (quota, pods that fail at full scale).
    seen.stable = Some(WorkloadState {
        stalled: true,
        ..not_ready("r2", 4)
    });
    let p = plan(&s, &promoting, &seen, t(700));
    assert_eq!(p.status.phase, Phase::RollingBack);
    assert_eq!(
        p.status.rollback_reason,
        Some(RollbackReason::ProgressDeadlineExceeded)
    );
    assert_eq!(p.actions[0], Action::SetWeight { weight: 0 });
    assert!(p.actions.contains(&Action::EnsureStable {
        revision: "r1".into(),
        replicas: 4
    }));
}

#[test]
fn a_held_rollout_is_still_looked_after() {
    use MeasurementPhase::*;
    // Paused by a request at 10% (step 1 of analysis_spec is an analysis step).
    let s = analysis_spec("rollback");
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = definitions("step-1", 5);
    let running = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    seen.requests = request(RequestAction::Pause, "p");
    let paused = plan(&s, &running, &seen, t(1)).status;
    seen.requests = Vec::new();
    assert_eq!(paused.phase, Phase::Paused);

    // The step's analysis keeps measuring while paused, and its failure acts.
    seen.measurements = vec![measurement("step-1", 10, Failed)];
    let failed = plan(&s, &paused, &seen, t(11));
    assert_eq!(
        failed.status.phase,
        Phase::RolledBack,
        "{:?}",
        failed.status.message
    );
    seen.measurements.clear();

    // Its template gone: reported, and looked at again at a bounded pace, not in a loop.
    seen.analysis = Err("AnalysisTemplate shop/success does not exist".into());
    let broken = plan(&s, &paused, &seen, t(20));
    assert_eq!(reasons(&broken), ["InvalidSpec"]);
    assert!(
        broken.requeue_after >= Some(MIN_REQUEUE),
        "{:?}",
        broken.requeue_after
    );

    // The canary lost its pods while paused: looked at again before the deadline passes.
    seen.analysis = definitions("step-1", 5);
    seen.canary = Some(not_ready("r2", 1));
    let unready = plan(&s, &paused, &seen, t(30));
    assert_eq!(unready.status.phase, Phase::Paused);
    assert!(
        unready.requeue_after <= Some(WAIT_RECHECK),
        "{:?}",
        unready.requeue_after
    );

    // Traffic taken off a canary that is not ready (by hand): not put back on it.
    seen.route_weight = Some(0);
    let drift = plan(&s, &paused, &seen, t(31));
    assert_eq!(drift.status.canary_weight, 0);
    assert!(
        !drift.actions.contains(&Action::SetWeight { weight: 10 }),
        "{:?}",
        drift.actions
    );
}

#[test]
fn abort_wins_over_a_newer_revision_and_an_unusable_target_answers_requests() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r3");
    seen.canary = Some(ready("r2", 1));
    seen.requests = request(RequestAction::Abort, "a");
    let aborted = plan(&s, &progressing(1, 10, 0), &seen, t(10));
    assert_eq!(
        aborted.status.rollback_reason,
        Some(RollbackReason::Aborted)
    );
    assert!(aborted.status.last_request.as_ref().unwrap().accepted);

    seen.target = None;
    seen.requests = request(RequestAction::Promote, "p");
    let failed = plan(&s, &progressing(1, 10, 0), &seen, t(10));
    assert_eq!(failed.status.phase, Phase::Failed);
    let answer = failed.status.last_request.unwrap();
    assert!(
        !answer.accepted && answer.message.contains("unusable"),
        "{answer:?}"
    );
}

#[test]
fn an_abort_while_the_target_is_unusable_keeps_the_revision_from_rolling_out_again() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.target = None;
    seen.requests = request(RequestAction::Abort, "a");
    let failed = plan(&s, &progressing(1, 10, 0), &seen, t(10));
    assert!(failed.status.last_request.as_ref().unwrap().accepted);
    assert_eq!(failed.status.failed_revision.as_deref(), Some("r2"));
    // The target comes back on r2: it waits for `retry`, as after any abort.
    seen.target = Some(Ok(target("r2")));
    seen.requests = request(RequestAction::Abort, "a");
    let back = plan(&s, &failed.status, &seen, t(20));
    assert_eq!(back.status.phase, Phase::Idle);
    assert!(reasons(&back).is_empty(), "{:?}", back.events);
}

#[test]
fn a_broken_analysis_of_a_suspended_rollout_is_reported_once() {
    let s = spec(serde_json::json!({
        "suspend": true,
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = Err("AnalysisTemplate shop/success does not exist".into());
    let first = plan(&s, &progressing(1, 10, 0), &seen, t(10));
    assert_eq!(reasons(&first), ["InvalidSpec"]);
    let again = plan(&s, &first.status, &seen, t(11));
    assert!(again.events.is_empty(), "{:?}", again.events);
}

#[test]
fn a_weight_reset_while_the_canary_grows_is_set_back() {
    // At 10% with its 1 pod ready, scaling to 2 for the next step (one ready so far): it can
    // serve 10%, so a GitOps reset to 0 is put back, not adopted.
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(WorkloadState {
        ready_replicas: 1,
        settled: false,
        ..ready("r2", 2)
    });
    seen.route_weight = Some(0);
    let p = plan(&s, &progressing(1, 10, 0), &seen, t(10));
    assert_eq!(p.status.canary_weight, 10);
    assert!(
        p.actions.contains(&Action::SetWeight { weight: 10 }),
        "{:?}",
        p.actions
    );
}

/// Pending requests `(action, id, step)`, as their annotations are observed.
fn requests(pending: &[(RequestAction, &str, Option<u32>)]) -> Vec<Result<Request, String>> {
    pending
        .iter()
        .map(|(action, id, step)| {
            Ok(Request {
                action: *action,
                id: (*id).into(),
                step: *step,
            })
        })
        .collect()
}

/// Plans again and again, as the reconciles after each status write do, until every request
/// `seen` holds is answered (bounded); returns the last status and how many plans it took.
fn answer_all(s: &CanarySpec, status: CanaryStatus, seen: &Observed) -> (CanaryStatus, usize) {
    let mut status = status;
    for plans in 0..10 {
        let answered = seen
            .requests
            .iter()
            .flatten()
            .all(|r| r.answered_in(Some(&status)));
        if answered {
            return (status, plans);
        }
        status = plan(s, &status, seen, t(10 + plans as i64)).status;
    }
    panic!("requests still unanswered after 10 plans: {status:?}");
}

#[test]
fn requests_pending_together_are_all_answered_and_the_same_thing_is_done_once() {
    use RequestAction::*;
    // A manual gate at index 1 (10%), then 20%, another gate, 30%, a gate. The canary is
    // never ready for more than it has, so a rollout waits at each setWeight.
    let s = spec(serde_json::json!({"steps": [
        {"setWeight": 10}, {"pause": {}}, {"setWeight": 20}, {"pause": {}},
        {"setWeight": 30}, {"pause": {}},
    ]}));
    let gate = CanaryStatus {
        phase: Phase::Paused,
        pause_reason: Some(PauseReason::Step),
        ..progressing(1, 10, 0)
    };
    let manually_paused = CanaryStatus {
        phase: Phase::Paused,
        pause_reason: Some(PauseReason::Manual),
        ..progressing(2, 20, 0)
    };
    struct Case {
        name: &'static str,
        status: CanaryStatus,
        pending: Vec<(RequestAction, &'static str, Option<u32>)>,
        /// (id, accepted, part of the answer)
        answers: Vec<(&'static str, bool, &'static str)>,
        phase: Phase,
        step: Option<u32>,
    }
    let cases = [
        Case {
            name: "five promotes of a gate finish it once",
            status: gate.clone(),
            pending: (["p1", "p2", "p3", "p4", "p5"].map(|id| (Promote, id, None))).to_vec(),
            answers: ["p1", "p2", "p3", "p4", "p5"]
                .map(|id| {
                    (
                        id,
                        true,
                        "skipping to the next step (5 promote requests at once: done once)",
                    )
                })
                .to_vec(),
            phase: Phase::Progressing,
            step: Some(2),
        },
        Case {
            name: "promotes naming the step: one step; a finished step or a later one is not skipped",
            status: CanaryStatus {
                current_step_index: Some(3),
                canary_weight: 20,
                ..gate.clone()
            },
            pending: vec![
                (Promote, "now-1", Some(3)),
                (Promote, "now-2", Some(3)),
                (Promote, "late", Some(1)),
                (Promote, "ahead", Some(5)),
            ],
            answers: vec![
                (
                    "now-1",
                    true,
                    "skipping to the next step (2 promote requests",
                ),
                ("now-2", true, "skipping to the next step"),
                // Said as people count steps, from 1 (index 1 is step 2/6).
                ("late", true, "step 2/6 was already finished"),
                ("ahead", false, "the rollout is at step 4/6, not 6/6"),
            ],
            phase: Phase::Progressing,
            step: Some(4),
        },
        Case {
            name: "abort wins: acted on first, the others find the rollout ended",
            status: progressing(0, 10, 0),
            pending: vec![
                (Promote, "p", None),
                (Pause, "z", None),
                (Abort, "a", None),
                (PromoteFull, "f", None),
            ],
            answers: vec![
                ("a", true, "rolling back"),
                ("p", false, "does not apply"),
                ("z", false, "does not apply"),
                ("f", false, "does not apply"),
            ],
            phase: Phase::RolledBack,
            step: None,
        },
        Case {
            name: "pause and resume at once while progressing: paused",
            status: progressing(0, 10, 0),
            pending: vec![
                (Pause, "z1", None),
                (Resume, "r1", None),
                (Pause, "z2", None),
                (Resume, "r2", None),
            ],
            answers: vec![
                ("r1", false, "the rollout is not paused"),
                ("r2", false, "the rollout is not paused"),
                ("z1", true, "paused (2 pause requests at once: done once)"),
                ("z2", true, "paused"),
            ],
            phase: Phase::Paused,
            step: Some(0),
        },
        Case {
            name: "resume and pause at once while paused: resumed, then paused again",
            status: manually_paused,
            pending: vec![(Pause, "z", None), (Resume, "r", None)],
            answers: vec![("r", true, "resumed"), ("z", true, "paused")],
            phase: Phase::Paused,
            step: Some(2),
        },
        Case {
            name: "promote and pause at a gate: past the gate, then held",
            status: gate.clone(),
            pending: vec![(Pause, "z", None), (Promote, "p", None)],
            answers: vec![("p", true, "skipping"), ("z", true, "paused")],
            phase: Phase::Paused,
            step: Some(2),
        },
    ];
    for case in cases {
        let mut seen = observed("r2");
        // Not ready for more traffic: a step past a gate stays at its setWeight.
        seen.canary = Some(not_ready("r2", 1));
        seen.requests = requests(&case.pending);
        let (status, _) = answer_all(&s, case.status.clone(), &seen);
        for (id, accepted, part) in &case.answers {
            let answer = status
                .answers()
                .find(|a| a.id == *id)
                .unwrap_or_else(|| panic!("{}: no answer to {id}: {status:?}", case.name));
            assert_eq!(answer.accepted, *accepted, "{}: {answer:?}", case.name);
            assert!(
                answer.message.contains(part),
                "{}: {id}: {}",
                case.name,
                answer.message
            );
        }
        let phase = if status.phase == Phase::RollingBack {
            Phase::RolledBack
        } else {
            status.phase
        };
        assert_eq!(phase, case.phase, "{}", case.name);
        assert_eq!(status.current_step_index, case.step, "{}", case.name);
        // Answered requests whose annotations are still there are not acted on again.
        let again = plan(&s, &status, &seen, t(100));
        assert_eq!(
            again.status.current_step_index, status.current_step_index,
            "{}",
            case.name
        );
        assert_eq!(
            again.status.recent_requests, status.recent_requests,
            "{}",
            case.name
        );
    }
}

#[test]
fn requests_of_different_actions_are_taken_one_per_reconcile_and_come_back_soon() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.requests = requests(&[
        (RequestAction::Resume, "r", None),
        (RequestAction::Pause, "z", None),
    ]);
    let first = plan(&s, &progressing(1, 10, 0), &seen, t(5));
    assert_eq!(first.status.answers().count(), 2, "last and recent: r only");
    assert!(first.status.answers().all(|a| a.id == "r"));
    assert_eq!(first.requeue_after, Some(MIN_REQUEUE));
    let second = plan(&s, &first.status, &seen, t(6));
    assert_eq!(second.status.phase, Phase::Paused);
    let ids: Vec<&str> = second
        .status
        .recent_requests
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    assert_eq!(ids, ["r", "z"], "newest last");
}

#[test]
fn answers_are_kept_while_their_annotations_are_there_and_the_latest_others() {
    let s = spec(serde_json::json!({}));
    let mut status = progressing(1, 10, 0);
    // Many answered requests whose annotations were removed since.
    status.recent_requests = (0..100)
        .map(|i| RequestStatus {
            id: format!("old-{i}"),
            action: RequestAction::Pause,
            accepted: false,
            message: "pause does not apply".into(),
            at: t(0).to_string(),
        })
        .collect();
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    // One of them still annotated, and a new request.
    seen.requests = requests(&[
        (RequestAction::Pause, "old-3", None),
        (RequestAction::Resume, "new", None),
    ]);
    let p = plan(&s, &status, &seen, t(5));
    let ids: Vec<&str> = p
        .status
        .recent_requests
        .iter()
        .map(|a| a.id.as_str())
        .collect();
    // old-3 (annotated), the latest 32 others, and the new answer.
    assert_eq!(ids.len(), 2 + ANSWERS_KEPT, "{ids:?}");
    assert_eq!(
        ids[0], "old-3",
        "still annotated: kept, so never acted on twice"
    );
    assert_eq!(ids[1], format!("old-{}", 100 - ANSWERS_KEPT));
    assert_eq!(ids.last(), Some(&"new"));
}

/// A background success-rate metric measured every 10 s that tolerates 4 consecutive errors
/// (Argo's default), without a count: it runs until the rollout ends.
fn background_with_error_limit_4() -> Result<BTreeMap<String, Vec<MetricDefinition>>, String> {
    let mut definitions = definitions(BACKGROUND, 1)?;
    for definition in definitions.values_mut().flatten() {
        definition.limits.count = None;
        definition.limits.consecutive_error_limit = 4;
    }
    Ok(definitions)
}

#[test]
fn promotion_needs_a_pass_at_the_final_weight_not_errors_alone() {
    use MeasurementPhase::*;
    // Passes at 20%; Prometheus dies as the final 1-minute pause at 50% begins.
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 20}, {"pause": {"duration": "1m"}},
                  {"setWeight": 50}, {"pause": {"duration": "1m"}}],
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut seen = observed("r2");
    seen.analysis = background_with_error_limit_4();
    seen.canary = Some(ready("r2", 1));
    let mut status = plan(&s, &progressing(0, 0, 0), &seen, t(0)).status;
    assert_eq!(status.canary_weight, 20);
    let at = |status: &mut CanaryStatus,
              seen: &mut Observed,
              second: i64,
              phase: Option<MeasurementPhase>| {
        seen.measurements = phase
            .map(|phase| vec![measurement(BACKGROUND, second, phase)])
            .unwrap_or_default();
        let p = plan(&s, status, seen, t(second));
        *status = p.status.clone();
        p
    };
    for second in [10, 20, 30, 40, 50] {
        at(&mut status, &mut seen, second, Some(Successful));
    }
    seen.canary = Some(ready("r2", 2));
    let stepped = at(&mut status, &mut seen, 61, None);
    assert_eq!(stepped.status.canary_weight, 50);
    assert_eq!(stepped.status.weight_changed_at, Some(t(61).to_string()));
    // Four errors at 50%, within consecutiveErrorLimit 4; then the pause is over.
    for second in [70, 80, 90, 100] {
        at(&mut status, &mut seen, second, Some(Error));
    }
    let end = at(&mut status, &mut seen, 125, None);
    assert_eq!(
        end.status.phase,
        Phase::Progressing,
        "{:?}",
        end.status.message
    );
    let message = end.status.message.clone().unwrap();
    assert!(
        message.contains("success-rate") && message.contains("final weight (50%)"),
        "{message}"
    );
    assert_eq!(
        end.status.canary_weight, 50,
        "the canary keeps its share meanwhile"
    );
    // Prometheus stays down: the error limit ends the run and the policy rolls back.
    let mut dead = status.clone();
    let mut dead_seen = seen.clone();
    let rolled = at(&mut dead, &mut dead_seen, 130, Some(Error));
    assert_eq!(
        rolled.status.phase,
        Phase::RolledBack,
        "{:?}",
        rolled.status.message
    );
    // Prometheus comes back and the canary passes at 50%: promoted.
    let promoted = at(&mut status, &mut seen, 130, Some(Successful));
    assert_eq!(
        promoted.status.phase,
        Phase::Promoting,
        "{:?}",
        promoted.status.message
    );
}

#[test]
fn the_background_analysis_clock_starts_when_the_canary_first_has_traffic() {
    // The same spec on an idle cluster (pods ready in 1 s) and a loaded one (ready in 9 s):
    // the first measurement is due 10 s (initialDelay) after the canary's first traffic.
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 20}, {"pause": {"duration": "10m"}}],
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut definitions = background_with_error_limit_4().unwrap();
    for definition in definitions.values_mut().flatten() {
        definition.initial_delay = StdDuration::from_secs(10);
    }
    for pods_ready_after in [1, 9] {
        let mut seen = observed("r2");
        seen.analysis = Ok(definitions.clone());
        let mut status = plan(&s, &idle(), &seen, t(0)).status;
        assert_eq!(status.phase, Phase::Progressing);
        seen.canary = Some(not_ready("r2", 1));
        for second in 1..pods_ready_after {
            status = plan(&s, &status, &seen, t(second)).status;
            assert!(
                status.analysis_runs.is_empty(),
                "no traffic yet at {second}s: no analysis clock"
            );
        }
        seen.canary = Some(ready("r2", 1));
        let traffic = plan(&s, &status, &seen, t(pods_ready_after));
        assert_eq!(traffic.status.canary_weight, 20);
        let first_due = analysis_runs::run(&traffic.status, BACKGROUND)
            .unwrap()
            .metrics[0]
            .next_measurement_at
            .clone();
        assert_eq!(
            first_due,
            Some(t(pods_ready_after + 10).to_string()),
            "ready after {pods_ready_after}s"
        );
    }
}

#[test]
fn a_canary_without_ready_pods_loses_its_traffic_at_once_and_gets_it_back_when_ready() {
    use MeasurementPhase::*;
    // At 20%, in an analysis step measuring every 10 s (count 2): the canary's pods vanish.
    let s = spec(serde_json::json!({
        "progressDeadlineSeconds": 60,
        "steps": [{"setWeight": 20},
                  {"analysis": {"templates": [{"templateName": "success"}]}},
                  {"setWeight": 50}],
    }));
    for held_by_a_human in [false, true] {
        let mut seen = observed("r2");
        seen.analysis = definitions("step-1", 2);
        seen.canary = Some(ready("r2", 1));
        let mut status = plan(&s, &progressing(1, 20, 0), &seen, t(0)).status;
        if held_by_a_human {
            seen.requests = request(RequestAction::Pause, "p");
            status = plan(&s, &status, &seen, t(0)).status;
            assert_eq!(status.phase, Phase::Paused);
        }
        let phase = status.phase;
        seen.canary = Some(not_ready("r2", 1));
        // The measurement taken as the pods went is not recorded: they served nothing.
        seen.measurements = vec![measurement("step-1", 5, Successful)];
        let lost = plan(&s, &status, &seen, t(5));
        assert_eq!(lost.status.canary_weight, 0, "held {held_by_a_human}");
        assert!(lost.actions.contains(&Action::SetWeight { weight: 0 }));
        assert_eq!(lost.status.withdrawn_weight, Some(20));
        assert_eq!(lost.status.phase, phase);
        assert_eq!(reasons(&lost), ["TrafficWithdrawn"]);
        let run = analysis_runs::run(&lost.status, "step-1").unwrap();
        assert_eq!(run.metrics[0].tally.measured, 0, "nothing recorded");
        assert!(
            due_measurements(&lost.status, t(1000)).is_empty(),
            "the analysis is on hold"
        );
        // Still no pod: held, nothing passes, the deadline counts.
        seen.measurements.clear();
        let still = plan(&s, &lost.status, &seen, t(30));
        assert_eq!(
            (still.status.canary_weight, still.status.current_step_index),
            (0, Some(1))
        );
        assert!(reasons(&still).is_empty(), "{:?}", reasons(&still));
        // Back within the deadline: the weight, the step and the analysis start again.
        seen.canary = Some(ready("r2", 1));
        let back = plan(&s, &still.status, &seen, t(40));
        assert_eq!(back.status.canary_weight, 20);
        assert_eq!(back.status.withdrawn_weight, None);
        assert_eq!(reasons(&back), ["TrafficRestored"]);
        assert_eq!(back.status.step_started_at, Some(t(40).to_string()));
        assert_eq!(
            due_measurements(&back.status, t(40)),
            vec![("step-1".to_string(), "success-rate".to_string())]
        );
        // Gone for good: the progress deadline rolls it back.
        seen.canary = Some(not_ready("r2", 1));
        let mut status = plan(&s, &back.status, &seen, t(50)).status;
        assert_eq!(status.canary_weight, 0);
        status = plan(&s, &status, &seen, t(100)).status;
        assert_eq!(status.phase, phase);
        let p = plan(&s, &status, &seen, t(111));
        assert_eq!(p.status.phase, Phase::RolledBack, "held {held_by_a_human}");
        assert_eq!(
            p.status.rollback_reason,
            Some(RollbackReason::ProgressDeadlineExceeded)
        );
    }
}

#[test]
fn a_promotion_whose_canary_lost_its_pods_takes_its_traffic_off_it() {
    let s = spec(serde_json::json!({}));
    let mut status = progressing(3, 50, 0);
    status.phase = Phase::Promoting;
    let mut seen = observed("r2");
    seen.stable = Some(not_ready("r2", 4));
    seen.canary = Some(ready("r2", 2));
    let waiting = plan(&s, &status, &seen, t(10));
    assert_eq!(waiting.status.canary_weight, 50, "stable not ready yet");
    seen.canary = Some(not_ready("r2", 2));
    let lost = plan(&s, &waiting.status, &seen, t(20));
    assert_eq!(lost.status.phase, Phase::Promoting);
    assert_eq!(lost.status.canary_weight, 0);
}

#[test]
fn a_service_scaled_mid_rollout_scales_stable_with_it() {
    // 4 → 10 replicas at 20%: stable must serve its 80% with 10 pods, not stay at 4.
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 20}, {"pause": {"duration": "30m"}}],
    }));
    let status = progressing(1, 20, 0);
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.target = Some(Ok(TargetState {
        replicas: 10,
        ..target("r2")
    }));
    let p = plan(&s, &status, &seen, t(60));
    assert_eq!(p.status.desired_replicas, Some(10));
    for expected in [
        Action::EnsureStable {
            revision: "r1".into(),
            replicas: 10,
        },
        Action::EnsureCanary {
            revision: "r2".into(),
            replicas: 2,
        },
        Action::ScaleTargetToZero,
    ] {
        assert!(
            p.actions.contains(&expected),
            "{expected:?} in {:?}",
            p.actions
        );
    }
    // Once stable is sized, it is not written again.
    seen.stable = Some(ready("r1", 10));
    seen.canary = Some(ready("r2", 2));
    seen.target = Some(Ok(target("r2")));
    let settled = plan(&s, &p.status, &seen, t(70));
    assert!(
        !settled
            .actions
            .iter()
            .any(|a| matches!(a, Action::EnsureStable { .. })),
        "{:?}",
        settled.actions
    );
}

#[test]
fn every_answered_request_leaves_an_event_naming_it() {
    let s = spec(serde_json::json!({}));
    // (status, request, expected events in order, what the request's event says)
    let cases: [(CanaryStatus, RequestAction, &[&str], &str); 6] = [
        (
            progressing(1, 10, 0),
            RequestAction::Promote,
            &["PromoteRequested"],
            "promote request q accepted: skipping to the next step",
        ),
        (
            progressing(1, 10, 0),
            RequestAction::Pause,
            &["PauseRequested", "Paused"],
            "pause request q accepted: paused",
        ),
        (
            progressing(1, 10, 0),
            RequestAction::Abort,
            &["AbortRequested", "Aborted", "RolledBack"],
            "abort request q accepted: rolling back",
        ),
        (
            progressing(1, 10, 0),
            RequestAction::Resume,
            &["RequestRefused"],
            "request q refused: resume does not apply: the rollout is not paused",
        ),
        (
            idle(),
            RequestAction::Pause,
            &["RequestRefused"],
            "request q refused: pause does not apply: no rollout is under way",
        ),
        (
            CanaryStatus {
                phase: Phase::RolledBack,
                failed_revision: Some("r2".into()),
                ..idle()
            },
            RequestAction::Retry,
            // The canary is ready: its first weight at once.
            &["RetryRequested", "RolloutStarted", "WeightChanged"],
            "retry request q accepted: retrying r2",
        ),
    ];
    for (status, action, expected, message) in cases {
        // Idle: the target runs stable's revision (nothing to roll out).
        let target = match status.phase {
            Phase::Idle => "r1",
            _ => "r2",
        };
        let mut seen = observed(target);
        seen.canary = Some(ready("r2", 1));
        seen.requests = request(action, "q");
        let p = plan(&s, &status, &seen, t(5));
        assert_eq!(reasons(&p), expected, "{action:?}");
        assert_eq!(p.events[0].message, message, "{action:?}");
        let kind = if expected[0] == "RequestRefused" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        assert_eq!(p.events[0].kind, kind, "{action:?}");
        // Answered once: planning again from the answer says nothing more about it.
        let again = plan(&s, &p.status, &seen, t(6));
        assert!(
            !reasons(&again)
                .iter()
                .any(|r| r.ends_with("Requested") || *r == "RequestRefused"),
            "{action:?}: {:?}",
            again.events
        );
    }
}

#[test]
fn a_new_rollout_does_not_show_the_previous_rollouts_outcome() {
    let s = spec(serde_json::json!({}));
    let mut rolled_back = CanaryStatus {
        phase: Phase::RolledBack,
        failed_revision: Some("r2".into()),
        rollback_reason: Some(RollbackReason::ProgressDeadlineExceeded),
        canary_unready_since: Some(t(0).to_string()),
        ..idle()
    };
    set_condition(
        &mut rolled_back.conditions,
        (
            "Promoted",
            false,
            "ProgressDeadlineExceeded",
            "rolled back r2",
        ),
        t(0),
        Some(1),
    );
    let started = plan(&s, &rolled_back, &observed("r3"), t(100));
    assert_eq!(started.status.phase, Phase::Progressing);
    let promoted = started
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Promoted")
        .unwrap();
    assert_eq!(
        (
            promoted.status.as_str(),
            promoted.reason.as_str(),
            promoted.message.as_str()
        ),
        (
            "False",
            "RolloutStarted",
            "r3 is being rolled out: not promoted yet"
        )
    );
    assert_eq!(started.status.rollback_reason, None);
    assert_eq!(started.status.failed_revision, None);
    assert_eq!(started.status.canary_unready_since, None);
    // A promoted rollout's `Promoted=True` does not carry over either.
    let mut promoted_before = idle();
    promoted_before.phase = Phase::Promoted;
    set_condition(
        &mut promoted_before.conditions,
        ("Promoted", true, "Promoted", "promoted r1"),
        t(0),
        Some(1),
    );
    let next = plan(&s, &promoted_before, &observed("r3"), t(100));
    let condition = next
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Promoted")
        .unwrap();
    assert_eq!(condition.status, "False", "{condition:?}");
}

#[test]
fn a_missing_template_is_said_while_settled_and_cleared_once_it_exists() {
    let s = spec(serde_json::json!({"steps": [
        {"setWeight": 10},
        {"analysis": {"templates": [{"templateName": "nope"}]}},
    ]}));
    let problem = "AnalysisTemplate shop/nope does not exist: create it or fix templateName (the analysis step step-1, templates[0])";
    for phase in [Phase::Idle, Phase::Promoted, Phase::RolledBack] {
        let settled = CanaryStatus { phase, ..idle() };
        // Nothing to roll out: the target runs stable's revision.
        let mut seen = observed("r1");
        seen.analysis = Err(problem.into());
        let reported = plan(&s, &settled, &seen, t(0));
        assert_eq!(
            ready_condition(&reported.status),
            ("False".into(), "InvalidSpec".into(), problem.into()),
            "{phase:?}"
        );
        assert_eq!(reasons(&reported), ["InvalidSpec"], "{phase:?}");
        assert_eq!(reported.status.message.as_deref(), Some(problem));
        assert_eq!(reported.status.phase, phase);
        // Said once.
        assert!(plan(&s, &reported.status, &seen, t(10)).events.is_empty());
        // The template is created: Ready again, and the message no longer says it.
        seen.analysis = Ok(BTreeMap::new());
        let fixed = plan(&s, &reported.status, &seen, t(20));
        assert_eq!(
            ready_condition(&fixed.status),
            ("True".into(), "Ready".into(), "the spec is valid".into()),
            "{phase:?}"
        );
        assert_ne!(fixed.status.message.as_deref(), Some(problem));
        assert!(fixed.events.is_empty(), "{:?}", fixed.events);
    }
}

#[test]
fn weight_given_to_a_settled_canary_by_hand_is_set_back_and_reported() {
    let spec = spec(serde_json::json!({}));
    // (phase, weight the routing holds, as last observed, drift reported)
    let table = [
        (Phase::Promoted, Some(30), Some(0), true),
        (Phase::Idle, Some(30), None, true),
        (Phase::RolledBack, Some(100), Some(0), true),
        // The rollout's own weight still being written (its write failed): not drift.
        (Phase::Promoted, Some(100), Some(100), false),
        (Phase::Promoted, Some(0), Some(0), false),
        (Phase::Idle, None, Some(0), false),
    ];
    for (phase, found, last, drift) in table {
        let status = CanaryStatus {
            phase,
            effective_weight: last,
            ..idle()
        };
        let observed = Observed {
            route_weight: found,
            ..observed("r1")
        };
        let p = plan(&spec, &status, &observed, t(100));
        assert_eq!(
            reasons(&p).contains(&"WeightDrift"),
            drift,
            "{phase:?} found {found:?} last {last:?}: {:?}",
            p.events
        );
        assert!(
            p.actions.contains(&Action::SetWeight { weight: 0 }),
            "{phase:?}: the weight is set back to 0 either way: {:?}",
            p.actions
        );
        assert_eq!(p.status.effective_weight, found.or(last));
    }
}

// -- status changes only on news -------------------------------------------------------------

/// Each kind of wait a Canary can be in, as `(what, spec, status before, observed)`: planned
/// once at `t(30)` and again (with what that wrote) until the status holds still.
fn every_kind_of_wait() -> Vec<(&'static str, CanarySpec, CanaryStatus, Observed)> {
    let default_spec = spec(serde_json::json!({}));
    let with_canary = |pods: WorkloadState| Observed {
        canary: Some(pods),
        route_weight: None,
        ..observed("r2")
    };
    let background = |steps: serde_json::Value| {
        spec(serde_json::json!({
            "steps": steps,
            "analysis": {"templates": [{"templateName": "success"}]},
        }))
    };
    let measuring = |seen: Observed, definitions| Observed {
        analysis: definitions,
        ..seen
    };
    let blue_green = |extra: serde_json::Value| -> CanarySpec {
        let mut blue_green = serde_json::json!({
            "activeService": "api-active",
            "previewService": "api-preview",
        });
        blue_green
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({
            "targetRef": {"name": "web"},
            "service": {"port": 8080},
            "scaleDownDelaySeconds": 30,
            "strategy": {"blueGreen": blue_green},
        }))
        .unwrap()
    };
    let switched = |weight: u8, canary: WorkloadState| Observed {
        route_weight: Some(weight),
        router: crate::routing::Capabilities {
            granularity: crate::routing::Granularity::Switch,
            header_routes: false,
        },
        ..with_canary(canary)
    };
    // Statuses with analysis runs under way, as earlier reconciles left them.
    let step_analysis_seen = measuring(with_canary(ready("r2", 1)), definitions("step-1", 3));
    let step_analysis_measured = plan(
        &analysis_spec("rollback"),
        &progressing(1, 10, 0),
        &step_analysis_seen,
        t(19),
    );
    let background_spec =
        background(serde_json::json!([{"setWeight": 10}, {"pause": {"duration": "10m"}}]));
    let background_seen = measuring(with_canary(ready("r2", 1)), definitions(BACKGROUND, 100));
    let background_started = plan(
        &background_spec,
        &progressing(1, 10, 0),
        &background_seen,
        t(20),
    );
    let paused_by_request = plan(
        &background_spec,
        &background_started.status,
        &Observed {
            requests: request(RequestAction::Pause, "p"),
            ..background_seen.clone()
        },
        t(25),
    );
    vec![
        ("idle", default_spec.clone(), idle(), observed("r1")),
        (
            "promoted, the canary's scale-down pending",
            default_spec.clone(),
            CanaryStatus {
                phase: Phase::Promoted,
                canary_scale_down_at: Some(t(60).to_string()),
                ..idle()
            },
            Observed {
                canary: Some(ready("r1", 1)),
                ..observed("r1")
            },
        ),
        (
            "rolled back",
            default_spec.clone(),
            CanaryStatus {
                phase: Phase::RolledBack,
                failed_revision: Some("r2".into()),
                canary_scale_down_at: Some(t(0).to_string()),
                ..idle()
            },
            observed("r2"),
        ),
        (
            "failed: no target",
            default_spec.clone(),
            idle(),
            Observed {
                target: None,
                ..observed("r1")
            },
        ),
        (
            "initializing: waiting for stable",
            default_spec.clone(),
            CanaryStatus::default(),
            Observed {
                stable: Some(not_ready("r1", 4)),
                ..observed("r1")
            },
        ),
        (
            "waiting for canary pods (progress deadline running)",
            default_spec.clone(),
            progressing(0, 0, 0),
            with_canary(not_ready("r2", 1)),
        ),
        (
            "timed pause",
            default_spec.clone(),
            progressing(1, 10, 0),
            with_canary(ready("r2", 1)),
        ),
        (
            "approval gate",
            default_spec.clone(),
            progressing(3, 50, 0),
            with_canary(ready("r2", 2)),
        ),
        (
            "analysis step, next measurement due later",
            analysis_spec("rollback"),
            step_analysis_measured.status,
            Observed {
                measurements: vec![measurement("step-1", 29, MeasurementPhase::Successful)],
                ..step_analysis_seen
            },
        ),
        (
            "timed pause with a background analysis, next measurement due later",
            background_spec.clone(),
            background_started.status,
            Observed {
                measurements: vec![measurement(BACKGROUND, 29, MeasurementPhase::Successful)],
                ..background_seen.clone()
            },
        ),
        (
            "timed pause, no regression yet for its minimum step time",
            spec(serde_json::json!({
                "steps": [{"setWeight": 10}, {"pause": {"duration": "10m"}}],
                "analysis": {"templates": [{"templateName": "compare"}], "minStepDuration": "5m"},
            })),
            progressing(1, 10, 0),
            measuring(with_canary(ready("r2", 1)), compare_definitions(BACKGROUND)),
        ),
        (
            "paused by request, background analysis measuring",
            background_spec,
            paused_by_request.status,
            Observed {
                requests: request(RequestAction::Pause, "p"),
                ..background_seen.clone()
            },
        ),
        (
            "suspended",
            spec(serde_json::json!({"suspend": true})),
            progressing(1, 10, 0),
            with_canary(ready("r2", 1)),
        ),
        (
            "header route waiting for canary pods",
            spec(serde_json::json!({"steps": [
                {"setHeaderRoute": {"name": "beta", "match": [{"headerName": "x-beta", "headerValue": {"exact": "1"}}]}},
                {"setWeight": 10},
            ]})),
            progressing(0, 0, 0),
            with_canary(not_ready("r2", 1)),
        ),
        (
            "the canary lost its pods: traffic withdrawn",
            default_spec.clone(),
            CanaryStatus {
                withdrawn_weight: Some(10),
                ..progressing(1, 0, 0)
            },
            with_canary(not_ready("r2", 1)),
        ),
        (
            "end of the steps: waiting for a pass at the final weight",
            background(serde_json::json!([{"setWeight": 10}])),
            progressing(1, 10, 0),
            measuring(with_canary(ready("r2", 1)), background_with_error_limit_4()),
        ),
        (
            "blue-green: preview waiting for its pods",
            blue_green(serde_json::json!({"autoPromotionEnabled": false})),
            progressing(0, 0, 0),
            switched(0, not_ready("r2", 4)),
        ),
        (
            "blue-green: preview ready, gate",
            blue_green(serde_json::json!({"autoPromotionEnabled": false})),
            progressing(1, 0, 0),
            switched(0, ready("r2", 4)),
        ),
        (
            "blue-green: preview ready, auto-promotion pending",
            blue_green(serde_json::json!({"autoPromotionSeconds": 120})),
            progressing(1, 0, 0),
            switched(0, ready("r2", 4)),
        ),
        (
            "blue-green: switched, waiting out the scale-down delay",
            blue_green(serde_json::json!({"autoPromotionSeconds": 120})),
            progressing(3, 100, 20),
            switched(100, ready("r2", 4)),
        ),
        (
            "promoting: waiting for stable",
            default_spec.clone(),
            CanaryStatus {
                phase: Phase::Promoting,
                ..progressing(4, 50, 0)
            },
            Observed {
                stable: Some(not_ready("r2", 4)),
                ..with_canary(ready("r2", 2))
            },
        ),
        (
            "rolling back: waiting for stable",
            default_spec,
            CanaryStatus {
                phase: Phase::RollingBack,
                rollback_reason: Some(RollbackReason::Aborted),
                ..progressing(1, 10, 0)
            },
            Observed {
                stable: Some(not_ready("r1", 4)),
                ..with_canary(ready("r2", 1))
            },
        ),
    ]
}

#[test]
fn time_passing_alone_changes_no_status() {
    // Status is written when it changes, and each write wakes the Canary again: a status that
    // counts down would be written on every reconcile. Deadlines are timestamps; the CLI says
    // how long is left.
    let mut changed = Vec::new();
    for (what, s, before, seen) in every_kind_of_wait() {
        let mut settled = plan(&s, &before, &seen, t(30));
        let mut seen = seen;
        // What was measured is recorded once.
        seen.measurements.clear();
        for _ in 0..3 {
            let again = plan(&s, &settled.status, &seen, t(30));
            if again.status == settled.status {
                break;
            }
            settled = again;
        }
        let at_once = plan(&s, &settled.status, &seen, t(30));
        assert_eq!(at_once.status, settled.status, "{what}: does not settle");
        for later in [t(31), t(33) + jiff::SignedDuration::from_millis(500)] {
            let p = plan(&s, &settled.status, &seen, later);
            if p.status != settled.status {
                changed.push(format!(
                    "{what}: status changed at {later}: {}",
                    differences(&settled.status, &p.status)
                ));
            }
            if !p.events.is_empty() {
                changed.push(format!("{what}: events at {later}: {:?}", p.events));
            }
            if p.actions != at_once.actions {
                changed.push(format!(
                    "{what}: actions at {later}: {:?} instead of {:?}",
                    p.actions, at_once.actions
                ));
            }
        }
    }
    assert!(changed.is_empty(), "{}", changed.join("\n"));
}

/// The top-level status fields that differ, as `field: before → after`.
fn differences(before: &CanaryStatus, after: &CanaryStatus) -> String {
    let (before, after) = (
        serde_json::to_value(before).unwrap(),
        serde_json::to_value(after).unwrap(),
    );
    let empty = serde_json::Map::new();
    let (b, a) = (
        before.as_object().unwrap_or(&empty),
        after.as_object().unwrap_or(&empty),
    );
    let mut fields: Vec<&String> = b.keys().chain(a.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|f| b.get(*f) != a.get(*f))
        .map(|f| format!("{f}: {:?} → {:?}", b.get(f), a.get(f)))
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn a_timed_pause_says_when_it_ends_and_only_then() {
    let s = spec(serde_json::json!({}));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    let paused = CanaryStatus {
        phase: Phase::Paused,
        pause_reason: Some(PauseReason::Manual),
        ..progressing(1, 10, 0)
    };
    let withdrawn = CanaryStatus {
        withdrawn_weight: Some(10),
        ..progressing(1, 0, 0)
    };
    let mut unready = seen.clone();
    unready.canary = Some(not_ready("r2", 1));
    // (what, spec, status, observed, pauseEndsAt)
    let cases = [
        (
            "at a 1m pause",
            &s,
            progressing(1, 10, 0),
            &seen,
            Some(t(60)),
        ),
        (
            "at a setWeight step",
            &s,
            progressing(2, 10, 0),
            &seen,
            None,
        ),
        ("paused at the pause step", &s, paused, &seen, None),
        ("without traffic", &s, withdrawn, &unready, None),
        (
            "suspended",
            &spec(serde_json::json!({"suspend": true})),
            progressing(1, 10, 0),
            &seen,
            None,
        ),
    ];
    for (what, s, status, seen, ends) in cases {
        let p = plan(s, &status, seen, t(30));
        assert_eq!(
            p.status.pause_ends_at,
            ends.map(|t| t.to_string()),
            "{what}: {:?}",
            p.status.message
        );
    }
    // The pause is over: the next step's plan says nothing of it.
    let over = plan(&s, &progressing(1, 10, 0), &seen, t(61));
    assert_eq!(over.status.current_step_index, Some(2));
    assert_eq!(over.status.pause_ends_at, None);
}

// -- measurements on a fixed schedule --------------------------------------------------------

/// `millis` milliseconds after `t(0)`.
fn t_ms(millis: i64) -> Timestamp {
    t(0) + jiff::SignedDuration::from_millis(millis)
}

#[test]
fn measurements_are_due_on_a_fixed_schedule_whatever_the_lag() {
    // A 10 s metric whose run starts at t(0): due at 0, 10, 20…, however late each measurement
    // is taken; never twice within half an interval, so a late one brings no burst (and a
    // compare interval is never shorter than half an interval).
    // (what, when each measurement is taken (ms), when the next is due after each (s))
    let cases: [(&str, &[i64], &[i64]); 7] = [
        ("on time", &[50, 10_050, 20_050], &[10, 20, 30]),
        (
            "2 s late every time",
            &[2_000, 12_000, 22_000],
            &[10, 20, 30],
        ),
        ("lag that grows", &[1_000, 13_000, 24_900], &[10, 20, 30]),
        ("taken exactly when due", &[0, 10_000], &[10, 20]),
        (
            "one very late: no catch-up burst",
            &[0, 27_000, 40_100],
            &[10, 40, 50],
        ),
        ("late by just under half", &[0, 14_900], &[10, 20]),
        ("late by over half: the next slot", &[0, 15_100], &[10, 30]),
    ];
    let s = analysis_spec("rollback");
    for (what, taken, due) in cases {
        let mut seen = observed("r2");
        seen.canary = Some(ready("r2", 1));
        seen.analysis = definitions("step-1", 100);
        let mut status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
        for (taken, due) in taken.iter().zip(due) {
            let mut measured = measurement("step-1", 0, MeasurementPhase::Successful);
            measured.measurement.time = t_ms(*taken).to_string();
            seen.measurements = vec![measured];
            status = plan(&s, &status, &seen, t_ms(taken + 100)).status;
            let next = &analysis_runs::run(&status, "step-1").unwrap().metrics[0];
            assert_eq!(
                next.next_measurement_at,
                Some(t(*due).to_string()),
                "{what}: after the measurement at {taken} ms"
            );
        }
    }
}

#[test]
fn the_next_slot_on_a_schedule() {
    let ten = StdDuration::from_secs(10);
    // (what, due, measured, interval, next)
    let cases = [
        ("not on a schedule yet", None, t(3), ten, t(13)),
        (
            "measured before it was due (clock skew)",
            Some(t(10)),
            t(9),
            ten,
            t(20),
        ),
        ("no interval", Some(t(10)), t(12), StdDuration::ZERO, t(12)),
        (
            "a day late, 1 s interval",
            Some(t(10)),
            t(86_410),
            StdDuration::from_secs(1),
            t(86_411),
        ),
        (
            "sub-second interval",
            Some(t(10)),
            t_ms(10_260),
            StdDuration::from_millis(200),
            t_ms(10_400),
        ),
    ];
    for (what, due, measured, interval, next) in cases {
        assert_eq!(
            analysis_runs::next_on_schedule(due, measured, interval),
            next,
            "{what}"
        );
    }
    // Far in the future, saturated rather than wrapped.
    let far = analysis_runs::next_on_schedule(Some(Timestamp::MAX), Timestamp::MAX, ten);
    assert_eq!(far, Timestamp::MAX);
}

#[test]
fn compare_intervals_stay_contiguous_on_a_fixed_schedule() {
    // Each interval runs from where the last one ended to when it is measured, however late;
    // only the due times are on the schedule.
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 10}, {"pause": {"duration": "10m"}}],
        "analysis": {"templates": [{"templateName": "compare"}], "startingStep": 1},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = compare_definitions(BACKGROUND);
    let mut status = plan(&s, &progressing(1, 10, 0), &seen, t(0)).status;
    let interval = StdDuration::from_secs(10);
    // (when measured (ms), the interval's start, the next due (s))
    let taken = [
        (1_500, t_ms(-8_500), 10),
        (12_000, t_ms(1_500), 20),
        (27_000, t_ms(12_000), 40),
        (40_200, t_ms(27_000), 50),
    ];
    for (at, start, due) in taken {
        let end = t_ms(at);
        assert_eq!(
            compare_window_start(&status, BACKGROUND, "error-rate", interval, end),
            start,
            "the interval measured at {at} ms"
        );
        let mut measured = compare_measurement(BACKGROUND, 0, 500);
        measured.measurement.time = end.to_string();
        seen.measurements = vec![measured];
        status = plan(&s, &status, &seen, end).status;
        let metric = &analysis_runs::run(&status, BACKGROUND).unwrap().metrics[0];
        assert_eq!(metric.next_measurement_at, Some(t(due).to_string()), "{at}");
        assert_eq!(
            metric.compare.as_ref().unwrap().window_end,
            Some(end.to_string())
        );
    }
}

// -- jitter: Canaries started together do not query together --------------------------------

/// When the first measurement of the background metric is due for a Canary of uid `uid`
/// whose canary first gets traffic at `t(0)`, with `interval` and an `initialDelay` of 2 s.
fn first_due(uid: &str, interval: StdDuration) -> Timestamp {
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 10}, {"pause": {"duration": "10m"}}],
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut definitions = background_with_error_limit_4().unwrap();
    for definition in definitions.values_mut().flatten() {
        definition.interval = interval;
        definition.initial_delay = StdDuration::from_secs(2);
    }
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = Ok(definitions);
    seen.canary_uid = uid.into();
    let status = plan(&s, &progressing(0, 0, 0), &seen, t(0)).status;
    let metric = &analysis_runs::run(&status, BACKGROUND).unwrap().metrics[0];
    metric
        .next_measurement_at
        .as_deref()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn canaries_started_together_spread_their_first_measurements() {
    let uids: Vec<String> = (0..1000)
        .map(|i| format!("6c1f0e2a-4b7d-4e0b-9d3c-{i:012}"))
        .collect();
    // (interval, the spread: at most a tenth of it, and 5 s)
    let cases = [
        (StdDuration::from_secs(10), StdDuration::from_secs(1)),
        (StdDuration::from_secs(1), StdDuration::from_millis(100)),
        (StdDuration::from_secs(300), StdDuration::from_secs(5)),
    ];
    for (interval, spread) in cases {
        let start = t(2);
        let mut tenths = [0usize; 10];
        for (i, uid) in uids.iter().enumerate() {
            let due = first_due(uid, interval);
            if i < 10 {
                assert_eq!(due, first_due(uid, interval), "deterministic");
            }
            let offset = due.duration_since(start);
            assert!(
                !offset.is_negative() && offset.unsigned_abs() < spread,
                "{uid} every {interval:?}: {offset:?} after the initial delay"
            );
            let tenth = offset.as_nanos() * 10 / i128::try_from(spread.as_nanos()).unwrap();
            tenths[usize::try_from(tenth).unwrap()] += 1;
        }
        // Uniform would be 100 a tenth; bunched would leave tenths empty.
        assert!(
            tenths.iter().all(|n| (60..=140).contains(n)),
            "every {interval:?}: {tenths:?}"
        );
    }
    // Without a uid (a Canary not from the API server): no offset.
    assert_eq!(first_due("", StdDuration::from_secs(10)), t(2));
}

#[test]
fn the_jittered_offset_stays_with_every_later_measurement() {
    let s = spec(serde_json::json!({
        "steps": [{"setWeight": 10}, {"pause": {"duration": "10m"}}],
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut seen = observed("r2");
    seen.canary = Some(ready("r2", 1));
    seen.analysis = background_with_error_limit_4();
    seen.canary_uid = "6c1f0e2a-4b7d-4e0b-9d3c-000000000007".into();
    let mut status = plan(&s, &progressing(0, 0, 0), &seen, t(0)).status;
    let due = |status: &CanaryStatus| -> Timestamp {
        analysis_runs::run(status, BACKGROUND).unwrap().metrics[0]
            .next_measurement_at
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first = due(&status);
    let offset = first.duration_since(t(0));
    assert!(offset.is_positive(), "{offset:?}");
    for k in 1..=3 {
        // Taken 300 ms late each time.
        let taken = due(&status) + jiff::SignedDuration::from_millis(300);
        let mut measured = measurement(BACKGROUND, 0, MeasurementPhase::Successful);
        measured.measurement.time = taken.to_string();
        seen.measurements = vec![measured];
        status = plan(&s, &status, &seen, taken).status;
        assert_eq!(
            due(&status),
            first + jiff::SignedDuration::from_secs(10 * k),
            "measurement {k}"
        );
    }
}

// -- requeue: exactly when something is due, a floor only against a busy loop ---------------

#[test]
fn a_plan_looks_again_exactly_when_something_is_due() {
    let s = spec(serde_json::json!({}));
    let soon = StdDuration::from_millis(300);
    let with_canary = |canary: WorkloadState| Observed {
        canary: Some(canary),
        ..observed("r2")
    };
    // A background analysis whose run started at t(0) and measured at t(0): next due t(10).
    let background = spec(serde_json::json!({
        "steps": [{"setWeight": 10}, {"pause": {"duration": "10m"}}],
        "analysis": {"templates": [{"templateName": "success"}]},
    }));
    let mut measuring = with_canary(ready("r2", 1));
    measuring.analysis = background_with_error_limit_4();
    let started = plan(&background, &progressing(1, 10, 0), &measuring, t(0)).status;
    let mut first = measuring.clone();
    first.measurements = vec![measurement(BACKGROUND, 0, MeasurementPhase::Successful)];
    let measured = plan(&background, &started, &first, t(0)).status;
    // (what, spec, status, observed, now, requeue)
    let cases = [
        (
            "a measurement due in 300 ms",
            &background,
            measured,
            &measuring,
            t_ms(9_700),
            soon,
        ),
        (
            "a measurement due now, being taken: not a busy loop",
            &background,
            started,
            &measuring,
            t_ms(200),
            MIN_REQUEUE,
        ),
        (
            "a pause that ends in 300 ms",
            &s,
            progressing(1, 10, 0),
            &with_canary(ready("r2", 1)),
            t_ms(59_700),
            soon,
        ),
        (
            "a canary scale-down due in 300 ms",
            &s,
            CanaryStatus {
                phase: Phase::Promoted,
                canary_scale_down_at: Some(t(60).to_string()),
                ..idle()
            },
            &Observed {
                canary: Some(ready("r1", 1)),
                ..observed("r1")
            },
            t_ms(59_700),
            soon,
        ),
        (
            "a progress deadline that passes in 300 ms",
            &s,
            CanaryStatus {
                canary_unready_since: Some(t(0).to_string()),
                ..progressing(0, 0, 0)
            },
            &with_canary(not_ready("r2", 1)),
            t_ms(599_700),
            soon,
        ),
    ];
    for (what, s, status, seen, now, requeue) in cases {
        let p = plan(s, &status, seen, now);
        assert_eq!(
            p.requeue_after,
            Some(requeue),
            "{what}: {:?}",
            p.status.message
        );
    }
    // Reached is passed: nothing is left to wait for at the deadline itself.
    let at_deadline = plan(
        &s,
        &CanaryStatus {
            canary_unready_since: Some(t(0).to_string()),
            ..progressing(0, 0, 0)
        },
        &with_canary(not_ready("r2", 1)),
        t(600),
    );
    assert_eq!(
        at_deadline.status.rollback_reason,
        Some(RollbackReason::ProgressDeadlineExceeded)
    );
}
