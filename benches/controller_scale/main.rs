//! Controller scale benchmark: N Canaries on a local control plane of its own, all rolled at
//! once (or K at a time), the release controller running as `deploy/` runs it.
//!
//! ```text
//! cargo bench --bench controller_scale                               # N = 10, 100, 300, 1000
//! cargo bench --bench controller_scale -- --canaries 10,100 --interval 10s
//! cargo bench --bench controller_scale -- --canaries 1000 --rolling 40 --json out.json
//! ```
//!
//! For each N: a fresh control plane (`scripts/cluster up` in `target/controller-scale/n<N>`,
//! 4 KWOK nodes, the API server's audit log on for the controller's ServiceAccount), a static
//! exporter serving healthy request counters for every service, scraped by a real Prometheus;
//! N services (Deployment, DestinationRule, VirtualService, Canary: 20% → pause 2 intervals →
//! 50% → pause 2 intervals, a background success-rate analysis every interval); then
//! `canary controller --leader-elect` with a token of its ServiceAccount. It waits until all are
//! settled, sets a new image on every target, aborts a sample mid-rollout (as `canary abort`
//! does), and waits until every rollout has ended. Prints a table and writes JSON.

mod audit;
mod control_plane;
mod observe;
#[path = "../../tests/support/process.rs"]
mod process;
#[path = "../../tests/support/prometheus.rs"]
mod prometheus;
mod report;
mod services;

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use jiff::Timestamp;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use canary::api::canary::Phase;

use control_plane::{CONTROLLER_USER, ControlPlane};
use observe::{CanaryState, ConnectionPeak, Weights};
use report::{Percentiles, RunResult};

#[derive(Parser, Debug)]
#[command(about = "Controller scale benchmark: N Canaries rolled at once on a local control plane")]
struct Arguments {
    /// How many Canaries, one run each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,100,300,1000")]
    canaries: Vec<usize>,
    /// Roll at most this many at once; the next starts when one ends (default: all at once).
    #[arg(long)]
    rolling: Option<usize>,
    /// The analysis interval of every Canary (each pause lasts two).
    #[arg(long, default_value = "10s")]
    interval: canary::api::Duration,
    /// Canaries aborted mid-rollout in each run (at most half of them).
    #[arg(long, default_value_t = 20)]
    aborts: usize,
    /// Give up waiting for the Canaries to settle, or for the rollouts to end, after this long
    /// (the figures until then are still reported).
    #[arg(long, default_value = "20m")]
    timeout: canary::api::Duration,
    /// KWOK nodes of the control plane.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/controller_scale.json")]
    json: PathBuf,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Polls `check` every 200 ms until it returns `Some`; an error naming `what` after `timeout`.
pub async fn within<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of every sample of `name` in a Prometheus text page whose labels contain `filter`.
pub fn sum_of_metric(page: &str, name: &str, filter: Option<&str>) -> f64 {
    page.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| filter.is_none_or(|f| line.contains(f)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The static exporter's page: healthy request counters for every canary workload (10 rps,
/// 0.1% errors), growing with time so every rate has data.
fn exporter_page(services: usize, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64();
    let ok = (seconds * 10.0).floor();
    let errors = (seconds * 0.01).floor();
    let mut page = format!("# TYPE {} counter\n", services::METRIC);
    for index in 0..services {
        let workload = services::canary_workload(&services::service_name(index));
        for (code, value) in [("200", ok), ("500", errors)] {
            writeln!(
                page,
                "{}{{namespace=\"{}\",workload=\"{workload}\",code=\"{code}\"}} {value}",
                services::METRIC,
                services::NAMESPACE
            )
            .unwrap();
        }
    }
    page
}

fn prometheus_queries(prometheus: &prometheus::Prometheus) -> Result<f64, String> {
    scraped_sum(
        prometheus.addr(),
        "Prometheus'",
        "prometheus_http_requests_total",
        Some("handler=\"/api/v1/query\""),
    )
}

/// The sum of `metric`'s series (those containing `filter`) on `whose` `/metrics` page.
fn scraped_sum(
    address: std::net::SocketAddr,
    whose: &str,
    metric: &str,
    filter: Option<&str>,
) -> Result<f64, String> {
    let (status, page) = prometheus::http_get(address, "/metrics")
        .map_err(|e| format!("reading {whose} /metrics: {e}"))?;
    if status != 200 {
        return Err(format!("{whose} /metrics answered {status}"));
    }
    Ok(sum_of_metric(&page, metric, filter))
}

/// How many reconciles the controller has finished (its own `/metrics`): each one is a turn
/// in its queue, so they show how busy the queue is.
fn controller_reconciles(address: std::net::SocketAddr) -> Result<f64, String> {
    scraped_sum(
        address,
        "the controller's",
        "canary_reconcile_duration_seconds_count",
        None,
    )
}

/// The controller binary: the one `cargo bench` built, or `CANARY_BENCH_CONTROLLER` (e.g. to
/// measure another build without rebuilding the benchmark).
fn controller_binary() -> PathBuf {
    std::env::var_os("CANARY_BENCH_CONTROLLER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_canary")))
}

/// Starts the controller as `deploy/controller` runs it: `canary controller --leader-elect`,
/// JSON logs at `warn,canary=info`, the Prometheus of templates that name none, as the
/// ServiceAccount (token kubeconfig); stderr into `log`. Waits (bounded) for `/healthz`.
/// Returns the process and the address of its `/metrics`.
async fn start_controller(
    kubeconfig: &Path,
    prometheus: &str,
    log: &Path,
) -> Result<(Child, std::net::SocketAddr), String> {
    let port = prometheus::free_port();
    let file =
        std::fs::File::create(log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let mut child = Command::new(controller_binary())
        .args(["controller", "--leader-elect", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env("KUBECONFIG", kubeconfig)
        .env("CANARY_LOG_FORMAT", "json")
        // CANARY_BENCH_CONTROLLER_LOG: another filter, e.g. `canary=debug` to see each reconcile.
        .env(
            "CANARY_LOG",
            std::env::var("CANARY_BENCH_CONTROLLER_LOG")
                .unwrap_or_else(|_| "warn,canary=info".into()),
        )
        .env("CANARY_PROMETHEUS", prometheus)
        .env("POD_NAME", "canary-controller-bench")
        .env("POD_NAMESPACE", "canary-system")
        .env_remove("CANARY_NAMESPACE")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", controller_binary().display()))?;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "canary controller exited at start ({status}); its log is {}",
                log.display()
            ));
        }
        let healthy = tokio::task::spawn_blocking(move || {
            prometheus::http_get(address, "/healthz").is_ok_and(|(status, _)| status == 200)
        })
        .await
        .unwrap_or(false);
        if healthy {
            return Ok((child, address));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "canary controller did not answer /healthz on {address} within 60 s; its log is {}",
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM, then (after 30 s) SIGKILL.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// The machine's 1-minute load average: other work on the machine shows in every figure.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn cpu_of(pid: Option<u32>) -> f64 {
    pid.and_then(observe::process_sample)
        .map_or(0.0, |s| s.cpu_seconds)
}

async fn run(arguments: &Arguments, repo: &Path, count: usize) -> Result<RunResult, String> {
    let interval = arguments.interval.as_std();
    let timeout = arguments.timeout.as_std();
    let rolling = arguments.rolling.unwrap_or(count).clamp(1, count);
    let work = repo.join(format!("target/controller-scale/n{count}"));
    std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
    // Target pods at creation, then stable and canary pods during the rollouts.
    let pods_per_node = (3 * count).div_ceil(arguments.nodes) + 110;
    let mut plane = ControlPlane::start(repo, &work, arguments.nodes, pods_per_node)?;

    let exporter_started = Instant::now();
    let exporter =
        prometheus::MetricsServer::start(move |_| exporter_page(count, exporter_started));
    let target = exporter.addr();
    let prometheus = tokio::task::spawn_blocking(move || {
        prometheus::Prometheus::builder()
            .scrape("exporter", target)
            .start()
    })
    .await
    .map_err(|e| format!("starting Prometheus: {e}"))?;

    let client = plane.admin_client().await?;
    let controller_kubeconfig = plane.controller_kubeconfig(&work)?;
    let setup = Instant::now();
    services::create_namespace_and_template(&client, interval).await?;
    services::create_services(&client, count, interval).await?;
    let setup_seconds = setup.elapsed().as_secs_f64();
    eprintln!("bench: N={count}: created {count} services in {setup_seconds:.1}s");

    let state = Arc::new(Mutex::new(CanaryState::default()));
    let (done_sender, mut done) = mpsc::unbounded_channel();
    let canary_watch = observe::watch_canaries(client.clone(), state.clone(), done_sender);
    let weights = Arc::new(Weights::default());
    let weight_watch = observe::watch_virtual_services(client.clone(), weights.clone());

    let controller_started = Timestamp::now();
    let settle = Instant::now();
    let (mut controller, controller_address) = start_controller(
        &controller_kubeconfig,
        &prometheus.url(),
        &work.join("controller.log"),
    )
    .await?;
    let pid = controller.id().ok_or("the controller exited")?;
    let peak = Arc::new(ConnectionPeak::default());
    let connection_sampler = observe::sample_connections(pid, plane.api_port, peak.clone());
    let mut last_report = Instant::now();
    within(timeout, &format!("all {count} Canaries Idle"), || {
        let idle = state.lock().unwrap().count_in(Phase::Idle);
        if last_report.elapsed() >= Duration::from_secs(15) {
            eprintln!(
                "bench: N={count}: settling, {:?}",
                state.lock().unwrap().phases()
            );
            last_report = Instant::now();
        }
        std::future::ready((idle == count).then_some(()))
    })
    .await?;
    let settled = Timestamp::now();
    let settle_seconds = settle.elapsed().as_secs_f64();
    let at_settle = observe::process_sample(pid).ok_or("the controller exited")?;
    let connections_settled = observe::connections_to(pid, plane.api_port);
    eprintln!(
        "bench: N={count}: all Idle after {settle_seconds:.1}s; RSS {:.1} MiB, {connections_settled} connections",
        at_settle.rss_mib
    );

    // The rollouts.
    let apiserver_pid = plane.apiserver_pid();
    let rollout_started = Timestamp::now();
    let roll_instant = Instant::now();
    let controller_cpu_before = at_settle.cpu_seconds;
    let apiserver_cpu_before = cpu_of(apiserver_pid);
    let queries_before = prometheus_queries(&prometheus)?;
    let reconciles_before = controller_reconciles(controller_address)?;
    let load_before = load_average();
    let apiserver_requests_before = plane.apiserver_requests_total()?;
    let names: Vec<String> = (0..count).map(services::service_name).collect();
    let roller = {
        let client = client.clone();
        let state = state.clone();
        let names = names.clone();
        tokio::spawn(async move {
            let roll = |name: String| {
                let client = client.clone();
                let state = state.clone();
                async move {
                    state.lock().unwrap().rolled(&name);
                    if let Err(e) = services::set_image(&client, &name, 2).await {
                        eprintln!("bench: {e}");
                    }
                }
            };
            let mut next = names.into_iter();
            let first: Vec<String> = next.by_ref().take(rolling).collect();
            futures::future::join_all(first.into_iter().map(roll)).await;
            // One more each time one ends, until every service was rolled.
            for name in next {
                if done.recv().await.is_none() {
                    break;
                }
                roll(name).await;
            }
        })
    };
    let aborts = arguments.aborts.min(count / 2);
    let abort_tasks: Vec<_> = (0..aborts)
        .map(|k| {
            let name = services::service_name(k * count / aborts);
            let client = client.clone();
            let weights = weights.clone();
            tokio::spawn(async move {
                // Mid-rollout: half an interval into the 20% step.
                weights.wait(&name, timeout, |weight, _| weight > 0).await?;
                tokio::time::sleep(interval / 2).await;
                let written = Instant::now();
                let id = format!("{}-bench{k}", Timestamp::now().as_millisecond());
                if let Err(e) = services::request_abort(&client, &name, id).await {
                    eprintln!("bench: {e}");
                    return None;
                }
                let stable = weights
                    .wait(&name, Duration::from_secs(120), |weight, at| {
                        weight == 0 && at >= written
                    })
                    .await?;
                Some((stable - written).as_secs_f64() * 1000.0)
            })
        })
        .collect();

    let mut last_report = Instant::now();
    let finished = within(timeout, &format!("all {count} rollouts to end"), || {
        let (promoted, rolled_back) = state.lock().unwrap().finished();
        if last_report.elapsed() >= Duration::from_secs(15) {
            eprintln!(
                "bench: N={count}: {:.0}s into the rollouts: {promoted} promoted, {rolled_back} rolled back, {:?}",
                roll_instant.elapsed().as_secs_f64(),
                state.lock().unwrap().phases()
            );
            last_report = Instant::now();
        }
        std::future::ready((promoted + rolled_back == count).then_some(()))
    })
    .await;
    let rollout_ended = Timestamp::now();
    let problem = finished.err();
    let load_after = load_average();
    let at_end = observe::process_sample(pid).unwrap_or_default();
    let apiserver_cpu = cpu_of(apiserver_pid) - apiserver_cpu_before;
    let queries = prometheus_queries(&prometheus)? - queries_before;
    let reconciles = controller_reconciles(controller_address)? - reconciles_before;
    let apiserver_requests = plane.apiserver_requests_total()? - apiserver_requests_before;
    let mut abort_latencies = Vec::new();
    let mut aborts_unanswered = 0;
    for task in abort_tasks {
        if !task.is_finished() {
            task.abort();
        }
        match task.await {
            Ok(Some(ms)) => abort_latencies.push(ms),
            _ => aborts_unanswered += 1,
        }
    }
    roller.abort();
    connection_sampler.abort();
    stop(&mut controller).await;
    canary_watch.abort();
    weight_watch.abort();

    let startup_requests = audit::count(
        &plane.audit_log,
        CONTROLLER_USER,
        controller_started,
        settled,
    )?;
    let rollout_requests = audit::count(
        &plane.audit_log,
        CONTROLLER_USER,
        rollout_started,
        rollout_ended,
    )?;
    let state = state.lock().unwrap();
    let analysis = state.analysis(rollout_started, rollout_ended, interval);
    let (promoted, rolled_back) = state.finished();
    let rollout_wall = (rollout_ended - rollout_started)
        .total(jiff::Unit::Second)
        .unwrap_or(0.0);
    let result = RunResult {
        canaries: count,
        rolling,
        interval_seconds: interval.as_secs_f64(),
        completed: problem.is_none(),
        problem,
        setup_seconds,
        settle_seconds,
        rss_mib_settled: at_settle.rss_mib,
        rss_mib_peak: at_end.peak_rss_mib,
        controller_cpu_seconds: at_end.cpu_seconds,
        controller_cpu_seconds_rollout: at_end.cpu_seconds - controller_cpu_before,
        connections_settled,
        connections_max: *peak.max.lock().unwrap(),
        requests_per_measurement: (analysis.measurements > 0)
            .then(|| rollout_requests.total as f64 / analysis.measurements as f64),
        requests_startup: startup_requests,
        requests_rollout: rollout_requests,
        apiserver_requests_rollout: apiserver_requests,
        apiserver_cpu_seconds_rollout: apiserver_cpu,
        apiserver_cores_rollout: if rollout_wall > 0.0 {
            apiserver_cpu / rollout_wall
        } else {
            0.0
        },
        measurements: analysis.measurements,
        measurements_expected: analysis.expected,
        prometheus_queries: queries,
        reconciles_rollout: reconciles,
        tick_lag_ms: Percentiles::of(state.lags_ms.clone()),
        tick_lag_unmatched: state.lags_unmatched,
        abort_ms: Percentiles::of(abort_latencies),
        aborts_unanswered,
        promoted,
        rolled_back,
        finish_seconds: state
            .last_finish()
            .map_or(0.0, |at| (at - roll_instant).as_secs_f64()),
        rollout_seconds: Percentiles::of(state.rollout_seconds()),
        load_average: [load_before, load_after],
    };
    drop(state);
    drop(prometheus);
    drop(exporter);
    plane.stop();
    Ok(result)
}

fn write_json(path: &Path, arguments: &Arguments, results: &[RunResult]) -> Result<(), String> {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let document = serde_json::json!({
        "benchmark": "controller_scale",
        "date": Timestamp::now().to_string(),
        "commit": commit,
        "controller": controller_binary(),
        "interval": arguments.interval.to_string(),
        "rolling": arguments.rolling,
        "aborts": arguments.aborts,
        "nodes": arguments.nodes,
        "runs": results,
    });
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&document).unwrap())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Which signal asked the benchmark to stop.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

#[tokio::main]
async fn main() {
    let arguments = Arguments::parse();
    if arguments.canaries.iter().any(|&n| n < 2) {
        eprintln!("bench: --canaries takes numbers of at least 2, e.g. 10,100");
        std::process::exit(2);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut results = Vec::new();
    let mut failed = false;
    for &count in &arguments.canaries {
        eprintln!(
            "bench: N={count}, interval {}, {} rolling at once",
            arguments.interval,
            arguments.rolling.unwrap_or(count).min(count)
        );
        // Ctrl-C or SIGTERM drops the run: the controller, Prometheus and the control plane
        // are stopped by their handles' destructors instead of outliving the benchmark.
        let outcome = tokio::select! {
            outcome = run(&arguments, &repo, count) => outcome,
            signal = interrupted() => Err(format!("interrupted by {signal}; stopped what it started")),
        };
        match outcome {
            Ok(result) => {
                if let Some(problem) = &result.problem {
                    eprintln!("bench: N={count}: {problem}");
                    failed = true;
                }
                results.push(result);
            }
            Err(problem) => {
                eprintln!("bench: N={count} failed: {problem}");
                failed = true;
                break;
            }
        }
        if let Err(e) = write_json(&arguments.json, &arguments, &results) {
            eprintln!("bench: {e}");
            failed = true;
        }
    }
    println!("{}", report::table(&results));
    println!("JSON: {}", arguments.json.display());
    if failed {
        std::process::exit(1);
    }
}
