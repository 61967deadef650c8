//! Test support: the real local Kubernetes control plane of `scripts/cluster` (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, KWOK nodes), shared by every test
//! of one test binary.
//!
//! Include it with `#[path = "support/cluster.rs"] mod cluster;`. The first test that asks for
//! [`cluster()`] runs `scripts/cluster up`: it reuses a healthy control plane already running
//! (the project's test script starts one before `cargo test`), or starts one that stops by
//! itself when this test binary exits, whether the tests passed, failed or the binary was killed.
//! Each test gets its own namespace ([`Cluster::namespace`]), deleted when it is dropped.
//! Tests that stop or restart components take [`Cluster::exclusive_namespace`], which waits
//! until no other test of the binary holds a namespace.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// Long enough for a loaded 2-core machine, short enough that a stuck test fails in minutes.
pub const TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(100);

/// Label on every namespace this fixture creates, so leftovers can be found and removed.
pub const TEST_NAMESPACE_LABEL: &str = "canary.dev/test-namespace";

pub struct Cluster {
    repo: PathBuf,
    kubeconfig: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
/// Shared by ordinary tests, taken exclusively by tests that disrupt the control plane.
static ACCESS: LazyLock<Arc<RwLock<()>>> = LazyLock::new(|| Arc::new(RwLock::new(())));
static NAMESPACE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The control plane of this test binary, started (or found running) on first use.
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(Cluster::start) {
        Ok(cluster) => cluster,
        Err(message) => panic!("{message}"),
    }
}

/// The repository root: the nearest ancestor of this package holding `scripts/cluster`, so
/// the fixture also works from workspace members such as the traffic simulator.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("scripts/cluster").is_file())
        .expect("scripts/cluster not found above CARGO_MANIFEST_DIR")
        .to_path_buf()
}

impl Cluster {
    fn start() -> Result<Cluster, String> {
        let repo = repo_root();
        let started = Instant::now();
        // stderr goes straight to the terminal: a cold build takes many minutes and must show it.
        let output = Command::new(repo.join("scripts/cluster"))
            .args(["up", "--owner-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run scripts/cluster up: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "scripts/cluster up failed ({}); its messages are above, component logs in .cache/cluster/run/logs",
                output.status
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let kubeconfig = stdout
            .lines()
            .find_map(|line| line.strip_prefix("kubeconfig="))
            .ok_or_else(|| format!("scripts/cluster up printed no kubeconfig= line: {stdout}"))?;
        eprintln!(
            "cluster: control plane ready after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Ok(Cluster {
            repo,
            kubeconfig: PathBuf::from(kubeconfig),
        })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new client (one per test: a client is tied to the runtime of the test that made it).
    pub async fn client(&self) -> Client {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.kubeconfig.display()));
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("loading {}: {e}", self.kubeconfig.display()));
        Client::try_from(config).expect("building a client from the test kubeconfig")
    }

    /// A fresh namespace for one test, named `<prefix>-<unique suffix>`.
    pub async fn namespace(&'static self, prefix: &str) -> TestNamespace {
        let guard = ACCESS.clone().read_owned().await;
        self.create_namespace(prefix, Access::Shared(guard)).await
    }

    /// Like [`Cluster::namespace`], but no other test of this binary runs against the cluster
    /// meanwhile, so this one may stop and start components.
    pub async fn exclusive_namespace(&'static self, prefix: &str) -> TestNamespace {
        let guard = ACCESS.clone().write_owned().await;
        self.create_namespace(prefix, Access::Exclusive(guard))
            .await
    }

    async fn create_namespace(&'static self, prefix: &str, access: Access) -> TestNamespace {
        let client = self.client().await;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let name = format!(
            "{prefix}-{:x}{:06x}",
            NAMESPACE_COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos & 0xff_ffff
        );
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        // The ServiceAccount admission plugin rejects pods until the controller-manager has
        // created the namespace's default ServiceAccount.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(
            &accounts,
            "default",
            "the namespace's default ServiceAccount",
            TIMEOUT,
            |_| true,
        )
        .await;
        TestNamespace {
            name,
            client,
            cluster: self,
            access,
        }
    }

    /// Runs `scripts/cluster ARGS…` and panics with its output when it fails.
    pub async fn script(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new(self.repo.join("scripts/cluster"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|e| panic!("cannot run scripts/cluster {args:?}: {e}"));
        assert!(
            output.status.success(),
            "scripts/cluster {args:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

enum Access {
    Shared(OwnedRwLockReadGuard<()>),
    Exclusive(OwnedRwLockWriteGuard<()>),
}

/// A control-plane process that a recovery test can stop and start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
    Kwok,
}

impl Component {
    fn script_name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "apiserver",
            Component::ControllerManager => "controller-manager",
            Component::Scheduler => "scheduler",
            Component::Kwok => "kwok",
        }
    }
}

/// One test's namespace and a client; the namespace is deleted on drop (also when the test
/// panics). Set `CANARY_TEST_KEEP_NAMESPACES=1` to keep them for inspection.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    cluster: &'static Cluster,
    access: Access,
}

impl TestNamespace {
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The namespace's objects of a custom resource kind (`group`/v1), untyped.
    pub fn dynamic(&self, group: &str, kind: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk(group, "v1", kind);
        Api::namespaced_with(
            self.client.clone(),
            &self.name,
            &ApiResource::from_gvk(&gvk),
        )
    }

    fn assert_exclusive(&self, what: &str) {
        assert!(
            matches!(self.access, Access::Exclusive(_)),
            "{what} disrupts every test of this binary: use cluster().exclusive_namespace(..)"
        );
    }

    /// Stops one component (SIGTERM, then SIGKILL after 20 s) and waits until it has exited.
    pub async fn stop(&self, component: Component) {
        self.assert_exclusive("stopping a component");
        self.cluster
            .script(&["stop", component.script_name()])
            .await;
    }

    /// Starts a stopped component with its previous flags and ports and waits until it is healthy.
    pub async fn start(&self, component: Component) {
        self.assert_exclusive("starting a component");
        self.cluster
            .script(&["start", component.script_name()])
            .await;
    }

    pub async fn restart(&self, component: Component) {
        self.stop(component).await;
        self.start(component).await;
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("CANARY_TEST_KEEP_NAMESPACES").is_some() {
            eprintln!("cluster: keeping namespace {}", self.name);
            return;
        }
        // Drop cannot await; kubectl is synchronous and returns without waiting for finalizers.
        let status = Command::new(self.cluster.repo.join("scripts/cluster"))
            .args([
                "kubectl",
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "cluster: could not delete namespace {} ({status:?})",
                self.name
            );
        }
    }
}

/// Waits until the named object exists and `condition` holds for it; panics after `timeout`
/// with `what` and the object's last state, so a failure says what was expected and what was seen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&K) -> bool,
) -> K
where
    K: Clone + Debug + DeserializeOwned,
{
    let mut last: Option<K> = None;
    let mut last_error = None;
    let deadline = Instant::now() + timeout;
    loop {
        match api.get_opt(name).await {
            Ok(Some(object)) if condition(&object) => return object,
            Ok(object) => last = object,
            // The API server may be restarting in a recovery test; keep trying until the deadline.
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what} ({name}); last state: {last:#?}; last error: {last_error:?}"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the named object no longer exists.
pub async fn wait_gone<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: Clone + Debug + DeserializeOwned,
{
    eventually(&format!("{name} to be deleted"), timeout, || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await
}

/// Polls `check` until it returns `Some`, for conditions that are not one Kubernetes object
/// (a list, an HTTP endpoint); panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The API server's status for a failed request, or a panic naming `context` when the request
/// succeeded or failed without one.
pub fn api_error<T: Debug>(result: Result<T, kube::Error>, context: &str) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("{context}: expected the API server to reject it, got {other:?}"),
    }
}

/// The first event of `reason` in `ns`, waited for up to `timeout`.
pub async fn event_with_reason(
    ns: &TestNamespace,
    reason: &str,
    timeout: Duration,
) -> k8s_openapi::api::events::v1::Event {
    let events: kube::Api<k8s_openapi::api::events::v1::Event> = ns.api();
    eventually(&format!("a {reason} event"), timeout, || async {
        events
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
}
