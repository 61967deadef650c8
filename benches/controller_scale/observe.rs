//! What the benchmark watches: every version of every Canary (phases, measurements and when
//! each was due), the VirtualServices' weights (for abort latency), and the controller
//! process (memory, CPU, connections to the API server) from /proc.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, mpsc};

use canary::api::Canary;
use canary::api::canary::Phase;

use crate::services::{NAMESPACE, canary_weight, virtual_services};

// ---------------------------------------------------------------------------------------------
// Canaries
// ---------------------------------------------------------------------------------------------

/// How a rolled Canary ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Promoted,
    RolledBack,
}

#[derive(Default)]
struct CanaryTrack {
    phase: Phase,
    /// The stable revision when it was rolled: promotion replaces it.
    stable_before: Option<String>,
    stable: Option<String>,
    rolled: bool,
    done: Option<(Instant, Outcome)>,
    rolled_at: Option<Instant>,
}

/// One metric of one analysis run (a run is known by its name and start).
#[derive(Default)]
struct MetricTrack {
    started: Option<Timestamp>,
    /// `nextMeasurementAt` in the latest version seen.
    due: Option<Timestamp>,
    latest: Option<Timestamp>,
    /// Measurements and errors counted in its tally (the most seen).
    taken: u32,
    /// When it stopped measuring (no `nextMeasurementAt` any more), as first seen.
    stopped: Option<Timestamp>,
}

#[derive(Default)]
pub struct CanaryState {
    canaries: HashMap<String, CanaryTrack>,
    metrics: HashMap<(String, String, String, String), MetricTrack>,
    /// Measurement time minus the `nextMeasurementAt` of the version before it, ms.
    pub lags_ms: Vec<f64>,
    /// New measurements whose due time was not seen (several arrived in one version).
    pub lags_unmatched: u64,
    done_sender: Option<mpsc::UnboundedSender<String>>,
}

pub struct Analysis {
    pub measurements: u64,
    pub expected: u64,
    pub runs: u64,
}

impl CanaryState {
    fn apply(&mut self, canary: &Canary) {
        let name = canary.name_any();
        let status = canary.status.clone().unwrap_or_default();
        let track = self.canaries.entry(name.clone()).or_default();
        track.phase = status.phase;
        track.stable = status.stable_revision.clone();
        if track.rolled && track.done.is_none() {
            let outcome = match status.phase {
                Phase::Promoted if status.stable_revision != track.stable_before => {
                    Some(Outcome::Promoted)
                }
                Phase::RolledBack => Some(Outcome::RolledBack),
                _ => None,
            };
            if let Some(outcome) = outcome {
                track.done = Some((Instant::now(), outcome));
                if let Some(sender) = &self.done_sender {
                    let _ = sender.send(name.clone());
                }
            }
        }
        let now = Timestamp::now();
        for run in &status.analysis_runs {
            for metric in &run.metrics {
                let key = (
                    name.clone(),
                    run.name.clone(),
                    run.started_at.clone(),
                    metric.name.clone(),
                );
                let track = self.metrics.entry(key).or_default();
                track.started = track.started.or_else(|| run.started_at.parse().ok());
                let mut new: Vec<Timestamp> = metric
                    .measurements
                    .iter()
                    .filter_map(|m| m.time.parse().ok())
                    .filter(|t| track.latest.is_none_or(|latest| *t > latest))
                    .collect();
                new.sort();
                if let Some(first) = new.first() {
                    match track.due {
                        Some(due) => self
                            .lags_ms
                            .push((*first - due).total(jiff::Unit::Millisecond).unwrap_or(0.0)),
                        None => self.lags_unmatched += 1,
                    }
                    self.lags_unmatched += new.len() as u64 - 1;
                    track.latest = new.last().copied();
                }
                track.taken = track.taken.max(metric.tally.measured + metric.tally.errors);
                track.due = metric
                    .next_measurement_at
                    .as_deref()
                    .and_then(|t| t.parse().ok());
                if track.due.is_none() && track.stopped.is_none() {
                    track.stopped = Some(now);
                }
            }
        }
    }

    /// Marks `name` as rolled now: from here on, promotion or rollback finishes it.
    pub fn rolled(&mut self, name: &str) {
        let track = self.canaries.entry(name.to_string()).or_default();
        track.stable_before = track.stable.clone();
        track.rolled = true;
        track.rolled_at = Some(Instant::now());
    }

    pub fn count_in(&self, phase: Phase) -> usize {
        self.canaries.values().filter(|c| c.phase == phase).count()
    }

    pub fn phases(&self) -> BTreeMap<String, usize> {
        let mut phases = BTreeMap::new();
        for track in self.canaries.values() {
            *phases.entry(format!("{:?}", track.phase)).or_default() += 1;
        }
        phases
    }

    /// (promoted, rolled back) so far.
    pub fn finished(&self) -> (usize, usize) {
        let outcomes = self.canaries.values().filter_map(|c| c.done.map(|d| d.1));
        outcomes.fold((0, 0), |(p, r), outcome| match outcome {
            Outcome::Promoted => (p + 1, r),
            Outcome::RolledBack => (p, r + 1),
        })
    }

    pub fn last_finish(&self) -> Option<Instant> {
        self.canaries
            .values()
            .filter_map(|c| c.done.map(|d| d.0))
            .max()
    }

    /// Seconds from roll to end, of each finished Canary.
    pub fn rollout_seconds(&self) -> Vec<f64> {
        self.canaries
            .values()
            .filter_map(|c| Some((c.done?.0 - c.rolled_at?).as_secs_f64()))
            .collect()
    }

    /// Measurements taken by the runs that started after `since`, and how many were due
    /// (start + k × interval, k ≥ 0, until the run stopped measuring, or `until`).
    pub fn analysis(&self, since: Timestamp, until: Timestamp, interval: Duration) -> Analysis {
        let mut result = Analysis {
            measurements: 0,
            expected: 0,
            runs: 0,
        };
        for track in self.metrics.values() {
            let Some(started) = track.started.filter(|s| *s >= since) else {
                continue;
            };
            let end = track.stopped.unwrap_or(until).min(until);
            let span = (end - started)
                .total(jiff::Unit::Millisecond)
                .unwrap_or(0.0)
                .max(0.0);
            result.runs += 1;
            result.measurements += u64::from(track.taken);
            result.expected += (span / interval.as_millis() as f64).floor() as u64 + 1;
        }
        result
    }
}

/// Watches the Canaries of `bench` into `state` until the task is aborted; `done` receives
/// the name of each rolled Canary as it finishes.
pub fn watch_canaries(
    client: Client,
    state: Arc<Mutex<CanaryState>>,
    done: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    state.lock().unwrap().done_sender = Some(done);
    tokio::spawn(async move {
        let api: Api<Canary> = Api::namespaced(client, NAMESPACE);
        let mut stream = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(canary) | Event::InitApply(canary)) => {
                    state.lock().unwrap().apply(&canary)
                }
                Ok(_) => {}
                // The watcher re-lists by itself; not in a busy loop.
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// VirtualServices
// ---------------------------------------------------------------------------------------------

/// The canary weight of each VirtualService and when it last changed, as the watch saw it.
#[derive(Default)]
pub struct Weights {
    weights: Mutex<HashMap<String, (u64, Instant)>>,
    changed: Notify,
}

impl Weights {
    fn apply(&self, name: String, weight: u64) {
        let mut weights = self.weights.lock().unwrap();
        let entry = weights.entry(name).or_insert((weight, Instant::now()));
        if entry.0 != weight {
            *entry = (weight, Instant::now());
        }
        drop(weights);
        self.changed.notify_waiters();
    }

    /// Waits until `condition(weight, changed at)` holds for `name`; when it does, the time
    /// of that change. `None` after `timeout`.
    pub async fn wait(
        &self,
        name: &str,
        timeout: Duration,
        condition: impl Fn(u64, Instant) -> bool,
    ) -> Option<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a change between check and wait is not missed.
            notified.as_mut().enable();
            if let Some((weight, at)) = self.weights.lock().unwrap().get(name).copied()
                && condition(weight, at)
            {
                return Some(at);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

pub fn watch_virtual_services(
    client: Client,
    weights: Arc<Weights>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher::watcher(
            virtual_services(&client),
            watcher::Config::default()
        ));
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Apply(vs) | Event::InitApply(vs)) => {
                    weights.apply(vs.name_any(), canary_weight(&vs))
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The controller process
// ---------------------------------------------------------------------------------------------

/// Figures of one process from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessSample {
    pub rss_mib: f64,
    /// The peak resident set size so far (VmHWM).
    pub peak_rss_mib: f64,
    pub cpu_seconds: f64,
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn process_sample(pid: u32) -> Option<ProcessSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| -> Option<f64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ProcessSample {
        rss_mib: kib("VmRSS:")? / 1024.0,
        peak_rss_mib: kib("VmHWM:")? / 1024.0,
        cpu_seconds: ticks / clock_ticks_per_second(),
    })
}

/// Established TCP connections of process `pid` to `port`.
pub fn connections_to(pid: u32, port: u16) -> usize {
    crate::process::established_connections(pid, port)
}

/// The most connections seen by [`sample_connections`] so far.
#[derive(Default)]
pub struct ConnectionPeak {
    pub max: Mutex<usize>,
}

/// Samples the controller's connections to the API server every second into `peak`.
pub fn sample_connections(
    pid: u32,
    port: u16,
    peak: Arc<ConnectionPeak>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = tokio::task::spawn_blocking(move || connections_to(pid, port))
                .await
                .unwrap_or(0);
            {
                let mut max = peak.max.lock().unwrap();
                *max = (*max).max(now);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
