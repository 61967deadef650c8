//! `canary analyze`: run a template against Prometheus — once, live, or over a past window.

use std::collections::BTreeMap;
use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};

use super::output::{table, terminal_safe, time};
use super::{Exit, OutputFormat, parse_key_value};
use crate::analysis::import::{ImportedTemplate, read_documents};
use crate::analysis::measurement::one_line;
use crate::analysis::render::CONTEXT_NAMES;
use crate::analysis::run::{self, AnalysisReport, Measurement, MetricReport, NoSecrets, Schedule};
use crate::analysis::{AnalysisPhase, MeasurementPhase};
use crate::api::Duration;
use crate::api::analysis_template::ProviderKind;
use crate::metrics::{Providers, without_userinfo};

/// Run an analysis template against Prometheus and print its verdict.
///
/// Without --once or --from, measures live at each metric's interval until every metric has
/// its count (or --for ends). With --from/--to, answers "what would this template have decided
/// then?" by evaluating instant queries at each interval of the past window.
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  canary analyze -f analysis-templates/istio.yaml --prometheus http://localhost:9090 \\
      --arg namespace=shop --arg workload=checkout-canary --once
  canary analyze -f t.yaml --prometheus http://localhost:9090 --from 2026-11-20T10:00:00Z --to 2026-11-20T11:00:00Z
  canary analyze -f t.yaml --prometheus http://localhost:9090 --from -2h --output json

Times are RFC 3339 (2026-11-20T10:00:00Z), Unix seconds, `now`, or relative to now (-30m, -2h).
--arg sets template arguments, and the context values a Canary would fill in
(namespace, target, canary, stable, workload, interval); a context name the template also
declares as an argument sets both.

Exit codes: 0 passed, 1 failed, 2 invalid input, 4 inconclusive or Prometheus unreachable.")]
pub struct Args {
    /// The template file (canary.dev, Argo Rollouts or Flagger format).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Which template of the file, when it holds several.
    #[arg(long)]
    pub template: Option<String>,
    /// Prometheus base URL for metrics that name no address (and instead of the ones they name).
    #[arg(long, env = "CANARY_PROMETHEUS")]
    pub prometheus: Option<String>,
    /// Template argument or context value, NAME=VALUE (repeatable).
    #[arg(long = "arg", value_parser = parse_key_value)]
    pub args: Vec<(String, String)>,
    /// Measure every metric once, now.
    #[arg(long, conflicts_with_all = ["from", "to", "for_duration"])]
    pub once: bool,
    /// Start of a past window to analyse retrospectively.
    #[arg(long, value_parser = parse_time, allow_hyphen_values = true)]
    pub from: Option<Timestamp>,
    /// End of the window (default: now).
    #[arg(long, value_parser = parse_time, requires = "from", allow_hyphen_values = true)]
    pub to: Option<Timestamp>,
    /// Live mode: stop after this long (needed when a metric has no count).
    #[arg(long = "for", value_name = "DURATION", conflicts_with = "from")]
    pub for_duration: Option<Duration>,
}

/// RFC 3339, Unix seconds, `now`, or a negative offset from now such as `-2h`.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(Timestamp::now());
    }
    if let Some(ago) = text.strip_prefix("now-").or_else(|| text.strip_prefix('-')) {
        let ago: Duration = ago.parse().map_err(|e| format!("{e}"))?;
        let ago = SignedDuration::try_from(ago.as_std()).map_err(|e| e.to_string())?;
        return Timestamp::now()
            .checked_sub(ago)
            .map_err(|e| format!("{text:?}: {e}"));
    }
    if let Ok(seconds) = text.parse::<i64>() {
        return Timestamp::from_second(seconds).map_err(|e| format!("{text:?}: {e}"));
    }
    text.parse::<Timestamp>().map_err(|e| {
        format!("{text:?} is not a time: use RFC 3339 (2026-11-20T10:00:00Z), Unix seconds, now, or -2h ({e})")
    })
}

pub async fn run(args: Args, output: OutputFormat) -> Exit {
    let invalid = |message: String| {
        eprintln!("error: {message}");
        Exit::Invalid
    };
    let text = match std::fs::read_to_string(&args.file) {
        Ok(text) => text,
        Err(e) => return invalid(format!("cannot read {}: {e}", args.file.display())),
    };
    let template = match pick_template(&text, args.template.as_deref()) {
        Ok(template) => template,
        Err(message) => return invalid(format!("{}: {message}", args.file.display())),
    };

    // A name the template declares is its argument, also when it is a context name (Argo
    // templates often declare `namespace`); a context name sets the context value too.
    let mut context = BTreeMap::new();
    let mut template_args = BTreeMap::new();
    for (name, value) in args.args {
        let is_context = CONTEXT_NAMES.contains(&name.as_str());
        let declared = template.spec.args.iter().any(|a| a.name == name);
        if is_context {
            context.insert(name.clone(), value.clone());
        }
        if declared || !is_context {
            template_args.insert(name, value);
        }
    }
    let mut spec = template.spec.clone();
    if let Some(address) = &args.prometheus {
        let prometheus_metrics = spec
            .metrics
            .iter_mut()
            .filter(|m| m.provider.kind() == ProviderKind::Prometheus);
        for metric in prometheus_metrics {
            if let Some(named) = metric.provider.prometheus.address.replace(address.clone())
                && &named != address
            {
                eprintln!(
                    "note: metric {} names Prometheus {}; using --prometheus {} instead",
                    metric.name,
                    without_userinfo(&named),
                    without_userinfo(address)
                );
            }
        }
    }
    let prepared = match run::prepare(
        &template.name,
        &spec,
        &template_args,
        &context,
        args.prometheus.as_deref(),
        &NoSecrets,
    ) {
        Ok(prepared) => prepared,
        Err(problems) => {
            eprintln!(
                "error: template {} ({}) cannot run:",
                template.name,
                args.file.display()
            );
            for problem in problems {
                eprintln!("  {problem}");
            }
            return Exit::Invalid;
        }
    };

    let schedule = if args.once {
        Schedule::Once
    } else if let Some(from) = args.from {
        let to = args.to.unwrap_or_else(Timestamp::now);
        if to <= from {
            return invalid(format!(
                "--to ({}) must be after --from ({})",
                time(to),
                time(from)
            ));
        }
        Schedule::Retrospective { from, to }
    } else {
        let until = match args.for_duration {
            Some(d) => match d.too_long() {
                None => Some(crate::api::duration::later(Timestamp::now(), d.as_std())),
                Some(problem) => return invalid(format!("--for: {problem}")),
            },
            None => None,
        };
        if until.is_none()
            && let Some(metric) = prepared.metrics.iter().find(|m| m.limits.count.is_none())
        {
            return invalid(format!(
                "metric {} has no count, so a live run would never end: pass --for DURATION, --once, or --from/--to",
                metric.name
            ));
        }
        Schedule::Live { until }
    };

    let source = match Providers::new() {
        Ok(source) => source,
        Err(e) => return invalid(e.to_string()),
    };
    let human = output == OutputFormat::Human;
    if human {
        eprintln!("{}", describe_schedule(&template, &prepared, schedule));
    }
    // Live runs take minutes: one line per measurement as it is taken. Once and retrospective
    // runs finish at once, and the tables below show every measurement.
    let progress = human && matches!(schedule, Schedule::Live { .. });
    let report = run::run(&source, &prepared, schedule, |metric, measurement| {
        if progress {
            eprintln!("{}", terminal_safe(&progress_line(metric, measurement)));
        }
    })
    .await;

    match output {
        OutputFormat::Json => {
            let json = serde_json::json!({
                "file": args.file.display().to_string(),
                "exitCode": exit_for(report.phase) as u8,
                "report": report,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("report serialises")
            );
        }
        OutputFormat::Human => print!("{}", terminal_safe(&human_report(&report))),
    }
    exit_for(report.phase)
}

/// The exit code for an analysis verdict.
pub fn exit_for(phase: AnalysisPhase) -> Exit {
    match phase {
        AnalysisPhase::Successful => Exit::Ok,
        AnalysisPhase::Failed => Exit::Failed,
        AnalysisPhase::Inconclusive
        | AnalysisPhase::Error
        | AnalysisPhase::Running
        | AnalysisPhase::Pending => Exit::Inconclusive,
    }
}

fn pick_template(text: &str, wanted: Option<&str>) -> Result<ImportedTemplate, String> {
    let documents = read_documents(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let mut templates = Vec::new();
    for document in documents {
        let matches = wanted.is_none_or(|w| document.name.as_deref() == Some(w));
        let outcome = document.outcome.and_then(|template| {
            if template.has_errors() {
                Err(template.notes)
            } else {
                Ok(template)
            }
        });
        match (outcome, matches) {
            (Ok(template), true) => templates.push(template),
            (Err(notes), true) if wanted.is_some() => {
                let problems: Vec<String> = notes
                    .iter()
                    .filter(|n| n.severity == crate::analysis::import::Severity::Error)
                    .map(|n| format!("{}: {}", n.field, n.message))
                    .collect();
                return Err(format!(
                    "template {} is invalid (run `canary validate`): {}",
                    wanted.unwrap_or_default(),
                    problems.join("; ")
                ));
            }
            _ => {}
        }
    }
    match (templates.len(), wanted) {
        (1, _) => Ok(templates.remove(0)),
        (0, Some(name)) => Err(format!("no valid template named {name:?} in the file")),
        (0, None) => Err("no valid template in the file (run `canary validate` on it)".into()),
        (_, _) => Err(format!(
            "the file holds {} templates ({}): choose one with --template NAME",
            templates.len(),
            templates
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

fn describe_schedule(
    template: &ImportedTemplate,
    prepared: &run::PreparedAnalysis,
    schedule: Schedule,
) -> String {
    let what = match schedule {
        Schedule::Once => "once, now".to_string(),
        Schedule::Live { until: None } => "live, until every metric has its count".to_string(),
        Schedule::Live { until: Some(t) } => format!("live, until {}", time(t)),
        Schedule::Retrospective { from, to } => {
            format!("retrospectively over {} .. {}", time(from), time(to))
        }
    };
    let metrics: Vec<String> = prepared
        .metrics
        .iter()
        .map(|m| {
            let count = m
                .limits
                .count
                .map_or("no count".to_string(), |c| format!("count {c}"));
            format!("{} (every {}, {count})", m.name, Duration::from(m.interval))
        })
        .collect();
    format!(
        "analysing template {} {what}: {}",
        template.name,
        metrics.join(", ")
    )
}

fn progress_line(metric: &MetricReport, measurement: &Measurement) -> String {
    format!(
        "{}  {}  {:?}  {}  {}",
        time(measurement.time),
        metric.name,
        measurement.phase,
        measurement.value.as_deref().unwrap_or("-"),
        measurement.reason
    )
}

fn human_report(report: &AnalysisReport) -> String {
    let mut out = String::new();
    for metric in &report.metrics {
        let dry = if metric.dry_run { " (dry run)" } else { "" };
        out.push_str(&format!(
            "\nMetric {}{dry}: {:?} — {}\n",
            metric.name, metric.phase, metric.message
        ));
        if metric.measurements.iter().any(|m| m.compare.is_some()) {
            out.push_str(&compare_table(metric));
            out.push_str(&format!("  query: {}\n", one_line(&metric.query)));
            continue;
        }
        let rows: Vec<Vec<String>> = metric
            .measurements
            .iter()
            .map(|m| {
                vec![
                    time(m.time),
                    phase_word(m.phase).to_string(),
                    m.value.clone().unwrap_or_else(|| "-".into()),
                    m.reason.clone(),
                ]
            })
            .collect();
        if rows.is_empty() {
            out.push_str("  (no measurements)\n");
        } else {
            for line in table(&["TIME", "PHASE", "VALUE", "REASON"], &rows).lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
        out.push_str(&format!("  query: {}\n", one_line(&metric.query)));
    }
    out.push_str(&format!(
        "\nVerdict: {:?} (exit {}) for template {}\n",
        report.phase,
        exit_for(report.phase) as u8,
        report.template
    ));
    out
}

/// A compare metric, interval by interval: verdict, effect with its confidence sequence,
/// evidence both ways and the counts; then the latest explanation in full.
fn compare_table(metric: &MetricReport) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = metric
        .measurements
        .iter()
        .map(|m| {
            let detail = m.compare.as_ref();
            let assessment = detail.and_then(|d| d.assessment.as_ref());
            vec![
                time(m.time),
                phase_word(m.phase).to_string(),
                assessment.map_or("-".into(), |a| format!("{:?}", a.verdict)),
                assessment
                    .and_then(crate::analysis::compare::effect)
                    .unwrap_or_else(|| "-".into()),
                assessment.map_or("-".into(), |a| {
                    format!(
                        "{} / {}",
                        e_value(a.evidence.regression),
                        e_value(a.evidence.no_regression)
                    )
                }),
                match (m.phase, detail) {
                    (MeasurementPhase::Error, _) | (_, None) => one_line(&m.reason),
                    (_, Some(d)) => d.counts.describe(d.kind),
                },
            ]
        })
        .collect();
    for line in table(
        &[
            "TIME",
            "PHASE",
            "VERDICT",
            "RATIO (INTERVAL)",
            "EVIDENCE REG/NONE",
            "COUNTS",
        ],
        &rows,
    )
    .lines()
    {
        out.push_str(&format!("  {line}\n"));
    }
    if let Some(latest) = metric
        .measurements
        .iter()
        .rev()
        .find_map(|m| m.compare.as_ref()?.assessment.as_ref())
    {
        out.push_str(&format!("  latest: {}\n", latest.explanation));
    }
    out
}

fn e_value(e: f64) -> String {
    if e >= 1e4 || (e > 0.0 && e < 1e-2) {
        format!("{e:.1e}")
    } else {
        format!("{e:.2}")
    }
}

fn phase_word(phase: MeasurementPhase) -> &'static str {
    match phase {
        MeasurementPhase::Successful => "Successful",
        MeasurementPhase::Failed => "Failed",
        MeasurementPhase::Inconclusive => "Inconclusive",
        MeasurementPhase::Error => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times_people_write() {
        assert_eq!(
            parse_time("2026-11-20T10:00:00Z").unwrap(),
            Timestamp::from_second(1_795_168_800).unwrap()
        );
        assert_eq!(
            parse_time("1795168800").unwrap(),
            Timestamp::from_second(1_795_168_800).unwrap()
        );
        let two_hours_ago = parse_time("-2h").unwrap();
        let delta = Timestamp::now().duration_since(two_hours_ago).as_secs();
        assert!((7199..=7201).contains(&delta), "{delta}");
        assert_eq!(
            parse_time("now-2h").unwrap().as_second() / 10,
            two_hours_ago.as_second() / 10
        );
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn exit_codes_follow_the_verdict() {
        assert_eq!(exit_for(AnalysisPhase::Successful), Exit::Ok);
        assert_eq!(exit_for(AnalysisPhase::Failed), Exit::Failed);
        assert_eq!(exit_for(AnalysisPhase::Inconclusive), Exit::Inconclusive);
        assert_eq!(exit_for(AnalysisPhase::Error), Exit::Inconclusive);
    }
}
