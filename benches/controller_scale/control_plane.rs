//! The benchmark's own local control plane: `scripts/cluster up` in a folder of its own, never
//! the shared test cluster, with the API server's audit log on (the controller's requests
//! only), stopped again at the end of the run (and by `scripts/cluster`'s owner watch if this
//! process dies first).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The ServiceAccount `deploy/rbac.yaml` binds the controller's ClusterRole to: the controller
/// runs with a token of it, so its requests can be told apart in the audit log.
pub const CONTROLLER_USER: &str = "system:serviceaccount:canary-system:canary-controller";

pub struct ControlPlane {
    repo: PathBuf,
    /// `CANARY_CLUSTER_DIR` of this instance; set on every `scripts/cluster` call.
    dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_port: u16,
    pub audit_log: PathBuf,
    running: bool,
}

impl ControlPlane {
    /// Starts a fresh instance in `work/cluster` with `nodes` KWOK nodes of `pods_per_node`.
    pub fn start(
        repo: &Path,
        work: &Path,
        nodes: usize,
        pods_per_node: usize,
    ) -> Result<Self, String> {
        let dir = work.join("cluster");
        let audit_log = work.join("audit.log");
        let policy = work.join("audit-policy.yaml");
        // Only the controller's requests: the rest of the load (KWOK's pod status updates, the
        // controller-manager) would make the log large and slow to read. The API server's
        // total comes from its own metrics instead.
        std::fs::write(
            &policy,
            format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n    users: [\"{CONTROLLER_USER}\"]\n  - level: None\n"
            ),
        )
        .map_err(|e| format!("writing {}: {e}", policy.display()))?;
        let _ = std::fs::remove_file(&audit_log);
        let mut plane = ControlPlane {
            repo: repo.to_path_buf(),
            dir,
            kubeconfig: PathBuf::new(),
            api_port: 0,
            audit_log: audit_log.clone(),
            running: false,
        };
        eprintln!(
            "bench: starting a control plane of its own in {} ({nodes} nodes × {pods_per_node} pods)",
            plane.dir.display()
        );
        // `up` picks free ports, which another process on the machine may take before a
        // component binds them; a failed `up` stops what it started, so it can run again.
        const ATTEMPTS: usize = 3;
        let mut attempt = 1;
        let output = loop {
            let output = plane
                .script(&["up", "--owner-pid", &std::process::id().to_string()])
                .env("CANARY_CLUSTER_NODES", nodes.to_string())
                .env("CANARY_CLUSTER_PODS_PER_NODE", pods_per_node.to_string())
                .env("CANARY_CLUSTER_AUDIT_LOG", &audit_log)
                .env("CANARY_CLUSTER_AUDIT_POLICY", &policy)
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run scripts/cluster up: {e}"))?;
            // From here on, `Drop` stops whatever part of it started.
            plane.running = true;
            if output.status.success() {
                break output;
            }
            if attempt == ATTEMPTS {
                return Err(format!(
                    "scripts/cluster up failed {ATTEMPTS} times (last: {}); its messages are above, component logs in {}/logs",
                    output.status,
                    plane.dir.display()
                ));
            }
            eprintln!(
                "bench: scripts/cluster up failed ({}); trying again",
                output.status
            );
            attempt += 1;
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        plane.kubeconfig = stdout
            .lines()
            .find_map(|line| line.strip_prefix("kubeconfig="))
            .map(PathBuf::from)
            .ok_or_else(|| format!("scripts/cluster up printed no kubeconfig= line: {stdout}"))?;
        plane.api_port = plane
            .state("APISERVER_PORT")?
            .parse()
            .map_err(|e| format!("APISERVER_PORT in {}/state.env: {e}", plane.dir.display()))?;
        Ok(plane)
    }

    /// `scripts/cluster ARGS…` against this instance only.
    fn script(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.repo.join("scripts/cluster"));
        command
            .args(args)
            .env("CANARY_CLUSTER_DIR", &self.dir)
            .env_remove("CANARY_CLUSTER_AUDIT_LOG")
            .env_remove("CANARY_CLUSTER_AUDIT_POLICY")
            .current_dir(&self.repo)
            .stdin(Stdio::null());
        command
    }

    /// Runs the matching kubectl against this instance; its stdout, or why it failed.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["kubectl"];
        full.extend_from_slice(args);
        let output = self
            .script(&full)
            .output()
            .map_err(|e| format!("cannot run scripts/cluster kubectl: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn state(&self, key: &str) -> Result<String, String> {
        let path = self.dir.join("state.env");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .ok_or_else(|| format!("{key} missing from {}", path.display()))
    }

    pub fn apiserver_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("pids/apiserver"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// An admin client (the bench's own requests are not the controller's).
    pub async fn admin_client(&self) -> Result<kube::Client, String> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| format!("reading {}: {e}", self.kubeconfig.display()))?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("loading {}: {e}", self.kubeconfig.display()))?;
        kube::Client::try_from(config).map_err(|e| format!("building a client: {e}"))
    }

    /// Installs `deploy/namespace.yaml` and `deploy/rbac.yaml` and writes a kubeconfig with a
    /// token of the controller's ServiceAccount: the controller runs with exactly the
    /// identity and rights it has in a cluster.
    pub fn controller_kubeconfig(&self, work: &Path) -> Result<PathBuf, String> {
        let deploy = self.repo.join("deploy");
        self.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager",
            "canary-bench",
            "-f",
            &deploy.join("namespace.yaml").to_string_lossy(),
            "-f",
            &deploy.join("rbac.yaml").to_string_lossy(),
        ])?;
        let token = self.kubectl(&[
            "create",
            "token",
            "canary-controller",
            "-n",
            "canary-system",
            "--duration",
            "24h",
        ])?;
        let path = work.join("controller.kubeconfig");
        let ca = self.dir.join("pki/ca.crt");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: bench\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: canary-controller\n  user:\n    token: {}\ncontexts:\n- name: bench\n  context: {{cluster: bench, user: canary-controller, namespace: canary-system}}\ncurrent-context: bench\n",
                self.api_port,
                ca.display(),
                token.trim()
            ),
        )
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Every request the API server has served so far (all clients), from its own
    /// `apiserver_request_total`.
    pub fn apiserver_requests_total(&self) -> Result<f64, String> {
        let pki = self.dir.join("pki");
        let output = Command::new("curl")
            .args(["-fsS", "--max-time", "20", "--cacert"])
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join("admin.crt"))
            .arg("--key")
            .arg(pki.join("admin.key"))
            .arg(format!("https://127.0.0.1:{}/metrics", self.api_port))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "reading the API server's /metrics failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(crate::sum_of_metric(
            &String::from_utf8_lossy(&output.stdout),
            "apiserver_request_total",
            None,
        ))
    }

    /// `scripts/cluster down` for this instance.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        self.running = false;
        match self.script(&["down"]).stderr(Stdio::inherit()).status() {
            Ok(status) if status.success() => {}
            other => eprintln!(
                "bench: scripts/cluster down for {} did not succeed ({other:?})",
                self.dir.display()
            ),
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
