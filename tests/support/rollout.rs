//! Shared by the end-to-end tests: the service `web` on the real local control plane, the
//! traffic simulator routing by its VirtualService, a real Prometheus scraping the simulator,
//! and `canary controller` as its own process.
//!
//! Include it with `#[path = "support/rollout.rs"] mod rollout;` (it uses `cluster` and
//! `prometheus`, which the test file includes too).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use canary::api::canary::{Canary, Phase};

use crate::cluster::{TestNamespace, cluster, eventually};
use crate::prometheus;

pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// A binary of this workspace, next to `canary`; built first when a lone test target was
/// compiled without it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let canary = PathBuf::from(env!("CARGO_BIN_EXE_canary"));
    let path = canary.with_file_name(name);
    if !path.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bin", name, "-p", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building {name}");
    }
    path
}

pub struct Simulator {
    _child: Child,
    pub address: std::net::SocketAddr,
}

impl Simulator {
    /// Following the VirtualService `web`.
    pub async fn start(ns: &TestNamespace) -> Simulator {
        Self::start_following(ns, &["--virtual-service", "web"]).await
    }

    /// Following the routes `routes` names (the simulator's `--virtual-service NAME` and
    /// `--http-route NAME` arguments), reporting as a mesh's destination sidecars.
    pub async fn start_following(ns: &TestNamespace, routes: &[&str]) -> Simulator {
        let mut follow = routes.to_vec();
        // Each workload's series per pod, as Prometheus' Kubernetes discovery labels them.
        follow.extend(["--reporters", "destination", "--pods-per-workload", "3"]);
        Self::following(ns, &follow).await
    }

    /// The simulator at 200 rps following what `follow` names (e.g. `--service NAME`).
    pub async fn following(ns: &TestNamespace, follow: &[&str]) -> Simulator {
        let mut child = Command::new(workspace_binary("canary-traffic-simulator"))
            .arg("--kubeconfig")
            .arg(cluster().kubeconfig())
            .args(["--namespace", &ns.name, "--rps", "200", "--seed", "7"])
            .args(follow)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the traffic simulator");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            Duration::from_secs(30),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .expect("the simulator printed its address in time")
        .unwrap()
        .unwrap();
        let address = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the simulator: {line}"));
        Simulator {
            _child: child,
            address,
        }
    }

    /// A real Prometheus scraping the simulator as job `job`.
    pub async fn scraped_as(&self, job: &'static str) -> prometheus::Prometheus {
        let target = self.address;
        tokio::task::spawn_blocking(move || {
            prometheus::Prometheus::builder()
                .scrape(job, target)
                .start()
        })
        .await
        .expect("starting Prometheus")
    }

    /// Sets the total request rate.
    pub async fn set_rate(&self, requests_per_second: f64) {
        let status = reqwest::Client::new()
            .put(format!("http://{}/rate", self.address))
            .json(&json!({"requestsPerSecond": requests_per_second}))
            .send()
            .await
            .expect("PUT /rate")
            .status();
        assert!(status.is_success(), "changing the rate: {status}");
    }

    pub async fn set_error_rate(&self, workload: &str, rate: f64) {
        let status = reqwest::Client::new()
            .put(format!("http://{}/workloads/{workload}", self.address))
            .json(&json!({"errorRate": rate}))
            .send()
            .await
            .expect("PUT /workloads")
            .status();
        assert!(
            status.is_success(),
            "changing {workload}'s behaviour: {status}"
        );
    }
}

/// Waits (bounded) until the VirtualService gives the canary `weight` percent.
pub async fn at_weight(ns: &TestNamespace, weight: u64) {
    eventually(
        &format!("the canary at {weight}%"),
        ROLLOUT_TIMEOUT,
        || async { (canary_weight_in_virtual_service(ns).await == weight).then_some(()) },
    )
    .await;
}

/// Stops `child` with SIGTERM and asserts it exits successfully within `timeout`.
pub async fn terminate(child: &mut Child, timeout: Duration, what: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = tokio::time::timeout(timeout, child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} stops within {timeout:?} of SIGTERM"))
        .unwrap();
    assert!(
        status.success(),
        "{what}: exit status after SIGTERM: {status}"
    );
}

/// The controller as it runs in a cluster: its own process, watching one namespace.
/// Starts the controller for `ns` with exactly the permissions `deploy/rbac.yaml` gives it
/// (see [`controller_kubeconfig`]), so a rollout that needs a verb the ClusterRole lacks
/// fails here and not in a user's cluster.
/// The controllers' log filter: `canary=info`, or `CANARY_TEST_LOG` (e.g. `canary=debug`) to
/// see every reconcile of a failing test.
fn controller_log() -> String {
    std::env::var("CANARY_TEST_LOG").unwrap_or_else(|_| "canary=info".into())
}

pub async fn start_controller(ns: &TestNamespace, prometheus: &str) -> Child {
    let args = ["--namespace", &ns.name, "--prometheus", prometheus];
    let kubeconfig = controller_kubeconfig().await.to_string_lossy().into_owned();
    spawn_controller(
        &args,
        &[
            ("CANARY_LOG", &controller_log()),
            ("KUBECONFIG", &kubeconfig),
        ],
    )
    .await
    .0
}

/// `deploy/rbac.yaml`'s leader-election Role and RoleBinding, applied in `ns` instead of the
/// controller's own namespace: a test whose controllers keep their Lease in `ns` runs them
/// with exactly the deployed permissions there too.
pub async fn grant_leader_election(ns: &TestNamespace) {
    apply_rbac(&["Role", "RoleBinding"], Some(&ns.name)).await;
}

/// Applies the objects of `deploy/rbac.yaml` of `kinds`, the namespaced ones into `namespace`.
async fn apply_rbac(kinds: &[&str], namespace: Option<&str>) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let client = cluster().client().await;
    for mut value in rbac_documents() {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        if !kinds.contains(&kind.as_str()) {
            continue;
        }
        if let Some(namespace) = namespace {
            value["metadata"]["namespace"] = json!(namespace);
        }
        let client = client.clone();
        match (kind.as_str(), namespace) {
            ("ClusterRole", _) => apply::<ClusterRole>(Api::all(client), &value).await,
            ("ClusterRoleBinding", _) => {
                apply::<ClusterRoleBinding>(Api::all(client), &value).await
            }
            ("Role", Some(ns)) => apply::<Role>(Api::namespaced(client, ns), &value).await,
            ("RoleBinding", Some(ns)) => {
                apply::<RoleBinding>(Api::namespaced(client, ns), &value).await
            }
            _ => panic!("no namespace to apply the {kind} of deploy/rbac.yaml into"),
        }
    }
}

/// Server-side applies `value` (an object of `deploy/`) through `api`.
async fn apply<K>(api: Api<K>, value: &Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = value["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply("canary-e2e").force(),
        &Patch::Apply(value),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name} of deploy/: {e}"));
}

/// The objects of `deploy/rbac.yaml`.
fn rbac_documents() -> Vec<Value> {
    let rbac = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rbac.yaml"))
        .expect("reading deploy/rbac.yaml");
    rbac.split("\n---\n")
        .map(|document| serde_saphyr::from_str(document).expect("deploy/rbac.yaml parses"))
        .collect()
}

/// The ServiceAccount `deploy/rbac.yaml` binds its ClusterRole to.
const CONTROLLER_IDENTITY: &str = "system:serviceaccount:canary-system:canary-controller";

/// A kubeconfig that acts as the controller's ServiceAccount (impersonation), after applying
/// `deploy/rbac.yaml`'s ClusterRole and ClusterRoleBinding (cluster-scoped, so no namespace
/// is needed; the ServiceAccount itself need not exist to be impersonated). Made once per
/// test process.
pub async fn controller_kubeconfig() -> &'static std::path::Path {
    static PATH: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    PATH.get_or_init(|| async {
        apply_rbac(&["ClusterRole", "ClusterRoleBinding"], None).await;
        impersonating_kubeconfig(CONTROLLER_IDENTITY, "controller-kubeconfig.json")
    })
    .await
}

/// Writes a kubeconfig named `file_name` beside the test kubeconfig that acts as `identity`.
fn impersonating_kubeconfig(identity: &str, file_name: &str) -> PathBuf {
    let mut kubeconfig = kube::config::Kubeconfig::read_from(cluster().kubeconfig())
        .expect("reading the test kubeconfig");
    for user in &mut kubeconfig.auth_infos {
        if let Some(auth) = user.auth_info.as_mut() {
            auth.impersonate = Some(identity.to_string());
        }
    }
    // Every test process may write the same content: write aside, then rename into place.
    let path = cluster().kubeconfig().with_file_name(file_name);
    let aside = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(
        &aside,
        serde_json::to_string(&kubeconfig).expect("kubeconfig serialises"),
    )
    .expect("writing an impersonating kubeconfig");
    std::fs::rename(&aside, &path).expect("putting the impersonating kubeconfig in place");
    path
}

/// The objects of the namespace-scoped install (`kubectl kustomize deploy/namespaced`), moved
/// into `namespace` as `kustomize edit set namespace` would.
pub fn namespaced_install(namespace: &str) -> Vec<Value> {
    let output =
        std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"))
            .args(["kubectl", "kustomize", "deploy/namespaced"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running kubectl kustomize");
    assert!(
        output.status.success(),
        "kubectl kustomize deploy/namespaced: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kustomize prints UTF-8");
    text.split("\n---\n")
        .map(|document| {
            let mut value: Value =
                serde_saphyr::from_str(document).expect("kustomize output parses");
            let built_for = value["metadata"]["namespace"].clone();
            value["metadata"]["namespace"] = json!(namespace);
            if let Some(subjects) = value.get_mut("subjects").and_then(Value::as_array_mut) {
                for subject in subjects.iter_mut().filter(|s| s["namespace"] == built_for) {
                    subject["namespace"] = json!(namespace);
                }
            }
            value
        })
        .collect()
}

/// Applies the ServiceAccount, Roles and RoleBindings of the namespace-scoped install in `ns`
/// and returns a kubeconfig acting as that ServiceAccount: the controller with exactly the
/// namespaced install's permissions.
pub async fn namespaced_controller_kubeconfig(ns: &TestNamespace) -> PathBuf {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let client = cluster().client().await;
    for value in namespaced_install(&ns.name) {
        let client = client.clone();
        match value["kind"].as_str().unwrap_or_default() {
            "ServiceAccount" => {
                apply::<ServiceAccount>(Api::namespaced(client, &ns.name), &value).await
            }
            "Role" => apply::<Role>(Api::namespaced(client, &ns.name), &value).await,
            "RoleBinding" => apply::<RoleBinding>(Api::namespaced(client, &ns.name), &value).await,
            _ => {}
        }
    }
    impersonating_kubeconfig(
        &format!("system:serviceaccount:{}:canary-controller", ns.name),
        &format!("controller-{}-kubeconfig.json", ns.name),
    )
}

/// Starts the controller as the namespace-scoped install runs it: confined to `ns` with the
/// Role of `deploy/namespaced/`, its Lease in `ns` too.
pub async fn start_namespaced_controller(ns: &TestNamespace, prometheus: &str) -> Child {
    let kubeconfig = namespaced_controller_kubeconfig(ns).await;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();
    spawn_controller(
        &["--prometheus", prometheus, "--leader-elect"],
        &[
            ("CANARY_LOG", &controller_log()),
            ("KUBECONFIG", &kubeconfig),
            // What the Deployment's fieldRefs give it.
            ("CANARY_NAMESPACE", &ns.name),
            ("POD_NAMESPACE", &ns.name),
            ("POD_NAME", "canary-controller-0"),
        ],
    )
    .await
    .0
}

/// Starts `canary controller ARGS` listening on a free port, and returns it with that port
/// once it answers `/healthz`. Another test's process can take a free port before the
/// controller binds it: a controller that exits at start is started again on another port.
pub async fn spawn_controller(args: &[&str], env: &[(&str, &str)]) -> (Child, u16) {
    spawn_controller_logging(args, env, None).await
}

/// [`spawn_controller`] with its stderr appended to the file `log` (`None`: inherited), and
/// the log settings of the test's own environment removed, so it logs as by default.
pub async fn spawn_controller_logging(
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<&std::path::Path>,
) -> (Child, u16) {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let port = prometheus::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_canary"));
        if let Some(log) = log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("opening the controller's log file");
            command
                .stderr(file)
                .env_remove("CANARY_LOG")
                .env_remove("CANARY_LOG_FORMAT")
                .env_remove("NO_COLOR");
        }
        let mut child = command
            .arg("controller")
            .args(args)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("KUBECONFIG", cluster().kubeconfig())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting canary controller");
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = tokio::task::spawn_blocking(move || {
                prometheus::http_get(address, "/healthz").is_ok_and(|(status, _)| status == 200)
            })
            .await
            .expect("the health check runs");
            // Checked after the answer, so the answer cannot be another process's on a port
            // this controller failed to bind.
            if let Some(status) = child.try_wait().expect("the controller's exit status") {
                eprintln!(
                    "canary controller on port {port} exited at start ({status}), attempt {attempt} of {ATTEMPTS}"
                );
                break;
            }
            if healthy {
                return (child, port);
            }
            assert!(
                Instant::now() < deadline,
                "canary controller answers /healthz on port {port} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    panic!("canary controller did not start on any of {ATTEMPTS} free ports");
}

/// The namespace's Istio objects of `kind`.
pub fn dynamic(ns: &TestNamespace, kind: &str) -> Api<DynamicObject> {
    ns.dynamic("networking.istio.io", kind)
}

pub async fn create<K>(api: &Api<K>, value: Value)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let object: K = serde_json::from_value(value).expect("test object deserializes");
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating a test object");
}

/// The service `web` with Istio routing: its Deployment (2 replicas of `image`), a
/// DestinationRule with subsets `stable` and `canary`, and a VirtualService with all traffic on
/// stable.
pub async fn istio_web_service(ns: &TestNamespace, image: &str) {
    create::<Deployment>(
        &ns.api(),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "app", "image": image}]},
                },
            },
        }),
    )
    .await;
    create::<DynamicObject>(&dynamic(ns, "DestinationRule"), json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "web"},
        "spec": {"host": "web", "subsets": [{"name": "stable", "labels": {"app": "web"}}, {"name": "canary", "labels": {"app": "web"}}]},
    })).await;
    create::<DynamicObject>(
        &dynamic(ns, "VirtualService"),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web"},
            "spec": {"hosts": ["web"], "http": [{"name": "primary", "route": [
                {"destination": {"host": "web", "subset": "stable"}, "weight": 100},
                {"destination": {"host": "web", "subset": "canary"}, "weight": 0},
            ]}]},
        }),
    )
    .await;
}

/// The service `web`: its Deployment (2 replicas of `image`), DestinationRule, VirtualService
/// (all traffic on stable), an AnalysisTemplate judging the canary's success rate from Istio's
/// metrics, and a Canary walking 20% → analysis → 50% → 2 s → promote.
pub async fn set_up(ns: &TestNamespace, image: &str) {
    istio_web_service(ns, image).await;
    create_success_rate_template(ns, "success-rate", Some(3)).await;
    create::<Canary>(
        &ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
            "metadata": {"name": "web"},
            "spec": {
                "targetRef": {"name": "web"},
                "service": {"port": 8080},
                "trafficRouting": {"istio": {
                    "virtualService": {"name": "web", "routes": ["primary"]},
                    "destinationRule": {"name": "web"},
                }},
                "steps": [
                    {"setWeight": 20},
                    {"analysis": {"templates": [{"templateName": "success-rate"}]}},
                    {"setWeight": 50},
                    {"pause": {"duration": "2s"}},
                ],
                "progressDeadlineSeconds": 60,
                "scaleDownDelaySeconds": 3,
            },
        }),
    )
    .await;
}

/// An AnalysisTemplate `name` judging the canary's success rate from Istio's metrics, measured
/// every 2 s, `count` times (`None`: until the rollout ends).
pub async fn create_success_rate_template(ns: &TestNamespace, name: &str, count: Option<u32>) {
    create::<canary::api::AnalysisTemplate>(&ns.api(), json!({
        "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": name},
        "spec": {"metrics": [{
            "name": "success-rate",
            "interval": "2s",
            // The canary's series appear with its first traffic; a 5 s rate needs two scrapes.
            "initialDelay": "6s",
            "count": count,
            // A loaded machine may scrape late: tolerate no data at warm-up, never a failure.
            "inconclusiveLimit": 2,
            "successCondition": "result[0] >= 0.95",
            "provider": {"prometheus": {"query": concat!(
                "sum(rate(istio_requests_total{reporter=\"destination\",destination_workload_namespace=\"{{namespace}}\",destination_workload=\"{{workload}}\",response_code!~\"5..\"}[5s]))",
                " / sum(rate(istio_requests_total{reporter=\"destination\",destination_workload_namespace=\"{{namespace}}\",destination_workload=\"{{workload}}\"}[5s]))"
            )}},
        }]},
    })).await;
}

pub async fn set_image(ns: &TestNamespace, image: &str) {
    set_image_of(ns, "web", image).await;
}

/// Sets the image of Deployment `name` (its container `app`): a new revision.
pub async fn set_image_of(ns: &TestNamespace, name: &str, image: &str) {
    let api: Api<Deployment> = ns.api();
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}})),
    )
    .await
    .expect("setting the image");
}

pub async fn canary_weight_in_virtual_service(ns: &TestNamespace) -> u64 {
    let vs = dynamic(ns, "VirtualService").get("web").await.unwrap();
    let routes = vs.data["spec"]["http"][0]["route"]
        .as_array()
        .unwrap()
        .clone();
    routes
        .iter()
        .find(|r| r["destination"]["subset"] == "canary")
        .and_then(|r| r["weight"].as_u64())
        .unwrap_or(0)
}

/// Waits (bounded) until `web-canary` has been scaled to zero: after the scale-down delay.
pub async fn canary_scaled_to_zero(ns: &TestNamespace) {
    let deployments: Api<Deployment> = ns.api();
    super::cluster::wait_for(
        &deployments,
        "web-canary",
        "the canary scaled to zero",
        Duration::from_secs(30),
        |d| d.spec.as_ref().and_then(|s| s.replicas) == Some(0),
    )
    .await;
}

/// Polls the Canary until `phase`, recording each change of (phase, weight, step, message).
pub async fn follow_until(
    ns: &TestNamespace,
    phase: Phase,
    timeout: Duration,
) -> (Canary, Vec<String>) {
    follow_canary_until(ns, "web", phase, timeout).await
}

/// [`follow_until`] for the Canary `name`.
pub async fn follow_canary_until(
    ns: &TestNamespace,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> (Canary, Vec<String>) {
    let api: Api<Canary> = ns.api();
    let started = Instant::now();
    let mut timeline = Vec::new();
    let mut last = String::new();
    loop {
        let canary = api.get(name).await.expect("reading the Canary");
        let status = canary.status.clone().unwrap_or_default();
        let line = format!(
            "{:?} weight={} step={} {}",
            status.phase,
            status.canary_weight,
            status.step_display.clone().unwrap_or_default(),
            status.message.clone().unwrap_or_default()
        );
        if line != last {
            timeline.push(format!("{:>5.1}s {line}", started.elapsed().as_secs_f64()));
            last = line;
        }
        if status.phase == phase {
            return (canary, timeline);
        }
        assert!(
            started.elapsed() < timeout,
            "timed out waiting for {phase:?}; timeline:\n{}",
            timeline.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub struct World {
    pub ns: TestNamespace,
    pub simulator: Simulator,
    pub prometheus: Option<prometheus::Prometheus>,
    pub controller: Child,
}

/// How the controller under test is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// `deploy/`: the ClusterRole, bound cluster-wide.
    ClusterWide,
    /// `deploy/namespaced/`: a Role in the test's namespace, the controller confined to it.
    Namespaced,
}

/// The service at rest on web:1, the controller running, traffic flowing and scraped.
pub async fn world(prefix: &str) -> World {
    world_installed(prefix, Install::ClusterWide).await
}

/// [`world`] with the controller installed as `install` says.
pub async fn world_installed(prefix: &str, install: Install) -> World {
    world_in(cluster().namespace(prefix).await, install).await
}

/// [`world_installed`] in a namespace the test made itself (e.g. an exclusive one, to stop
/// components).
pub async fn world_in(ns: TestNamespace, install: Install) -> World {
    set_up(&ns, "web:1").await;
    let simulator = Simulator::start(&ns).await;
    let prometheus = simulator.scraped_as("mesh").await;
    let controller = match install {
        Install::ClusterWide => start_controller(&ns, &prometheus.url()).await,
        Install::Namespaced => start_namespaced_controller(&ns, &prometheus.url()).await,
    };
    let (canary, timeline) = follow_until(&ns, Phase::Idle, ROLLOUT_TIMEOUT).await;
    eprintln!("initialized:\n{}", timeline.join("\n"));
    assert_eq!(canary.status.unwrap().canary_weight, 0);
    let target: Deployment = ns.api().get("web").await.unwrap();
    assert_eq!(
        target.spec.unwrap().replicas,
        Some(0),
        "the target is kept at zero replicas"
    );
    World {
        ns,
        simulator,
        prometheus: Some(prometheus),
        controller,
    }
}

pub fn image_of(deployment: &Deployment) -> String {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

pub async fn patch_canary(ns: &TestNamespace, patch: Value) {
    let api: Api<Canary> = ns.api();
    api.patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("patching the Canary");
}

/// Another service `name` beside `web`: its Deployment (`replicas` of `name:1`), and a
/// DestinationRule and VirtualService (one route, `primary`) with all traffic on stable.
pub async fn service(ns: &TestNamespace, name: &str, replicas: i32) {
    create::<Deployment>(
        &ns.api(),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": format!("{name}:1")}]},
                },
            },
        }),
    )
    .await;
    create::<DynamicObject>(&dynamic(ns, "DestinationRule"), json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": name},
        "spec": {"host": name, "subsets": [{"name": "stable", "labels": {"app": name}}, {"name": "canary", "labels": {"app": name}}]},
    })).await;
    create::<DynamicObject>(
        &dynamic(ns, "VirtualService"),
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name},
            "spec": {"hosts": [name], "http": [{"name": "primary", "route": [
                {"destination": {"host": name, "subset": "stable"}, "weight": 100},
                {"destination": {"host": name, "subset": "canary"}, "weight": 0},
            ]}]},
        }),
    )
    .await;
}

/// Creates Canary `name` with Canary `from`'s spec but targeting `target`: a copied manifest.
pub async fn copy_canary(ns: &TestNamespace, from: &str, name: &str, target: &str) {
    let canaries: Api<Canary> = ns.api();
    let original = canaries
        .get(from)
        .await
        .expect("reading the Canary to copy");
    let mut copy = json!({
        "apiVersion": "canary.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": name},
        "spec": serde_json::to_value(&original.spec).expect("a spec serialises"),
    });
    copy["spec"]["targetRef"]["name"] = json!(target);
    create::<Canary>(&canaries, copy).await;
}

/// Waits until Canary `name` is refused for naming what another Canary owns (`Ready=False`,
/// reason `RoutingConflict`); returns it.
pub async fn refused_as_conflicting(ns: &TestNamespace, name: &str) -> Canary {
    crate::cluster::wait_for(
        &ns.api::<Canary>(),
        name,
        "Ready=False RoutingConflict",
        Duration::from_secs(30),
        |c| {
            c.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|r| {
                    r.type_ == "Ready" && r.status == "False" && r.reason == "RoutingConflict"
                })
            })
        },
    )
    .await
}
