//! Faults in what the analysis measures must never hold up an abort: a metrics endpoint that
//! accepts and never answers, and conditions too expensive to evaluate. The `canary
//! controller` process runs against the real local control plane, with a real Prometheus
//! scraping the traffic simulator (see `controller_e2e.rs`).

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cluster::{TestNamespace, eventually};
use kube::api::{Api, Patch, PatchParams};
use rollout::{at_weight, canary_weight_in_virtual_service, create, set_image, world};
use serde_json::json;

use canary::api::canary::{Canary, Phase};

/// Well under the 30 s the hung query may wait, well over what acting on an abort takes.
const ABORT_BOUND: Duration = Duration::from_secs(10);

/// A TCP server that accepts connections and never answers on them.
struct HungEndpoint {
    address: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

impl HungEndpoint {
    async fn start() -> HungEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let server = tokio::spawn(async move {
            // Held open, never read from or written to.
            let mut connections = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                connections.push(connection);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        HungEndpoint {
            address,
            accepted,
            _server: server,
        }
    }
}

/// Asks the controller to abort `name`'s rollout, and returns how long it took until all
/// traffic was back on stable and the request was answered in status.
async fn abort_and_time(ns: &TestNamespace, id: &str) -> Duration {
    let api: Api<Canary> = ns.api();
    let asked = Instant::now();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"canary.dev/request": format!("abort:{id}")}}}),
        ),
    )
    .await
    .unwrap();
    eventually(
        "the abort answered and all traffic on stable",
        ABORT_BOUND,
        || async {
            let answered = api
                .get("web")
                .await
                .ok()?
                .status?
                .last_request
                .filter(|r| r.id == id && r.accepted)?;
            (canary_weight_in_virtual_service(ns).await == 0).then_some(answered)
        },
    )
    .await;
    asked.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_does_not_wait_for_a_metrics_endpoint_that_never_answers() {
    let world = world("hung").await;
    let hung = HungEndpoint::start().await;
    // The analysis step measures one more metric, from an endpoint that never answers, with
    // the default 30 s timeout.
    let templates: Api<canary::api::AnalysisTemplate> = world.ns.api();
    let template = templates.get("success-rate").await.unwrap();
    let measured = serde_json::to_value(&template.spec.metrics[0]).unwrap();
    let mut stuck = measured.clone();
    stuck["name"] = json!("from-a-hung-endpoint");
    stuck["initialDelay"] = json!("0s");
    stuck["provider"]["prometheus"]["address"] = json!(format!("http://{}", hung.address));
    stuck["provider"]["prometheus"]["timeout"] = json!("30s");
    templates
        .patch(
            "success-rate",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"metrics": [measured, stuck]}})),
        )
        .await
        .unwrap();

    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    eventually(
        "a query in flight to the hung endpoint",
        Duration::from_secs(60),
        || async { (hung.accepted.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    let took = abort_and_time(&world.ns, "hung-1").await;
    eprintln!(
        "abort with a query hung on the metrics endpoint: answered, all traffic on stable after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    let (canary, _) =
        rollout::follow_until(&world.ns, Phase::RolledBack, Duration::from_secs(30)).await;
    assert_eq!(canary.status.unwrap().canary_weight, 0);
}

/// Nested comprehensions over ten-element lists, `depth` deep: 10^depth steps whatever the
/// query returns (10^8 keep a core busy for minutes).
fn expensive_condition(depth: usize) -> String {
    let list = "[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]";
    let vars: Vec<String> = (0..depth).map(|i| format!("v{i}")).collect();
    let mut condition = format!("{} >= 0.0", vars.join(" + "));
    for var in vars.iter().rev() {
        condition = format!("{list}.all({var}, {condition})");
    }
    condition
}

/// A second service `name` beside `web`, whose Canary's background analysis uses template
/// `expensive`.
async fn service_with_expensive_analysis(ns: &TestNamespace, name: &str) {
    rollout::service(ns, name, 1).await;
    create::<Canary>(
        &ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": name},
            "spec": {
                "targetRef": {"name": name},
                "service": {"port": 8080},
                "trafficRouting": {"istio": {
                    "virtualService": {"name": name, "routes": ["primary"]},
                    "destinationRule": {"name": name},
                }},
                "analysis": {"templates": [{"templateName": "expensive"}]},
                "steps": [{"setWeight": 20}, {"pause": {}}],
            },
        }),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_with_too_expensive_conditions_do_not_hold_up_another_canarys_abort() {
    let world = world("cel").await;
    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;

    let condition = expensive_condition(8);
    assert!(condition.len() <= 1024, "within the CRD's maxLength");
    create::<canary::api::AnalysisTemplate>(
        &world.ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "expensive"},
            "spec": {"metrics": [{
                "name": "everything-at-once",
                "interval": "2s",
                "successCondition": condition,
                "provider": {"prometheus": {"query": "vector(1)"}},
            }]},
        }),
    )
    .await;
    // Two of them: as many as the controller's runtime has worker threads here.
    let expensive = ["costly-1", "costly-2"];
    for name in expensive {
        service_with_expensive_analysis(&world.ns, name).await;
    }
    // Initializing prepares the analysis. (A controller stalled by the first one's conditions
    // never gets to the second, nor to Idle.)
    let canaries: Api<Canary> = world.ns.api();
    for name in expensive {
        cluster::wait_for(
            &canaries,
            name,
            "the expensive Canary initialized",
            Duration::from_secs(60),
            |c| c.status.as_ref().is_some_and(|s| s.phase == Phase::Idle),
        )
        .await;
    }
    // Their rollouts need the analysis at every reconcile.
    for name in expensive {
        rollout::set_image_of(&world.ns, name, &format!("{name}:2")).await;
    }

    let took = abort_and_time(&world.ns, "cel-1").await;
    eprintln!(
        "abort beside two Canaries with too expensive conditions: answered, all traffic on stable after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    // The expensive ones say why they cannot run, naming the template, metric and field.
    for name in expensive {
        let message = eventually(
            "the expensive Canary's status says why",
            Duration::from_secs(30),
            || async {
                canaries
                    .get(name)
                    .await
                    .ok()?
                    .status?
                    .message
                    .filter(|m| m.contains("too expensive"))
            },
        )
        .await;
        eprintln!("{name}: {message}");
        for part in [
            "expensive",
            "everything-at-once",
            "successCondition",
            "1000 series",
        ] {
            assert!(message.contains(part), "{name}: {message}");
        }
    }
}
