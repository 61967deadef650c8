//! The controller's requests as the API server saw them: its audit log (Metadata level, one
//! JSON event per line), counted by verb and resource, by response code, and per 10 s.

use std::collections::{BTreeMap, HashSet};
use std::io::BufRead;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuditEvent {
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: String,
    verb: String,
    user: User,
    #[serde(default)]
    object_ref: Option<ObjectRef>,
    #[serde(default)]
    response_status: Option<ResponseStatus>,
    #[serde(default)]
    request_uri: String,
    request_received_timestamp: Timestamp,
}

#[derive(Deserialize)]
struct User {
    username: String,
}

#[derive(Deserialize)]
struct ObjectRef {
    #[serde(default)]
    resource: Option<String>,
    #[serde(default)]
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct ResponseStatus {
    #[serde(default)]
    code: Option<u16>,
}

/// The requests of one user in one time window.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requests {
    pub total: u64,
    pub per_second: f64,
    /// `verb resource[/subresource]` → count, e.g. `get deployments`, `patch canaries/status`.
    pub by_verb_and_resource: BTreeMap<String, u64>,
    pub by_code: BTreeMap<String, u64>,
    /// The most requests in one 10 s window (aligned to the window's start).
    pub busiest_10s: u64,
}

/// Counts the requests of `user` received in `[from, to)`. A request counts once: at its
/// end, or, for a watch, when it started (a watch still open has no end yet).
pub fn count(path: &Path, user: &str, from: Timestamp, to: Timestamp) -> Result<Requests, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("opening the audit log {}: {e}", path.display()))?;
    let mut requests = Requests::default();
    let mut watches_started = HashSet::new();
    let mut per_window: BTreeMap<i64, u64> = BTreeMap::new();
    for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| format!("reading {}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event: AuditEvent = serde_json::from_str(&line)
            .map_err(|e| format!("{} line {}: {e}", path.display(), number + 1))?;
        if event.user.username != user
            || event.request_received_timestamp < from
            || event.request_received_timestamp >= to
        {
            continue;
        }
        let counted = match (event.verb.as_str(), event.stage.as_str()) {
            ("watch", "ResponseStarted") => {
                watches_started.insert(event.audit_id.clone());
                true
            }
            ("watch", "ResponseComplete" | "Panic") => !watches_started.contains(&event.audit_id),
            (_, "ResponseComplete" | "Panic") => true,
            _ => false,
        };
        if !counted {
            continue;
        }
        requests.total += 1;
        let what = match &event.object_ref {
            Some(ObjectRef {
                resource: Some(resource),
                subresource,
            }) => match subresource {
                Some(sub) => format!("{} {resource}/{sub}", event.verb),
                None => format!("{} {resource}", event.verb),
            },
            // Non-resource URLs (/version, /apis): the path without its query.
            _ => format!(
                "{} {}",
                event.verb,
                event.request_uri.split('?').next().unwrap_or_default()
            ),
        };
        *requests.by_verb_and_resource.entry(what).or_default() += 1;
        let code = event
            .response_status
            .and_then(|s| s.code)
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        *requests.by_code.entry(code).or_default() += 1;
        let offset = (event.request_received_timestamp - from)
            .total(jiff::Unit::Second)
            .unwrap_or(0.0);
        *per_window.entry((offset / 10.0) as i64).or_default() += 1;
    }
    let seconds = (to - from).total(jiff::Unit::Second).unwrap_or(0.0);
    requests.per_second = if seconds > 0.0 {
        requests.total as f64 / seconds
    } else {
        0.0
    };
    requests.busiest_10s = per_window.values().copied().max().unwrap_or(0);
    Ok(requests)
}
