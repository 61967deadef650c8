//! A real VictoriaMetrics (Debian's `victoria-metrics`) holding the same samples as a
//! backfilled Prometheus, so the analysis tests can run against "any Prometheus API".
//!
//! Include it with `#[path = "support/victoria_metrics.rs"] mod victoria_metrics;` next to
//! `support/prometheus.rs` (as `prometheus`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::prometheus::{OpenMetrics, free_port, http_get, poll_until};

/// A VictoriaMetrics on loopback with a temporary data dir, stopped when dropped.
pub struct VictoriaMetrics {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl VictoriaMetrics {
    /// Starts one and imports `samples` (the same text a Prometheus is backfilled with).
    pub fn with(samples: &OpenMetrics) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!("-storageDataPath={}", dir.path().display()))
            .arg("-retentionPeriod=100y")
            // Answer with the samples just imported, as a backfilled Prometheus does.
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("victoria-metrics runs (Debian package victoria-metrics: scripts/cluster deps installs it)");
        let store = Self {
            child,
            addr,
            _dir: dir,
        };
        poll_until(
            "VictoriaMetrics to be healthy",
            Duration::from_secs(60),
            || {
                http_get(addr, "/health")
                    .ok()
                    .filter(|(status, _)| *status == 200)
            },
        );
        // Prometheus' text format takes milliseconds; OpenMetrics (promtool's) seconds.
        let text: String = samples
            .render()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (sample, seconds) = line.rsplit_once(' ').unwrap();
                format!("{sample} {}000\n", seconds)
            })
            .collect();
        let (status, answer) = store.post("/api/v1/import/prometheus", &text);
        assert_eq!(status, 204, "importing into VictoriaMetrics: {answer}");
        let (status, answer) = store.post("/internal/force_flush", "");
        assert_eq!(status, 200, "flushing VictoriaMetrics: {answer}");
        store
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        let timeout = Duration::from_secs(30);
        let mut stream = TcpStream::connect_timeout(&self.addr, timeout).unwrap();
        stream.set_read_timeout(Some(timeout)).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, response)
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
