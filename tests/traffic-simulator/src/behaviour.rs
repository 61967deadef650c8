//! How each simulated workload answers: its error rate, error code and latency distribution,
//! and changes scheduled for later ("the canary gets worse 30 s from now").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One workload's answers. Latency is log-normal, given by its median and 99th percentile,
/// the two numbers people state about latency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Behaviour {
    /// Share of requests answered with `error_code`, in [0, 1].
    pub error_rate: f64,
    pub error_code: u16,
    pub latency_median_ms: f64,
    pub latency_p99_ms: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            error_rate: 0.0,
            error_code: 503,
            latency_median_ms: 20.0,
            latency_p99_ms: 100.0,
        }
    }
}

impl Behaviour {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!("errorRate {} is not in [0, 1]", self.error_rate));
        }
        if !(100..=599).contains(&self.error_code) {
            return Err(format!(
                "errorCode {} is not an HTTP status",
                self.error_code
            ));
        }
        if !(self.latency_median_ms > 0.0 && self.latency_p99_ms >= self.latency_median_ms) {
            return Err(format!(
                "latency needs 0 < latencyMedianMs ({}) <= latencyP99Ms ({})",
                self.latency_median_ms, self.latency_p99_ms
            ));
        }
        Ok(())
    }

    /// Parameters (mu, sigma) of the log-normal with this median and 99th percentile.
    pub fn log_normal(&self) -> (f64, f64) {
        // z of the 99th percentile of the standard normal distribution.
        const Z99: f64 = 2.326_347_874;
        let mu = self.latency_median_ms.ln();
        let sigma = (self.latency_p99_ms / self.latency_median_ms).ln() / Z99;
        (mu, sigma)
    }
}

/// A change requested at run time; fields left out keep their current value when it applies.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BehaviourChange {
    pub error_rate: Option<f64>,
    pub error_code: Option<u16>,
    pub latency_median_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Apply this many seconds from now instead of at once.
    pub after_seconds: Option<f64>,
}

impl BehaviourChange {
    pub fn applied_to(&self, base: &Behaviour) -> Behaviour {
        Behaviour {
            error_rate: self.error_rate.unwrap_or(base.error_rate),
            error_code: self.error_code.unwrap_or(base.error_code),
            latency_median_ms: self.latency_median_ms.unwrap_or(base.latency_median_ms),
            latency_p99_ms: self.latency_p99_ms.unwrap_or(base.latency_p99_ms),
        }
    }
}

#[derive(Clone, Debug)]
struct Pending {
    at: Instant,
    workload: String,
    change: BehaviourChange,
}

/// Behaviour per workload: a default for all, overrides per workload, and pending changes.
#[derive(Clone, Debug)]
pub struct Behaviours {
    default: Behaviour,
    workloads: BTreeMap<String, Behaviour>,
    pending: Vec<Pending>,
}

impl Behaviours {
    pub fn new(default: Behaviour) -> Self {
        Behaviours {
            default,
            workloads: BTreeMap::new(),
            pending: Vec::new(),
        }
    }

    pub fn of(&self, workload: &str) -> &Behaviour {
        self.workloads.get(workload).unwrap_or(&self.default)
    }

    /// Validates the change against the workload's current behaviour, then applies it now or
    /// schedules it; a scheduled change is validated again when it applies.
    pub fn change(
        &mut self,
        workload: &str,
        change: BehaviourChange,
        now: Instant,
    ) -> Result<(), String> {
        change.applied_to(self.of(workload)).validate()?;
        match change.after_seconds {
            Some(s) if s > 0.0 && s.is_finite() => self.pending.push(Pending {
                at: now + Duration::from_secs_f64(s),
                workload: workload.to_string(),
                change,
            }),
            Some(s) if !(s.is_finite() && s >= 0.0) => {
                return Err(format!("afterSeconds {s} is not a non-negative number"));
            }
            _ => {
                let next = change.applied_to(self.of(workload));
                self.workloads.insert(workload.to_string(), next);
            }
        }
        Ok(())
    }

    /// Applies the pending changes that are due, in the order they were requested.
    pub fn apply_due(&mut self, now: Instant) {
        let (due, later): (Vec<Pending>, Vec<Pending>) =
            self.pending.drain(..).partition(|p| p.at <= now);
        self.pending = later;
        for p in due {
            let next = p.change.applied_to(self.of(&p.workload));
            if next.validate().is_ok() {
                self.workloads.insert(p.workload, next);
            }
        }
    }

    /// Current overrides and pending changes, for `/state`.
    pub fn describe(&self, now: Instant) -> serde_json::Value {
        serde_json::json!({
            "default": self.default,
            "workloads": self.workloads,
            "pending": self.pending.iter().map(|p| serde_json::json!({
                "workload": p.workload,
                "inSeconds": p.at.saturating_duration_since(now).as_secs_f64(),
                "change": p.change,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_normal_reproduces_median_and_p99() {
        let b = Behaviour {
            latency_median_ms: 50.0,
            latency_p99_ms: 400.0,
            ..Behaviour::default()
        };
        let (mu, sigma) = b.log_normal();
        assert!((mu.exp() - 50.0).abs() < 1e-9);
        assert!(((mu + 2.326_347_874 * sigma).exp() - 400.0).abs() < 1e-6);
    }

    #[test]
    fn scheduled_change_applies_only_when_due_and_merges_fields() {
        let t0 = Instant::now();
        let mut b = Behaviours::new(Behaviour::default());
        b.change(
            "web-canary",
            BehaviourChange {
                error_rate: Some(0.2),
                after_seconds: Some(30.0),
                ..BehaviourChange::default()
            },
            t0,
        )
        .unwrap();
        b.apply_due(t0 + Duration::from_secs(29));
        assert_eq!(b.of("web-canary").error_rate, 0.0);
        b.apply_due(t0 + Duration::from_secs(30));
        assert_eq!(b.of("web-canary").error_rate, 0.2);
        assert_eq!(
            b.of("web-canary").latency_median_ms,
            20.0,
            "other fields kept"
        );
        assert_eq!(
            b.of("web-stable").error_rate,
            0.0,
            "other workloads untouched"
        );
    }

    #[test]
    fn invalid_changes_are_refused() {
        let mut b = Behaviours::new(Behaviour::default());
        let now = Instant::now();
        for change in [
            BehaviourChange {
                error_rate: Some(1.5),
                ..BehaviourChange::default()
            },
            BehaviourChange {
                latency_p99_ms: Some(5.0),
                ..BehaviourChange::default()
            },
            BehaviourChange {
                after_seconds: Some(-1.0),
                ..BehaviourChange::default()
            },
        ] {
            assert!(b.change("w", change.clone(), now).is_err(), "{change:?}");
        }
        assert_eq!(b.of("w"), &Behaviour::default());
    }
}
