//! A real Prometheus for integration tests.
//!
//! - [`Prometheus::builder`] starts the Debian `prometheus` binary on a free `127.0.0.1` port
//!   with a temporary data dir and a generated config, and waits (bounded) for `/-/ready`.
//!   Dropping the handle kills and reaps the process, also when the test panics; a small
//!   `sh` guard kills it too if the test process dies without running destructors.
//! - Historical data: [`OpenMetrics`] writes exposition text with timestamps, which
//!   [`PrometheusBuilder::backfill`] turns into TSDB blocks with
//!   `promtool tsdb create-blocks-from openmetrics` before the server starts, so queries with
//!   `time=` inside the backfilled range are exact and reproducible.
//! - Live data: [`MetricsServer`] serves a `/metrics` page from the test process, and
//!   [`PrometheusBuilder::scrape`] makes Prometheus scrape it every second.
//! - If `prometheus` or `promtool` is missing, the Debian package is installed first.
//!
//! Include it with `#[path = "support/prometheus.rs"] mod prometheus;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long Prometheus may take to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long to wait between two checks of a condition that is polled.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Polls `condition` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn poll_until<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL_EVERY);
    }
}

/// A free port on 127.0.0.1 at the time of the call (the listener is closed again).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port on 127.0.0.1")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Installing the binaries
// ---------------------------------------------------------------------------------------------

fn on_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|candidate| candidate.is_file())
    })
}

fn apt_get(args: &[&str]) -> Result<(), String> {
    let output = Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=300"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running apt-get {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "apt-get {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Paths of `prometheus` and `promtool`, installing the Debian package when either is missing.
/// Done once per test binary; apt's own lock (waited for) serialises concurrent test binaries.
pub fn binaries() -> &'static (PathBuf, PathBuf) {
    static BINARIES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINARIES.get_or_init(|| {
        let find = || Some((on_path("prometheus")?, on_path("promtool")?));
        if let Some(found) = find() {
            return found;
        }
        let install = ["install", "-y", "--no-install-recommends", "prometheus"];
        if let Err(first) = apt_get(&install) {
            // The package lists may be missing or stale on a fresh machine.
            apt_get(&["update"]).unwrap_or_else(|e| panic!("{first}; then {e}"));
            apt_get(&install).unwrap_or_else(|e| panic!("{first}; after apt-get update: {e}"));
        }
        find().expect("apt-get installed prometheus but prometheus/promtool are not on PATH")
    })
}

// ---------------------------------------------------------------------------------------------
// OpenMetrics text for backfilling
// ---------------------------------------------------------------------------------------------

/// The OpenMetrics type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Samples are named `<family>_total`.
    Counter,
    Gauge,
    /// Samples are named `<family>_bucket` (with `le`), `<family>_sum`, `<family>_count`.
    Histogram,
    /// Any sample name; used for counters whose exposed name has no `_total` suffix (Envoy).
    Unknown,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Unknown => "unknown",
        }
    }
}

#[derive(Default)]
struct Family {
    kind: Option<Kind>,
    /// Series (sample name and rendered labels) → samples (unix seconds, value), in time order.
    series: BTreeMap<(String, String), Vec<(i64, f64)>>,
}

/// Builds an OpenMetrics exposition with timestamps, for `promtool tsdb
/// create-blocks-from openmetrics`. Families and series are grouped as the format requires;
/// the samples of a series must be added in increasing time.
#[derive(Default)]
pub struct OpenMetrics {
    families: BTreeMap<String, Family>,
}

impl OpenMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample of `family` (declared as `kind`) named `name` with `labels` at `time`.
    pub fn sample(
        &mut self,
        family: &str,
        kind: Kind,
        name: &str,
        labels: &[(&str, &str)],
        time: jiff::Timestamp,
        value: f64,
    ) {
        let entry = self.families.entry(family.to_string()).or_default();
        assert!(
            entry.kind.is_none_or(|k| k == kind),
            "family {family} declared with two kinds"
        );
        entry.kind = Some(kind);
        let samples = entry
            .series
            .entry((name.to_string(), render_labels(labels)))
            .or_default();
        let t = time.as_second();
        assert!(
            samples.last().is_none_or(|(last, _)| *last < t),
            "samples of {name}{{{}}} must be added in increasing time",
            render_labels(labels)
        );
        samples.push((t, value));
    }

    /// A counter sample; `name` ends in `_total`, the family is the name without it.
    pub fn counter(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        time: jiff::Timestamp,
        value: f64,
    ) {
        let family = name
            .strip_suffix("_total")
            .unwrap_or_else(|| panic!("counter {name} must end in _total (use Kind::Unknown)"));
        self.sample(family, Kind::Counter, name, labels, time, value);
    }

    /// One observation of a whole histogram: cumulative `buckets` as `(le, count)` (the
    /// `+Inf` bucket is added from `count`), plus `_sum` and `_count`.
    pub fn histogram(
        &mut self,
        family: &str,
        labels: &[(&str, &str)],
        time: jiff::Timestamp,
        buckets: &[(f64, f64)],
        sum: f64,
        count: f64,
    ) {
        for (le, cumulative) in buckets
            .iter()
            .map(|(le, c)| (format_number(*le), *c))
            .chain(std::iter::once(("+Inf".to_string(), count)))
        {
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(
                family,
                Kind::Histogram,
                &format!("{family}_bucket"),
                &with_le,
                time,
                cumulative,
            );
        }
        self.sample(
            family,
            Kind::Histogram,
            &format!("{family}_sum"),
            labels,
            time,
            sum,
        );
        self.sample(
            family,
            Kind::Histogram,
            &format!("{family}_count"),
            labels,
            time,
            count,
        );
    }

    /// The exposition text, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (family, content) in &self.families {
            let kind = content.kind.expect("a family has samples");
            writeln!(out, "# TYPE {family} {}", kind.as_str()).unwrap();
            for ((name, labels), samples) in &content.series {
                for (t, value) in samples {
                    writeln!(out, "{name}{{{labels}}} {} {t}", format_number(*value)).unwrap();
                }
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    labels
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn format_number(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{x}")
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// How to start a Prometheus.
#[derive(Default)]
pub struct PrometheusBuilder {
    backfill: Option<String>,
    scrape: Vec<(String, SocketAddr)>,
}

impl PrometheusBuilder {
    /// Write `openmetrics` into the TSDB before starting (via promtool).
    pub fn backfill(mut self, openmetrics: &OpenMetrics) -> Self {
        self.backfill = Some(openmetrics.render());
        self
    }

    /// Scrape `target`'s `/metrics` every second as job `job`.
    pub fn scrape(mut self, job: &str, target: SocketAddr) -> Self {
        self.scrape.push((job.to_string(), target));
        self
    }

    pub fn start(self) -> Prometheus {
        let (prometheus, promtool) = binaries();
        let dir = tempfile::Builder::new()
            .prefix("canary-prometheus-")
            .tempdir()
            .expect("creating a temporary directory for Prometheus");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("creating the data dir");
        if let Some(text) = &self.backfill {
            let input = dir.path().join("backfill.om.txt");
            std::fs::write(&input, text).expect("writing the OpenMetrics file");
            let output = Command::new(promtool)
                .args(["tsdb", "create-blocks-from", "openmetrics"])
                .arg(&input)
                .arg(&data)
                .stdin(Stdio::null())
                .output()
                .expect("running promtool");
            assert!(
                output.status.success(),
                "promtool tsdb create-blocks-from openmetrics failed ({}):\n{}\n{}\n(input kept at {})",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                input.display()
            );
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, self.config()).expect("writing prometheus.yml");

        // The port is free when chosen but could be taken before Prometheus binds it: retry.
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            let log_path = dir.path().join(format!("prometheus-{port}.log"));
            let log = std::fs::File::create(&log_path).expect("creating the Prometheus log");
            let mut child = Command::new("sh")
                .args(["-c", GUARD, "canary-prometheus-guard"])
                .arg(prometheus)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", data.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // Backfilled samples are old: keep them whatever their age.
                .arg("--storage.tsdb.retention.time=100y")
                .arg("--log.level=warn")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting prometheus");
            let mut server = Prometheus {
                lifeline: child.stdin.take(),
                child: Some(child),
                port,
                log: log_path,
                _dir: None,
            };
            match server.wait_ready() {
                Ok(()) => {
                    server._dir = Some(dir);
                    return server;
                }
                Err(failure) => last_failure = failure,
            }
        }
        panic!("Prometheus did not start: {last_failure}");
    }

    fn config(&self) -> String {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        if self.scrape.is_empty() {
            config.push_str("  []\n");
        }
        for (job, target) in &self.scrape {
            writeln!(
                config,
                "  - job_name: {job:?}\n    static_configs:\n      - targets: [\"{target}\"]"
            )
            .unwrap();
        }
        config
    }
}

/// Runs Prometheus (`$1`, with the remaining arguments) and SIGKILLs it as soon as its
/// standard input reaches end of file: when the handle is dropped, and also when the test
/// process dies without running destructors (killed, aborted, or the handle kept in a
/// `static`, which is never dropped). Exits with Prometheus' status when Prometheus exits.
/// A background list reads /dev/null unless redirected, hence the descriptor 3 copy of stdin.
const GUARD: &str = r#"exec 3<&0
bin="$1"; shift
"$bin" "$@" </dev/null &
p=$!
{ read -r _ <&3; kill -KILL "$p" 2>/dev/null; } &
r=$!
wait "$p"; status=$?
kill "$r" 2>/dev/null
exit "$status""#;

/// How long stopping may take before the guard itself is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Prometheus; killed and reaped on drop (and killed by its guard if the test
/// process dies first).
pub struct Prometheus {
    /// The write end of the guard's stdin: closing it stops Prometheus.
    lifeline: Option<std::process::ChildStdin>,
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Prometheus {
    pub fn builder() -> PrometheusBuilder {
        PrometheusBuilder::default()
    }

    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The last lines Prometheus logged (for failure messages).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("the process is owned");
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                self.child = None;
                return Err(format!("it exited ({status}):\n{}", log_tail(&self.log)));
            }
            if let Ok((200, _)) = http_get(self.addr(), "/-/ready") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "/-/ready did not answer 200 within {READY_TIMEOUT:?}:\n{}",
                    log_tail(&self.log)
                ));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Runs an instant query directly (not through the code under test) and returns the
    /// `data.result` array, or the error Prometheus gave.
    pub fn query(
        &self,
        query: &str,
        time: Option<jiff::Timestamp>,
    ) -> Result<Vec<serde_json::Value>, String> {
        let mut path = format!("/api/v1/query?query={}", percent_encode(query));
        if let Some(time) = time {
            write!(path, "&time={}", time.as_second()).unwrap();
        }
        let (status, body) = http_get(self.addr(), &path).map_err(|e| e.to_string())?;
        let json: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Polls `query` (evaluated now) until it returns at least one series.
    pub fn wait_for_series(&self, query: &str, timeout: Duration) -> Vec<serde_json::Value> {
        poll_until(&format!("{query} to return data"), timeout, || {
            self.query(query, None).ok().filter(|r| !r.is_empty())
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // End of file on the guard's stdin: it kills Prometheus, reaps it and exits.
        drop(self.lifeline.take());
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL_EVERY / 10);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            write!(out, "%{byte:02X}").unwrap();
        }
    }
    out
}

/// A minimal HTTP/1.1 GET with a bounded time; returns the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// A live /metrics endpoint served by the test
// ---------------------------------------------------------------------------------------------

type Page = dyn Fn() -> String + Send + Sync;

/// Serves `GET /metrics` (Prometheus text format) on 127.0.0.1 from a thread of the test
/// process. The page is produced by a closure at every scrape, so a test can make counters
/// grow. Stops on drop.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    scrapes: Arc<Mutex<u64>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// `page(n)` is the body for the n-th scrape (starting at 0).
    pub fn start(page: impl Fn(u64) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the /metrics server");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(Mutex::new(0u64));
        let thread = {
            let stop = stop.clone();
            let scrapes = scrapes.clone();
            let page: Box<Page> = {
                let scrapes = scrapes.clone();
                Box::new(move || page(*scrapes.lock().unwrap()))
            };
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut stream) = stream else { continue };
                    if serve_one(&mut stream, &*page).is_ok() {
                        *scrapes.lock().unwrap() += 1;
                    }
                }
            })
        };
        Self {
            addr,
            stop,
            scrapes,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many pages were served so far.
    pub fn scrapes(&self) -> u64 {
        *self.scrapes.lock().unwrap()
    }
}

fn serve_one(stream: &mut TcpStream, page: &Page) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        request.extend_from_slice(&buffer[..n]);
    }
    let request = String::from_utf8_lossy(&request);
    let (status, body) = if request.starts_with("GET /metrics") {
        ("200 OK", page())
    } else {
        ("404 Not Found", String::from("not found\n"))
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Both);
    if status.starts_with("200") {
        Ok(())
    } else {
        Err(std::io::ErrorKind::NotFound.into())
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
