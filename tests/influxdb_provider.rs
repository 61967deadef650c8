//! The `influxdb` provider against a real InfluxDB (Debian's `influxdb`, 1.6: InfluxQL over
//! the 1.x HTTP API; Debian has no InfluxDB with Flux, whose answers are unit-tested on the
//! documented annotated-CSV format): points written, then measured through `canary analyze`.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cli::{all_output, canary};
use prometheus::{free_port, http_get, poll_until};

/// A throwaway InfluxDB on loopback, stopped when dropped.
struct InfluxDb {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl InfluxDb {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let path = |sub: &str| dir.path().join(sub).to_str().unwrap().to_string();
        let child = Command::new("influxd")
            .arg("run")
            .env("INFLUXDB_REPORTING_DISABLED", "true")
            .env("INFLUXDB_META_DIR", path("meta"))
            .env("INFLUXDB_DATA_DIR", path("data"))
            .env("INFLUXDB_DATA_WAL_DIR", path("wal"))
            .env("INFLUXDB_HTTP_BIND_ADDRESS", addr.to_string())
            .env(
                "INFLUXDB_BIND_ADDRESS",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("INFLUXDB_HTTP_LOG_ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("influxd runs (Debian package influxdb: scripts/cluster deps installs it)");
        let server = Self {
            child,
            addr,
            _dir: dir,
        };
        poll_until("InfluxDB to answer /ping", Duration::from_secs(60), || {
            http_get(addr, "/ping")
                .ok()
                .filter(|(status, _)| *status == 204)
        });
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A POST with a bounded time; the status and body.
    fn post(&self, path_and_query: &str, body: &str) -> (u16, String) {
        let timeout = Duration::from_secs(10);
        let mut stream = TcpStream::connect_timeout(&self.addr, timeout).unwrap();
        stream.set_read_timeout(Some(timeout)).unwrap();
        write!(
            stream,
            "POST {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
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
            .unwrap();
        (status, response)
    }
}

impl Drop for InfluxDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn analyze(yaml: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("template.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut command = vec![
        "analyze",
        "-f",
        file.to_str().unwrap(),
        "--once",
        "--output",
        "json",
    ];
    for arg in args {
        command.extend(["--arg", arg]);
    }
    let output = canary(&command);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_default();
    (
        output.status.code().unwrap_or(-1),
        report,
        all_output(&output),
    )
}

fn template(address: &str, query: &str, condition: &str) -> String {
    format!(
        r#"
apiVersion: canary.dev/v1alpha1
kind: AnalysisTemplate
metadata:
  name: error-rate
spec:
  args:
  - name: app
  metrics:
  - name: error-rate
    successCondition: "{condition}"
    provider:
      influxdb:
        address: {address}
        database: shop
        query: "{query}"
"#
    )
}

#[test]
fn influxql_results_are_measured_from_points_written_to_a_real_influxdb() {
    let influx = InfluxDb::start();
    let (status, text) = influx.post("/query", "q=CREATE+DATABASE+shop");
    assert_eq!(status, 200, "{text}");
    // Error ratios of two apps, the last minute.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let points: String = (0..6)
        .flat_map(|i| {
            let at = now - 50 + i * 10;
            [
                format!("errors,app=checkout ratio=0.004 {at}"),
                format!("errors,app=cart ratio=0.2 {at}"),
            ]
        })
        .collect::<Vec<_>>()
        .join("\n");
    let (status, text) = influx.post("/write?db=shop&precision=s", &points);
    assert_eq!(status, 204, "{text}");

    let query = "SELECT mean(ratio) FROM errors WHERE app = '{{args.app}}' AND time > now() - 5m";
    let yaml = template(&influx.url(), query, "result[0] <= 0.01");
    let (code, report, text) = analyze(&yaml, &["app=checkout"]);
    assert_eq!(code, 0, "{text}");
    let measurement = &report["report"]["metrics"][0]["measurements"][0];
    assert_eq!(measurement["phase"], "Successful", "{measurement}");
    assert_eq!(measurement["value"], "[0.004]", "{measurement}");

    let (code, report, text) = analyze(&yaml, &["app=cart"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        report["report"]["metrics"][0]["measurements"][0]["phase"],
        "Failed"
    );

    // A quote in an argument stays inside the string: it selects nothing (no data), it does
    // not end the string and widen the query.
    let (code, report, text) = analyze(&yaml, &["app=x' OR app = 'checkout"]);
    assert_eq!(code, 4, "{text}");
    let measurement = &report["report"]["metrics"][0]["measurements"][0];
    assert_eq!(measurement["phase"], "Inconclusive", "{measurement}");

    // What InfluxDB says about a bad query is the measurement's error.
    let bad = template(
        &influx.url(),
        "SELECT mean(ratio) FROM",
        "result[0] <= 0.01",
    );
    let (code, report, text) = analyze(&bad, &["app=checkout"]);
    assert_eq!(code, 4, "{text}");
    let reason = report["report"]["metrics"][0]["measurements"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.starts_with("InfluxDB at "), "{reason}");
    assert!(reason.contains("rejected the query"), "{reason}");
}
