//! The CI and operator commands against a real rollout: `canary run --wait`, `status --watch`,
//! `list`, and the requests, each as its own process with kubectl's flags, exactly as a
//! pipeline or a person runs them.

#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/prometheus.rs"]
mod prometheus;
#[path = "support/rollout.rs"]
mod rollout;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canary::api::canary::{Canary, CanaryStatus, Phase, RequestStatus};
use cluster::{TestNamespace, cluster, eventually};
use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rollout::{
    ROLLOUT_TIMEOUT, at_weight, canary_weight_in_virtual_service, follow_until, patch_canary,
    set_image, world,
};
use serde_json::{Value, json};
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

/// Every line of stdout as JSON (JSON Lines, as `canary run -o json` prints).
fn json_lines(ran: &Ran) -> Vec<Value> {
    ran.stdout
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("a line of stdout is not JSON ({e}): {line}\n{}", ran.stderr)
            })
        })
        .collect()
}

/// The last line of `canary run -o json`: its result.
fn run_result(ran: &Ran) -> Value {
    let result = json_lines(ran).pop().expect("a result line");
    assert_eq!(result["type"], "result", "{}", ran.stdout);
    result
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
    let result = run_result(&ran);
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
    // With -o json the refusal is JSON on stdout too.
    let refused = run(canary(&world.ns, &["abort", "web", "-o", "json"])).await;
    assert_eq!(refused.code, Some(2));
    let error = json(&refused);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["exitCode"], 2, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("nothing to abort: no rollout is under way"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_with_json_output_streams_a_line_per_change_then_the_result() {
    use tokio::io::AsyncBufReadExt;
    let world = world("cli-jsonl").await;
    let mut child = spawn(canary(
        &world.ns,
        &["run", "web", "--image", "web:2", "--wait", "-o", "json"],
    ));
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let started = Instant::now();
    let mut lines: Vec<(Duration, Value)> = Vec::new();
    while let Some(line) = tokio::time::timeout(ROLLOUT_TIMEOUT, stdout.next_line())
        .await
        .expect("a line or the end in time")
        .expect("reading stdout")
    {
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a line of stdout is not JSON ({e}): {line}"));
        lines.push((started.elapsed(), value));
    }
    let ran = finish(child).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let (result_at, result) = lines.pop().expect("a result line");
    assert_eq!(result["type"], "result", "{result}");
    assert_eq!(result["result"], "promoted", "{result}");
    assert_eq!(result["exitCode"], 0, "{result}");
    assert!(lines.len() >= 3, "{lines:?}");
    for (_, progress) in &lines {
        assert_eq!(progress["type"], "progress", "{progress}");
        assert_eq!(progress["canary"], "web", "{progress}");
        assert_eq!(progress["revision"], result["revision"], "{progress}");
        assert!(
            progress["time"].is_string() && progress["phase"].is_string(),
            "{progress}"
        );
        assert!(progress["weight"].is_u64(), "{progress}");
    }
    assert!(
        lines
            .iter()
            .any(|(_, p)| p["phase"] == "Progressing" && p["weight"] == 20),
        "{lines:?}"
    );
    // Streamed while waiting, not printed at the end: the first change came seconds before
    // the verdict (the analysis alone takes over 6 s).
    let first_at = lines[0].0;
    assert!(
        result_at - first_at > Duration::from_secs(3),
        "first line at {first_at:?}, result at {result_at:?}"
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

/// The lines a running child prints on stdout, collected as they come.
#[derive(Clone, Default)]
struct PrintedLines(Arc<Mutex<Vec<String>>>);

impl PrintedLines {
    fn follow(child: &mut Child) -> PrintedLines {
        use tokio::io::AsyncBufReadExt;
        let printed = PrintedLines::default();
        let mut lines =
            tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let collector = printed.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collector.0.lock().unwrap().push(line);
            }
        });
        printed
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded) for a line containing `text`.
    async fn wait_for(&self, text: &str) {
        eventually(
            &format!("a line with {text:?} (printed so far: {:?})", self.all()),
            ROLLOUT_TIMEOUT,
            || async { self.all().iter().any(|l| l.contains(text)).then_some(()) },
        )
        .await;
    }
}

/// Asserts that `child` is still running for `how_long` (checked every 100 ms).
async fn still_running(child: &mut Child, how_long: Duration, what: &str) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        let exited = child.try_wait().expect("checking the child");
        assert!(exited.is_none(), "{what}: it exited with {exited:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_stays_live_until_interrupted_and_exit_on_settle_ends_with_the_rollout() {
    let world = world("cli-watch").await;
    // For scripts: --exit-on-settle on a settled Canary ends at once, 0.
    let idle = run(canary(
        &world.ns,
        &[
            "status",
            "web",
            "--watch",
            "--exit-on-settle",
            "--timeout",
            "2m",
        ],
    ))
    .await;
    assert_eq!(idle.code, Some(0), "{}\n{}", idle.stdout, idle.stderr);
    assert_eq!(idle.stdout.lines().count(), 1, "{}", idle.stdout);

    // Without it, a watch started while nothing is in flight keeps watching (not a terminal:
    // one line per change).
    let mut watching = spawn(canary(&world.ns, &["status", "web", "--watch"]));
    let printed = PrintedLines::follow(&mut watching);
    printed.wait_for(" Idle 0%").await;
    still_running(
        &mut watching,
        Duration::from_secs(2),
        "a watch of an idle Canary",
    )
    .await;

    // On a terminal (a pseudo-terminal from util-linux `script`): the whole view with its
    // resource tree, redrawn every second though nothing changed.
    let mut terminal = Command::new("script");
    terminal
        .args(["-qfec"])
        .arg(format!(
            "'{}' status web --watch --kubeconfig '{}' -n {}",
            env!("CARGO_BIN_EXE_canary"),
            cluster().kubeconfig().display(),
            world.ns.name
        ))
        .arg("/dev/null")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut terminal = spawn(terminal);
    let drawn = PrintedLines::follow(&mut terminal);
    let redraws = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("watching, "))
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    eventually(
        "three redraws of the terminal view",
        ROLLOUT_TIMEOUT,
        || async { (redraws(&drawn.all()) >= 3).then_some(()) },
    )
    .await;
    let screen = drawn.all().join("\n");
    assert!(screen.contains("\x1b[H\x1b[2J"), "{screen}");
    assert!(
        screen.contains("├─ Deployment web-stable (stable)"),
        "{screen}"
    );
    drop(terminal);

    set_image(&world.ns, "web:2").await;
    follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    printed.wait_for(" Promoted 0%").await;
    still_running(
        &mut watching,
        Duration::from_secs(2),
        "a watch after the rollout settled",
    )
    .await;

    // The next change is printed too; meanwhile a script's watch ends with its rollout: 1
    // when it is rolled back.
    set_image(&world.ns, "web:3").await;
    at_weight(&world.ns, 20).await;
    let settling = spawn(canary(
        &world.ns,
        &[
            "status",
            "web",
            "--watch",
            "--exit-on-settle",
            "--timeout",
            "2m",
        ],
    ));
    let abort = run(canary(&world.ns, &["abort", "web"])).await;
    assert_eq!(abort.code, Some(0), "{}{}", abort.stdout, abort.stderr);
    let settled = finish(settling).await;
    assert_eq!(
        settled.code,
        Some(1),
        "{}\n{}",
        settled.stdout,
        settled.stderr
    );
    assert!(
        settled
            .stdout
            .lines()
            .last()
            .unwrap()
            .contains("RolledBack 0%"),
        "{}",
        settled.stdout
    );
    printed.wait_for(" RolledBack 0%").await;
    still_running(
        &mut watching,
        Duration::from_secs(1),
        "a watch after a rollback",
    )
    .await;

    // Ctrl-C ends it cleanly.
    signal(&watching.id().unwrap().to_string(), "-INT");
    let exit = tokio::time::timeout(Duration::from_secs(10), watching.wait())
        .await
        .expect("the watch ended on SIGINT")
        .unwrap();
    assert_eq!(exit.code(), Some(0), "{:?}", printed.all());

    let lines = printed.all();
    for pair in lines.windows(2) {
        let rest = |l: &str| l.split_once(' ').map(|(_, r)| r.to_string());
        assert_ne!(
            rest(&pair[0]),
            rest(&pair[1]),
            "a line per change, not per event or second: {lines:#?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains('\x1b')),
        "no terminal control codes in logs: {lines:#?}"
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
    let result = run_result(&ran);
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
        &[
            "status",
            "web",
            "--watch",
            "--exit-on-settle",
            "--timeout",
            "1m",
        ],
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

// -- run --wait ends as soon as the verdict exists ----------------------------------------

/// Far below `--timeout` (10m in these tests), well above what a verdict takes on a loaded
/// machine.
const PROMPT: Duration = Duration::from_secs(30);

/// `canary run web --image IMAGE --wait --timeout 10m EXTRA…`, and how long it took.
async fn run_wait(ns: &TestNamespace, image: &str, extra: &[&str]) -> (Ran, Duration) {
    let started = Instant::now();
    let mut args = vec!["run", "web", "--image", image, "--wait", "--timeout", "10m"];
    args.extend(extra);
    let ran = run(canary(ns, &args)).await;
    let took = started.elapsed();
    eprintln!(
        "`canary {}`: exit {:?} after {:.1} s",
        args.join(" "),
        ran.code,
        took.as_secs_f64()
    );
    (ran, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_exits_2_at_once_when_the_controller_finds_the_spec_invalid() {
    let world = world("cli-invalid").await;
    // (a) The analysis step names a template that does not exist.
    patch_canary(
        &world.ns,
        json!({"spec": {"steps": [{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "no-such-template"}]}}]}}),
    )
    .await;
    let (ran, took) = run_wait(&world.ns, "web:2", &[]).await;
    assert_eq!(ran.code, Some(2), "{}\n{}", ran.stdout, ran.stderr);
    assert!(took < PROMPT, "took {took:?}");
    for part in ["spec is invalid", "no-such-template does not exist"] {
        assert!(ran.stdout.contains(part), "{part}: {}", ran.stdout);
    }

    // (b) A template whose condition does not compile, with -o json.
    rollout::create::<canary::api::AnalysisTemplate>(
        &world.ns.api(),
        json!({
            "apiVersion": "canary.dev/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "typo"},
            "spec": {"metrics": [{
                "name": "success-rate", "interval": "2s", "count": 1,
                "successCondition": "result[0] >= 0.95 &&",
                "provider": {"prometheus": {"query": "vector(1)"}},
            }]},
        }),
    )
    .await;
    patch_canary(
        &world.ns,
        json!({"spec": {"steps": [{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "typo"}]}}]}}),
    )
    .await;
    let (ran, took) = run_wait(&world.ns, "web:3", &["-o", "json"]).await;
    assert_eq!(ran.code, Some(2), "{}\n{}", ran.stdout, ran.stderr);
    assert!(took < PROMPT, "took {took:?}");
    let result = run_result(&ran);
    assert_eq!(result["result"], "invalid", "{result}");
    assert_eq!(result["exitCode"], 2, "{result}");
    let message = result["message"].as_str().unwrap();
    for part in ["template typo", "successCondition"] {
        assert!(message.contains(part), "{part}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_back_to_the_stable_image_ends_both_waits_promptly() {
    let world = world("cli-revert").await;
    let waiting_for_2 = spawn(canary(
        &world.ns,
        &[
            "run",
            "web",
            "--image",
            "web:2",
            "--wait",
            "--timeout",
            "10m",
        ],
    ));
    at_weight(&world.ns, 20).await;
    let (ran, took) = run_wait(&world.ns, "web:1", &[]).await;
    assert_eq!(ran.code, Some(0), "{}\n{}", ran.stdout, ran.stderr);
    assert!(took < PROMPT, "took {took:?}");
    assert!(
        ran.stdout
            .contains("(stable) serves all traffic: the controller rolled back")
            && ran.stdout.contains("TargetReverted"),
        "{}",
        ran.stdout
    );
    assert_eq!(canary_weight_in_virtual_service(&world.ns).await, 0);
    let started = Instant::now();
    let superseded = finish(waiting_for_2).await;
    assert_eq!(
        superseded.code,
        Some(5),
        "{}\n{}",
        superseded.stdout,
        superseded.stderr
    );
    assert!(started.elapsed() < PROMPT, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wait_says_when_no_controller_acknowledges_the_revision() {
    // The service and its Canary, and no controller.
    let ns = cluster().namespace("cli-nocontroller").await;
    rollout::set_up(&ns, "web:1").await;
    let (ran, took) = run_wait(&ns, "web:2", &["--answer-timeout", "3s"]).await;
    assert_eq!(ran.code, Some(3), "{}\n{}", ran.stdout, ran.stderr);
    assert!(took < PROMPT, "took {took:?}");
    assert!(
        ran.stdout.contains("no controller acknowledged revision")
            && ran.stdout.contains("within 3s")
            && ran.stdout.contains("`canary controller` is running"),
        "{}",
        ran.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_prometheus_rolls_back_as_metrics_unavailable_and_run_wait_exits_4() {
    let world = world("cli-noprom").await;
    // The analysis asks a Prometheus that is not there (a closed port).
    let closed = format!("http://127.0.0.1:{}", prometheus::free_port());
    let templates: Api<canary::api::AnalysisTemplate> = world.ns.api();
    let template = templates.get("success-rate").await.unwrap();
    let mut metric = serde_json::to_value(&template.spec.metrics[0]).unwrap();
    metric["provider"]["prometheus"]["address"] = json!(closed);
    metric["initialDelay"] = json!("0s");
    metric["consecutiveErrorLimit"] = json!(1);
    templates
        .patch(
            "success-rate",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"metrics": [metric]}})),
        )
        .await
        .unwrap();
    let (ran, took) = run_wait(&world.ns, "web:2", &["-o", "json"]).await;
    assert_eq!(ran.code, Some(4), "{}\n{}", ran.stdout, ran.stderr);
    assert!(took < Duration::from_secs(90), "took {took:?}");
    let result = run_result(&ran);
    assert_eq!(result["result"], "metricsUnavailable", "{result}");
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("the metrics source was unreachable"),
        "{result}"
    );
    let canaries: Api<Canary> = world.ns.api();
    let status = canaries.get("web").await.unwrap().status.unwrap();
    assert_eq!(status.phase, Phase::RolledBack);
    assert_eq!(
        status.rollback_reason,
        Some(canary::api::canary::RollbackReason::MetricsUnavailable)
    );
    let message = status.message.unwrap_or_default();
    for part in [closed.as_str(), "is unreachable", "MetricsUnavailable"] {
        assert!(message.contains(part), "{part}: {message}");
    }
    let event = cluster::event_with_reason(&world.ns, "MetricsUnavailable", PROMPT).await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.note.unwrap_or_default();
    for part in [
        closed.as_str(),
        "is unreachable",
        "not promoted without data",
    ] {
        assert!(note.contains(part), "{part}: {note}");
    }
}

// -- an unreachable API server -------------------------------------------------------------

#[tokio::test]
async fn an_unreachable_api_server_is_named_and_not_taken_for_a_missing_canary() {
    // The test kubeconfig, pointed at a port where nothing listens.
    let mut kubeconfig = kube::config::Kubeconfig::read_from(cluster().kubeconfig()).unwrap();
    let server = format!("https://127.0.0.1:{}", prometheus::free_port());
    for named in &mut kubeconfig.clusters {
        if let Some(cluster) = named.cluster.as_mut() {
            cluster.server = Some(server.clone());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    for args in [
        vec!["status", "web"],
        vec!["list"],
        vec!["run", "web", "--image", "web:2", "--wait"],
        vec!["promote", "web"],
    ] {
        let started = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_canary"));
        command
            .args(&args)
            .arg("--kubeconfig")
            .arg(&path)
            .args(["-n", "default", "-o", "json"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let ran = run(command).await;
        assert_eq!(ran.code, Some(3), "{args:?}: {}{}", ran.stdout, ran.stderr);
        let expected =
            format!("cannot reach the Kubernetes API server at {server}: connection refused");
        assert!(ran.stderr.contains(&expected), "{args:?}: {}", ran.stderr);
        let error = json(&ran);
        assert_eq!(error["type"], "error", "{args:?}: {error}");
        assert_eq!(error["exitCode"], 3, "{args:?}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains(&expected),
            "{args:?}: {error}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{args:?}");
    }
}

// -- manual requests under contention ------------------------------------------------------

/// How many requests each burst sends at once (the reproduction used 50).
const BURST: usize = 50;

/// Every answer the controller gave, by request id, as seen in any status of the Canary
/// since the watch started (the watch sees every status the controller wrote).
#[derive(Clone, Default)]
struct Answers(Arc<Mutex<BTreeMap<String, RequestStatus>>>);

impl Answers {
    fn record(&self, status: &CanaryStatus) {
        let mut seen = self.0.lock().unwrap();
        for answer in status.answers() {
            seen.insert(answer.id.clone(), answer.clone());
        }
    }

    fn get(&self, id: &str) -> Option<RequestStatus> {
        self.0.lock().unwrap().get(id).cloned()
    }

    /// Watches the Canary `web` of `ns` in the background, from now on.
    async fn watch(ns: &TestNamespace) -> Answers {
        let answers = Answers::default();
        let api: Api<Canary> = ns.api();
        let config = watcher::Config::default().fields("metadata.name=web");
        let mut stream = Box::pin(watcher(api, config).default_backoff().applied_objects());
        // The first object is the current state: from here on nothing is missed.
        let first = tokio::time::timeout(ROLLOUT_TIMEOUT, stream.next())
            .await
            .expect("the watch of the Canary started in time");
        if let Some(Ok(canary)) = first {
            answers.record(&canary.status.unwrap_or_default());
        }
        let recorder = answers.clone();
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                if let Ok(canary) = event {
                    recorder.record(&canary.status.unwrap_or_default());
                }
            }
        });
        answers
    }
}

/// The cluster's kubectl against the Canary `web` of `ns`.
fn kubectl(ns: &TestNamespace, args: &[&str]) -> Command {
    let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster"));
    command
        .arg("kubectl")
        .args(["-n", &ns.name])
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs every command at once and waits (bounded) for all of them.
async fn run_all(commands: Vec<Command>) -> Vec<Ran> {
    let children: Vec<Child> = commands.into_iter().map(spawn).collect();
    futures::future::join_all(children.into_iter().map(finish)).await
}

/// Sends `signal` (`-STOP`, `-CONT`) to the process `pid`.
fn signal(pid: &str, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .expect("running kill");
    assert!(sent.success(), "kill {signal} {pid}");
}

/// Exit codes and how many processes ended with each, for the printed table.
fn tally(ran: &[Ran]) -> BTreeMap<Option<i32>, usize> {
    let mut counts = BTreeMap::new();
    for r in ran {
        *counts.entry(r.code).or_default() += 1;
    }
    counts
}

async fn status(ns: &TestNamespace) -> CanaryStatus {
    let api: Api<Canary> = ns.api();
    api.get("web").await.unwrap().status.unwrap_or_default()
}

/// The request annotations (both forms) still on the Canary.
async fn request_annotations(ns: &TestNamespace) -> Vec<String> {
    let api: Api<Canary> = ns.api();
    let canary = api.get("web").await.unwrap();
    canary
        .metadata
        .annotations
        .unwrap_or_default()
        .into_keys()
        .filter(|key| key.starts_with("request.canary.dev/") || key == "canary.dev/request")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_requests_loses_none() {
    let world = world("burst").await;
    // A manual gate at 10%, then a long timed pause at 20% (resume there does not advance).
    patch_canary(
        &world.ns,
        json!({"spec": {"steps": [
            {"setWeight": 10}, {"pause": {}},
            {"setWeight": 20}, {"pause": {"duration": "1h"}},
            {"setWeight": 30}, {"pause": {}},
        ]}}),
    )
    .await;
    set_image(&world.ns, "web:2").await;
    let (_, timeline) = follow_until(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    eprintln!("at the manual gate:\n{}", timeline.join("\n"));
    assert_eq!(status(&world.ns).await.current_step_index, Some(1));
    let answers = Answers::watch(&world.ns).await;
    let mut report = Vec::new();

    // 1. Concurrent `canary promote` while the controller is held (SIGSTOP) until all of them
    //    are written, as when it is busy elsewhere: every process waits in the queue and ends
    //    with its answer, and together they finish the gate once.
    let controller = world
        .controller
        .id()
        .expect("the controller runs")
        .to_string();
    signal(&controller, "-STOP");
    let started = Instant::now();
    let children: Vec<Child> = (0..BURST)
        // Generous: 50 processes start on a loaded 2-core machine while the controller waits.
        .map(|_| {
            spawn(canary(
                &world.ns,
                &["promote", "web", "-o", "json", "--timeout", "90s"],
            ))
        })
        .collect();
    eventually("every promote request written", ROLLOUT_TIMEOUT, || async {
        (request_annotations(&world.ns).await.len() == BURST).then_some(())
    })
    .await;
    let written_after = started.elapsed();
    signal(&controller, "-CONT");
    let promotes = futures::future::join_all(children.into_iter().map(finish)).await;
    let took = started.elapsed();
    let mut accepted = 0;
    for ran in &promotes {
        assert_eq!(ran.code, Some(0), "{}{}", ran.stdout, ran.stderr);
        let answer: serde_json::Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}{}", ran.stdout, ran.stderr));
        assert_eq!(answer["accepted"], true, "{answer}");
        accepted += 1;
    }
    let queued = promotes
        .iter()
        .filter(|ran| ran.stderr.contains("other requests pending"))
        .count();
    assert!(queued > 0, "a process waiting behind others says so");
    report.push(format!(
        "{BURST} concurrent `canary promote` (controller held until all were written, {} ms): exit codes {:?}, {accepted} accepted, {queued} printed their place in the queue, all ended {} ms after the first started",
        written_after.as_millis(),
        tally(&promotes),
        took.as_millis()
    ));
    // Together they finished the gate once: the rollout is at the next step, not past it.
    let (_, _) = eventually("the promote burst settled", ROLLOUT_TIMEOUT, || async {
        let status = status(&world.ns).await;
        (status.canary_weight == 20).then_some(((), ()))
    })
    .await;
    let after = status(&world.ns).await;
    assert_eq!(
        after.current_step_index,
        Some(3),
        "duplicate promotes finish one step (the gate at 1, then 20% at 2): {after:?}"
    );

    // 2. Requests written by hand as the README says, at once: pause and resume mixed.
    let ids: Vec<(String, &str)> = (0..BURST)
        .map(|i| {
            let action = if i % 2 == 0 { "pause" } else { "resume" };
            (format!("hand-{i}"), action)
        })
        .collect();
    let started = Instant::now();
    let written = run_all(
        ids.iter()
            .map(|(id, action)| {
                kubectl(
                    &world.ns,
                    &[
                        "annotate",
                        "cnry",
                        "web",
                        &format!("request.canary.dev/{id}={action}"),
                    ],
                )
            })
            .collect(),
    )
    .await;
    // A write the API server failed (overloaded, it times out) is refused to its writer, who
    // sees the error; it may have been stored all the same, and is then answered too.
    let mut refused = 0;
    for ran in &written {
        if ran.code != Some(0) {
            assert!(
                ran.stderr.contains("Error from server"),
                "kubectl annotate: {}{}",
                ran.stdout,
                ran.stderr
            );
            refused += 1;
        }
    }
    eventually(
        "every request answered and its annotation removed",
        ROLLOUT_TIMEOUT,
        || async {
            request_annotations(&world.ns)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let took = started.elapsed();
    for ((id, _), ran) in ids.iter().zip(&written) {
        let answer = answers.get(id);
        if ran.code == Some(0) {
            let answer = answer.unwrap_or_else(|| panic!("request {id} was written and lost"));
            assert!(!answer.message.is_empty(), "{answer:?}");
        }
    }
    let answered = ids
        .iter()
        .filter(|(id, _)| answers.get(id).is_some())
        .count();
    let accepted = ids
        .iter()
        .filter(|(id, _)| answers.get(id).is_some_and(|a| a.accepted))
        .count();
    report.push(format!(
        "{BURST} concurrent `kubectl annotate request.canary.dev/<id>=pause|resume`: {} written, {refused} refused by the API server; {answered} answered ({accepted} accepted, {} refused with a reason), 0 lost, all answered and removed {} ms after the first started",
        BURST - refused,
        answered - accepted,
        took.as_millis()
    ));
    assert_eq!(
        status(&world.ns).await.current_step_index,
        Some(3),
        "pause and resume never move a step"
    );

    eprintln!("\nmanual requests under contention:\n{}", report.join("\n"));
}

// -- one step number everywhere; resume and promote at a gate ------------------------------

/// The columns `kubectl get cnry web` shows, by name: the printer columns of the CRD the code
/// generates (what `scripts/cluster crds` installs), their JSONPaths read from the Canary as
/// the API server stores it. (Read here rather than from the server's Table so the test does
/// not depend on which CRD version the shared test cluster has installed.)
async fn printer_columns(ns: &TestNamespace) -> BTreeMap<String, String> {
    use kube::CustomResourceExt;
    let stored = serde_json::to_value(ns.api::<Canary>().get("web").await.unwrap()).unwrap();
    let crd = serde_json::to_value(Canary::crd()).unwrap();
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|column| {
            let path = column["jsonPath"].as_str().unwrap().replace('.', "/");
            let cell = match stored.pointer(&path) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (column["name"].as_str().unwrap().to_string(), cell)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_reads_as_one_step_number_everywhere_and_only_promote_passes_it() {
    let world = world("cli-step").await;
    patch_canary(
        &world.ns,
        json!({"spec": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}]}}),
    )
    .await;
    set_image(&world.ns, "web:2").await;
    let (gate, _) = follow_until(&world.ns, Phase::Paused, ROLLOUT_TIMEOUT).await;
    let gate = gate.status.unwrap();
    let revision = gate.canary_revision.unwrap();
    let stable = gate.stable_revision.unwrap();

    // The second of three steps, as people count: the same in every view.
    let human = run(canary(&world.ns, &["status", "web"])).await;
    assert!(
        human.stdout.contains("step       2/3 pause until promoted"),
        "{}",
        human.stdout
    );
    // The resource tree, from the real Deployments, ReplicaSets and routing objects.
    for part in [
        format!("Deployment web (target)  rev {revision}  0 pods (template only)  app=web:2"),
        format!("├─ Deployment web-stable (stable)  rev {stable}  2/2 ready  app=web:1"),
        format!("├─ Deployment web-canary (canary)  rev {revision}  1/1 ready  app=web:2"),
        "│  └─ ReplicaSet web-stable-".into(),
        "│  └─ ReplicaSet web-canary-".into(),
        "├─ routing istio: canary 20%, stable 80%".into(),
        "│  ├─ VirtualService web".into(),
        "│  └─ DestinationRule web".into(),
        "   ✓ 1/3 setWeight 20%".into(),
        "   ▶ 2/3 pause until promoted".into(),
        "   · 3/3 setWeight 50%".into(),
    ] {
        assert!(
            human.stdout.contains(&part),
            "missing {part:?} in:\n{}",
            human.stdout
        );
    }
    let tree_lines = human
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("  resources"))
        .take_while(|l| !l.starts_with("  conditions"));
    for line in tree_lines {
        assert!(
            line.chars().count() <= 100,
            "wider than 100 columns: {line}"
        );
    }
    let view = json(&run(canary(&world.ns, &["status", "web", "-o", "json"])).await);
    let tree = &view["tree"];
    assert_eq!(tree["deployments"][1]["name"], "web-stable", "{tree}");
    assert_eq!(tree["deployments"][1]["ready"], 2, "{tree}");
    assert_eq!(
        tree["deployments"][2]["revision"],
        revision.as_str(),
        "{tree}"
    );
    assert!(
        tree["deployments"][2]["replicaSets"][0]["podTemplateHash"].is_string(),
        "{tree}"
    );
    assert_eq!(tree["routing"]["canaryWeight"], 20, "{tree}");
    assert_eq!(tree["steps"][1]["state"], "current", "{tree}");
    assert_eq!(view["step"]["display"], "2/3", "{view}");
    assert_eq!(view["step"]["number"], 2, "{view}");
    assert_eq!(view["step"]["currentStepIndex"], 1, "{view}");
    let columns = printer_columns(&world.ns).await;
    assert_eq!(columns["Step"], "2/3", "{columns:?}");
    assert_eq!(columns["Revision"], revision, "{columns:?}");

    // `resume` does not open an approval gate: refused, and it says what does.
    let resume = run(canary(&world.ns, &["resume", "web"])).await;
    assert_eq!(resume.code, Some(2), "{}{}", resume.stdout, resume.stderr);
    assert!(
        resume.stderr.contains("approval gate (pause step 2/3)")
            && resume
                .stderr
                .contains(&format!("canary promote web -n {}", world.ns.name)),
        "{}",
        resume.stderr
    );
    let after = status(&world.ns).await;
    assert_eq!(
        (after.phase, after.current_step_index),
        (Phase::Paused, Some(1)),
        "the gate stays closed"
    );

    let promote = run(canary(&world.ns, &["promote", "web"])).await;
    assert_eq!(
        promote.code,
        Some(0),
        "{}{}",
        promote.stdout,
        promote.stderr
    );
    follow_until(&world.ns, Phase::Promoted, ROLLOUT_TIMEOUT).await;
    // Nothing in flight: the revision column shows what runs, not an empty cell.
    let columns = printer_columns(&world.ns).await;
    assert_eq!(columns["Revision"], revision, "{columns:?}");
    assert_eq!(columns["Step"], "", "{columns:?}");
}
