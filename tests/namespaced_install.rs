//! The namespace-scoped install (`deploy/namespaced/`) on the real API server: the controller,
//! acting as that install's ServiceAccount with only its Role, runs a whole rollout in its
//! namespace, and the API server refuses it everything outside that namespace.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use canary::api::ClusterAnalysisTemplate;
use canary::api::canary::{Canary, Phase};
use cluster::cluster;
use rollout::{
    Install, ROLLOUT_TIMEOUT, follow_until, namespaced_controller_kubeconfig, set_image,
    world_installed,
};

/// A client acting as the namespaced controller.
async fn client_from(path: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).expect("reading the controller's kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("loading the controller's kubeconfig");
    Client::try_from(config).expect("a client as the controller")
}

/// The API server's answer code to `result` (200 when it succeeded).
fn code<T>(result: Result<T, kube::Error>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(kube::Error::Api(status)) => status.code,
        Err(other) => panic!("not an answer of the API server: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespaced_install_runs_a_rollout_and_is_refused_outside_its_namespace() {
    let world = world_installed("ns-install", Install::Namespaced).await;
    set_image(&world.ns, "web:2").await;
    let (canary, timeline) = follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    eprintln!(
        "rollout by the namespaced controller:\n{}",
        timeline.join("\n")
    );
    assert_eq!(canary.status.unwrap().canary_weight, 0);

    let other = cluster().namespace("ns-install-other").await;
    let me = client_from(&namespaced_controller_kubeconfig(&world.ns).await).await;
    let mine: Api<Deployment> = Api::namespaced(me.clone(), &world.ns.name);
    assert_eq!(code(mine.list(&Default::default()).await), 200);
    let refused = [
        (
            "list Deployments in another namespace",
            code(
                Api::<Deployment>::namespaced(me.clone(), &other.name)
                    .list(&Default::default())
                    .await,
            ),
        ),
        (
            "list Deployments cluster-wide",
            code(
                Api::<Deployment>::all(me.clone())
                    .list(&Default::default())
                    .await,
            ),
        ),
        (
            "watch Canaries cluster-wide",
            code(
                Api::<Canary>::all(me.clone())
                    .list(&Default::default())
                    .await,
            ),
        ),
        (
            "get a Secret in another namespace",
            code(
                Api::<Secret>::namespaced(me.clone(), &other.name)
                    .get("any")
                    .await,
            ),
        ),
        (
            "get a ClusterAnalysisTemplate",
            code(
                Api::<ClusterAnalysisTemplate>::all(me.clone())
                    .get("any")
                    .await,
            ),
        ),
    ];
    for (what, code) in refused {
        assert_eq!(code, 403, "the namespaced controller may not {what}");
    }
}
