//! How the CLI reaches the cluster: kubectl's flags (`--kubeconfig`, `--context`, `-n`), and
//! API errors turned into the documented exit codes with messages that say what to do.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::Exit;
use crate::api::canary::Canary;

/// kubectl's connection flags, shared by every command that talks to the cluster.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the Canary (default: the context's namespace, or `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// A command that could not do its job: the exit code and the sentence to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            exit: Exit::Invalid,
            message: message.into(),
        }
    }

    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
        }
    }
}

/// A connected client and the namespace commands act in.
pub struct Connection {
    pub client: Client,
    pub namespace: String,
    /// The API server's URL from the kubeconfig, named when it cannot be reached.
    pub server: String,
}

impl KubeArgs {
    pub async fn connect(&self) -> Result<Connection, Failure> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            // KUBECONFIG may list several files separated by ':'; kube merges them.
            Some(path) if path.to_string_lossy().contains(':') => {
                Config::from_kubeconfig(&options).await.map_err(|e| {
                    Failure::invalid(format!(
                        "cannot load the kubeconfig {}: {e}",
                        path.display()
                    ))
                })?
            }
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                    Failure::invalid(format!(
                        "cannot read the kubeconfig {}: {e}",
                        path.display()
                    ))
                })?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| {
                        Failure::invalid(format!(
                            "cannot use the kubeconfig {}: {e}",
                            path.display()
                        ))
                    })?
            }
            None if self.context.is_some() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| Failure::invalid(format!("cannot load the kubeconfig: {e}")))?,
            None => Config::infer().await.map_err(|e| {
                Failure::invalid(format!(
                    "no cluster to talk to: {e}; set KUBECONFIG or pass --kubeconfig"
                ))
            })?,
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let server = config.cluster_url.to_string();
        let client = Client::try_from(config)
            .map_err(|e| Failure::invalid(format!("cannot build a Kubernetes client: {e}")))?;
        Ok(Connection {
            client,
            namespace,
            server,
        })
    }
}

impl Connection {
    pub fn canaries(&self) -> Api<Canary> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Every change of one Canary, as it happens (for `status --watch`, `run --wait` and the
    /// requests' wait for an answer).
    pub fn watch_canary(
        &self,
        name: &str,
    ) -> impl futures::Stream<Item = Result<Canary, kube::runtime::watcher::Error>> + use<> {
        use kube::runtime::WatchStreamExt;
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        kube::runtime::watcher(self.canaries(), config).applied_objects()
    }

    /// Every change of one Deployment (its deletion too), as it happens; retried with
    /// backoff when the API server is away.
    pub fn watch_deployment(
        &self,
        name: &str,
    ) -> impl futures::Stream<
        Item = Result<
            kube::runtime::watcher::Event<k8s_openapi::api::apps::v1::Deployment>,
            kube::runtime::watcher::Error,
        >,
    > + use<> {
        use kube::runtime::WatchStreamExt;
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.client.clone(), &self.namespace);
        let config =
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
        kube::runtime::watcher(api, config).default_backoff()
    }

    /// The Canary, or exit 2 saying it does not exist (or cannot be read).
    pub async fn canary(&self, name: &str) -> Result<Canary, Failure> {
        match self.canaries().get_opt(name).await {
            Ok(Some(canary)) => Ok(canary),
            Ok(None) => Err(Failure::invalid(format!(
                "no Canary {name} in namespace {}: check the name (`canary list -A`) or pass -n NAMESPACE",
                self.namespace
            ))),
            Err(e) => Err(self.failure(&format!("Canary {}/{name}", self.namespace), e)),
        }
    }

    /// An error of a request about `what`, as an exit code and a sentence: an API server
    /// that cannot be reached is named, and is not taken for a missing object.
    pub fn failure(&self, what: &str, error: kube::Error) -> Failure {
        match unreachable_cause(&error) {
            Some(cause) => unreachable_server(&self.server, &cause),
            None => api_failure(what, error),
        }
    }
}

/// Exit 3 (as a timeout: no answer, try again) naming the server and the cause.
fn unreachable_server(server: &str, cause: &str) -> Failure {
    let server = server.trim_end_matches('/');
    Failure::new(
        Exit::TimedOut,
        format!(
            "cannot reach the Kubernetes API server at {server}: {cause} (check your kubeconfig/context, and that the cluster is up: `kubectl cluster-info`)"
        ),
    )
}

/// Why a request never got an answer from the API server (connection refused, timed out,
/// a name that does not resolve, a TLS failure), in a few words; None for an answer (an
/// error status) and for errors of the client itself.
fn unreachable_cause(error: &kube::Error) -> Option<String> {
    if !matches!(
        error,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_)
    ) {
        return None;
    }
    // The innermost cause says it best ("Connection refused (os error 111)"); an I/O error
    // on the way names its kind plainly.
    let mut cause: &dyn std::error::Error = error;
    let mut innermost = error.to_string();
    while let Some(source) = cause.source() {
        cause = source;
        innermost = match cause.downcast_ref::<std::io::Error>() {
            Some(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".to_string()
            }
            Some(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                "the connection timed out".to_string()
            }
            _ => cause.to_string(),
        };
    }
    if innermost.contains("deadline has elapsed") || innermost.contains("timed out") {
        innermost = "no answer in time (timed out)".to_string();
    }
    Some(innermost)
}

/// An error the API server answered (or one of the client itself) as an exit code and a
/// sentence naming the object; see [`Connection::failure`].
fn api_failure(what: &str, error: kube::Error) -> Failure {
    match &error {
        kube::Error::Api(status) if status.code == 403 => Failure::invalid(format!(
            "no access to {what}: {}; ask for RBAC permission (see deploy/rbac.yaml for what the controller needs)",
            status.message
        )),
        kube::Error::Api(status) if status.code == 404 => {
            Failure::invalid(format!("{what} does not exist: {}", status.message))
        }
        kube::Error::Api(status) => {
            Failure::invalid(format!("the API server refused {what}: {}", status.message))
        }
        other => Failure::invalid(format!("the API request for {what} failed: {other}")),
    }
}
