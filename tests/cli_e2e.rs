//! The CI and operator commands against a real rollout: `canary run --wait`, `status --watch`,
//! `list`, and the requests, each as its own process with kubectl's flags, exactly as a
//! pipeline or a person runs them.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::process::Stdio;
use std::time::{Duration, Instant};

use cluster::{TestNamespace, cluster};
use rollout::{ROLLOUT_TIMEOUT, at_weight, canary_weight_in_virtual_service, set_image, world};
use serde_json::Value;
use tokio::process::{Child, Command};

/// `canary ARGS… --kubeconfig … -n NS` as a child process.
fn canary(ns: &TestNamespace, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_canary"));
    command
        .args(args)
        .arg("--kubeconfig")
        .arg(cluster().kubeconfig())
        .args(["-n", &ns.name])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<std::process::Output> for Ran {
    fn from(output: std::process::Output) -> Self {
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

async fn run(command: Command) -> Ran {
    finish(spawn(command)).await
}

fn spawn(mut command: Command) -> Child {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command started")
}

async fn finish(child: Child) -> Ran {
    tokio::time::timeout(ROLLOUT_TIMEOUT, child.wait_with_output())
        .await
        .expect("the command finished in time")
        .expect("the command ran")
        .into()
}

fn json(ran: &Ran) -> Value {
    serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\n{}", ran.stdout, ran.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_promotes_a_good_image_and_the_json_outputs_carry_the_documented_fields() {
    let world = world("cli-good").await;
    let ran = run(canary(
        &world.ns,
        &["run", "web", "--image", "web:2", "--wait", "-o", "json"],
    ))
    .await;
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    let result = json(&ran);
    assert_eq!(result["result"], "promoted");
    assert_eq!(result["exitCode"], 0);
    assert_eq!(result["images"], "app=web:2");
    assert!(result["revision"].as_str().unwrap().len() == 10, "{result}");
    assert!(
        result["timeline"].as_array().unwrap().len() >= 3,
        "{result}"
    );

    // The same image again: nothing to do.
    let again = run(canary(
        &world.ns,
        &["run", "web", "--image", "app=web:2", "--wait"],
    ))
    .await;
    assert_eq!(again.code, Some(0), "{}{}", again.stdout, again.stderr);
    assert!(
        again.stdout.contains("is already live; nothing to do"),
        "{}",
        again.stdout
    );

    let status = json(&run(canary(&world.ns, &["status", "web", "-o", "json"])).await);
    assert_eq!(status["phase"], "Promoted");
    assert_eq!(status["weight"], 0);
    assert_eq!(status["stableRevision"], result["revision"]);
    assert!(
        status["next"]
            .as_str()
            .unwrap()
            .contains("waiting for a new revision")
    );
    assert!(
        status["metrics"][0]["latest"]["reason"].is_string(),
        "{status}"
    );
    assert!(
        status["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Promoted"),
        "{status}"
    );

    let list = json(&run(canary(&world.ns, &["list", "-o", "json"])).await);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["name"], "web");

    // A request that does not apply is refused before anything is written.
    let refused = run(canary(&world.ns, &["promote", "web"])).await;
    assert_eq!(refused.code, Some(2));
    assert!(
        refused
            .stderr
            .contains("nothing to promote: no rollout is under way"),
        "{}",
        refused.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_exits_1_when_the_canary_is_rolled_back() {
    let world = world("cli-bad").await;
    world.simulator.set_error_rate("web-canary", 0.5).await;
    let ran = run(canary(
        &world.ns,
        &["run", "web", "--image", "web:bad", "--wait"],
    ))
    .await;
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("was rolled back (AnalysisFailed)"),
        "{}",
        ran.stdout
    );
    // Progress went to stderr, one line per change, for the CI log.
    assert!(ran.stderr.contains("Progressing 20%"), "{}", ran.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_revision_supersedes_the_one_being_waited_for() {
    let world = world("cli-super").await;
    let waiting = spawn(canary(
        &world.ns,
        &["run", "web", "--image", "web:2", "--wait"],
    ));
    at_weight(&world.ns, 20).await;
    set_image(&world.ns, "web:3").await;
    let ran = finish(waiting).await;
    assert_eq!(ran.code, Some(5), "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("was superseded by"), "{}", ran.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_gives_up_at_the_timeout() {
    let world = world("cli-timeout").await;
    let started = Instant::now();
    let ran = run(canary(
        &world.ns,
        &[
            "run",
            "web",
            "--image",
            "web:2",
            "--wait",
            "--timeout",
            "3s",
        ],
    ))
    .await;
    assert_eq!(ran.code, Some(3), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("had no verdict after 3s"),
        "{}",
        ran.stdout
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_from_another_process_ends_the_wait_with_1_and_stable_gets_all_traffic_at_once() {
    let world = world("cli-abort").await;
    let waiting = spawn(canary(
        &world.ns,
        &["run", "web", "--image", "web:2", "--wait"],
    ));
    at_weight(&world.ns, 20).await;
    let asked = Instant::now();
    let abort = run(canary(&world.ns, &["abort", "web", "-o", "json"])).await;
    assert_eq!(abort.code, Some(0), "{}\n{}", abort.stdout, abort.stderr);
    // When `canary abort` returns, the controller has already moved the traffic.
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
    let took = asked.elapsed();
    let answer = json(&abort);
    assert_eq!(answer["accepted"], true);
    assert_eq!(answer["action"], "abort");
    eprintln!(
        "canary abort → 100% stable: {} ms (controller answered in {} ms)",
        took.as_millis(),
        answer["milliseconds"]
    );
    let ran = finish(waiting).await;
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("rolled back (aborted by an operator)"),
        "{}",
        ran.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_one_line_per_change_and_ends_with_the_rollout() {
    let world = world("cli-watch").await;
    let watching = spawn(canary(
        &world.ns,
        &["status", "web", "--watch", "--timeout", "2m"],
    ));
    // Idle is settled: a watch started before the rollout ends at once.
    let idle = finish(watching).await;
    assert_eq!(idle.code, Some(0), "{}\n{}", idle.stdout, idle.stderr);
    assert_eq!(idle.stdout.lines().count(), 1, "{}", idle.stdout);

    set_image(&world.ns, "web:2").await;
    at_weight(&world.ns, 20).await;
    let watching = spawn(canary(
        &world.ns,
        &["status", "web", "--watch", "--timeout", "2m"],
    ));
    let ran = finish(watching).await;
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines.len() >= 3, "{}", ran.stdout);
    assert!(
        lines.last().unwrap().contains("Promoted 0%"),
        "{}",
        ran.stdout
    );
    for pair in lines.windows(2) {
        let rest = |l: &str| l.split_once(' ').map(|(_, r)| r.to_string());
        assert_ne!(
            rest(pair[0]),
            rest(pair[1]),
            "a line per change, not per event: {}",
            ran.stdout
        );
    }
    assert!(
        !ran.stdout.contains('\x1b'),
        "no terminal control codes in logs"
    );
}

#[tokio::test]
async fn commands_on_a_missing_canary_exit_2_and_say_so() {
    let ns = cluster().namespace("cli-missing").await;
    for args in [
        vec!["status", "nope"],
        vec!["run", "nope", "--image", "web:2"],
        vec!["abort", "nope"],
        vec!["promote", "nope", "--full"],
    ] {
        let ran = run(canary(&ns, &args)).await;
        assert_eq!(ran.code, Some(2), "{args:?}: {}{}", ran.stdout, ran.stderr);
        assert!(
            ran.stderr
                .contains(&format!("no Canary nope in namespace {}", ns.name)),
            "{args:?}: {}",
            ran.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_gate_ends_run_wait_with_success_on_pause_and_promote_continues() {
    let world = world("cli-gate").await;
    rollout::patch_canary(
        &world.ns,
        serde_json::json!({"spec": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}]}}),
    )
    .await;
    let ran = run(canary(
        &world.ns,
        &[
            "run",
            "web",
            "--image",
            "web:2",
            "--wait",
            "--success-on-pause",
            "-o",
            "json",
        ],
    ))
    .await;
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    let result = json(&ran);
    assert_eq!(result["result"], "paused");
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("`canary promote web` continues it"),
        "{result}"
    );
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 20);

    let promote = run(canary(&world.ns, &["promote", "web"])).await;
    assert_eq!(
        promote.code,
        Some(0),
        "{}\n{}",
        promote.stdout,
        promote.stderr
    );
    assert!(
        promote
            .stdout
            .contains("promote (skipping to the next step)"),
        "{}",
        promote.stdout
    );
    let watched = run(canary(
        &world.ns,
        &["status", "web", "--watch", "--timeout", "1m"],
    ))
    .await;
    assert_eq!(
        watched.code,
        Some(0),
        "{}\n{}",
        watched.stdout,
        watched.stderr
    );
    assert!(
        watched.stdout.lines().last().unwrap().contains("Promoted"),
        "{}",
        watched.stdout
    );
}
