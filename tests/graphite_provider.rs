//! The `graphite` provider against a real graphite-web (Debian's `graphite-web`, its render
//! API served by Django on loopback) reading Whisper files the test writes with Debian's
//! `python3-whisper`: Argo Rollouts' documented template shape, through `canary analyze`.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/prometheus.rs"]
mod prometheus;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cli::{all_output, canary};
use prometheus::{free_port, http_get, poll_until};

/// Debian's Python, which has graphite-web, Django and whisper (not a user's pyenv one).
const PYTHON: &str = "/usr/bin/python3";

struct GraphiteWeb {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl GraphiteWeb {
    /// Writes `series` (metric path, value at each of the last 6 ten-second slots) as Whisper
    /// files, then serves them.
    fn start(series: &[(&str, f64)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("whisper")).unwrap();
        std::fs::create_dir_all(root.join("log")).unwrap();
        std::fs::write(
            root.join("canary_test_settings.py"),
            format!(
                "SECRET_KEY = 'test'\nSTORAGE_DIR = '{0}'\nWHISPER_DIR = '{0}/whisper/'\nSTANDARD_DIRS = ['{0}/whisper/']\nLOG_DIR = '{0}/log'\nINDEX_FILE = '{0}/index'\nDATABASES = {{'default': {{'NAME': '{0}/graphite.db', 'ENGINE': 'django.db.backends.sqlite3'}}}}\n",
                root.display()
            ),
        )
        .unwrap();
        let writes: String = series
            .iter()
            .map(|(path, value)| {
                let file = root.join("whisper").join(format!("{}.wsp", path.replace('.', "/")));
                format!(
                    "os.makedirs({dir:?}, exist_ok=True)\nwhisper.create({file:?}, [(10, 360)])\nwhisper.update_many({file:?}, [(now - i * 10, {value}) for i in range(6)])\n",
                    dir = file.parent().unwrap().display().to_string(),
                    file = file.display().to_string(),
                )
            })
            .collect();
        let status = Command::new(PYTHON)
            .args([
                "-c",
                &format!("import os, time, whisper\nnow = int(time.time())\n{writes}"),
            ])
            .status()
            .expect("Debian's python3 with whisper (package python3-whisper)");
        assert!(status.success(), "writing the Whisper files");
        let port = free_port();
        let child = spawn_server(root, port);
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        poll_until("graphite-web to answer", Duration::from_secs(60), || {
            http_get(addr, "/render?target=x&format=json")
                .ok()
                .filter(|(status, _)| *status == 200)
        });
        server
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn spawn_server(root: &Path, port: u16) -> Child {
    Command::new(PYTHON)
        .args([
            "-m",
            "django",
            "runserver",
            "--noreload",
            "--settings=graphite.settings",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(root)
        .env("PYTHONPATH", root)
        .env("GRAPHITE_SETTINGS_MODULE", "canary_test_settings")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("graphite-web runs (Debian package graphite-web: scripts/cluster deps installs it)")
}

impl Drop for GraphiteWeb {
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

#[test]
fn argo_graphite_template_measures_whisper_data_through_the_render_api() {
    let graphite = GraphiteWeb::start(&[
        ("stats.checkout.success_percent", 99.5),
        ("stats.cart.success_percent", 80.0),
    ]);
    // Argo Rollouts' documented shape: `target=` in the query, `result[0]`.
    let yaml = format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: success-rate
spec:
  args:
  - name: service-name
  metrics:
  - name: success-rate
    successCondition: result[0] >= 90
    provider:
      graphite:
        address: {}
        query: |
          target=averageSeries(stats.{{{{args.service-name}}}}.success_percent)
"#,
        graphite.url()
    );
    let (code, report, text) = analyze(&yaml, &["service-name=checkout"]);
    assert_eq!(code, 0, "{text}");
    let measurement = &report["report"]["metrics"][0]["measurements"][0];
    assert_eq!(measurement["phase"], "Successful", "{measurement}");
    assert!(
        measurement["value"].as_str().unwrap().starts_with("[99.5"),
        "{measurement}"
    );

    let (code, report, text) = analyze(&yaml, &["service-name=cart"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(
        report["report"]["metrics"][0]["measurements"][0]["phase"],
        "Failed"
    );

    // Nothing at that path: no data, never a pass.
    let (code, report, text) = analyze(&yaml, &["service-name=unknown"]);
    assert_eq!(code, 4, "{text}");
    assert_eq!(
        report["report"]["metrics"][0]["measurements"][0]["phase"],
        "Inconclusive"
    );

    // A value that would change the target's structure is refused before anything is sent.
    let (code, _, text) = analyze(&yaml, &["service-name=x),sumSeries(stats.*"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("would change the target's structure"),
        "{text}"
    );
}
