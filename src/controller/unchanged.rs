//! Whether a write would change nothing, judged against the cached object: such a write is
//! not sent. Most reconciles find everything as it should be; asking the API server to
//! confirm it would make the controller the API server's main load.

use serde_json::Value;

/// Whether server-side applying `body` over `live` would leave `live` as it is: every field
/// `body` sets holds that value already. Fields only `live` has (defaults the API server
/// filled in, status, other managers' fields) do not matter; an empty value in `body` matches
/// a field `live` does not have (the API server drops empty values). Lists must match item by
/// item. `apiVersion` and `kind` name the type, not content.
pub fn apply_changes_nothing(body: &Value, live: &Value) -> bool {
    match (body, live) {
        (Value::Object(wanted), Value::Object(have)) => wanted.iter().all(|(key, value)| {
            if matches!(key.as_str(), "apiVersion" | "kind") {
                return true;
            }
            match have.get(key) {
                Some(found) => apply_changes_nothing(value, found),
                None => is_empty(value),
            }
        }),
        (Value::Array(wanted), Value::Array(have)) => {
            wanted.len() == have.len()
                && wanted
                    .iter()
                    .zip(have)
                    .all(|(w, h)| apply_changes_nothing(w, h))
        }
        (wanted, Value::Null) => is_empty(wanted),
        (wanted, have) => wanted == have,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().all(is_empty),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Whether the JSON Patch `patch` leaves `live` as it is. A patch whose `test` fails on
/// `live` is not judged here (the cached copy may be older than the server's): it is sent,
/// and the server decides.
pub fn patch_changes_nothing(patch: &Value, live: &Value) -> bool {
    let Ok(operations) = serde_json::from_value::<json_patch::Patch>(patch.clone()) else {
        return false;
    };
    let mut patched = live.clone();
    json_patch::patch(&mut patched, &operations).is_ok() && patched == *live
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_apply_changes_nothing_when_every_field_it_sets_holds_its_value() {
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web-canary", "resourceVersion": "7",
                         "labels": {"app": "web", "canary.dev/subset": "canary"},
                         "ownerReferences": [{"kind": "Canary", "name": "web", "uid": "u1", "controller": true}]},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "app", "image": "web:2", "imagePullPolicy": "IfNotPresent",
                 "terminationMessagePath": "/dev/termination-log"}]}}},
            "status": {"readyReplicas": 2}
        });
        let body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web-canary", "labels": {"canary.dev/subset": "canary", "app": "web"},
                         "annotations": {},
                         "ownerReferences": [{"kind": "Canary", "name": "web", "uid": "u1", "controller": true}]},
            "spec": {"replicas": 2, "template": {"metadata": {}, "spec": {"containers": [
                {"name": "app", "image": "web:2", "env": []}]}}}
        });
        let rows: Vec<(&str, Value, bool)> = vec![
            (
                "as it is: defaults and status are the server's",
                body.clone(),
                true,
            ),
            (
                "another replica count",
                {
                    let mut b = body.clone();
                    b["spec"]["replicas"] = json!(3);
                    b
                },
                false,
            ),
            (
                "another image",
                {
                    let mut b = body.clone();
                    b["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:3");
                    b
                },
                false,
            ),
            (
                "a container more",
                {
                    let mut b = body.clone();
                    b["spec"]["template"]["spec"]["containers"]
                        .as_array_mut()
                        .unwrap()
                        .push(json!({"name": "sidecar", "image": "proxy:1"}));
                    b
                },
                false,
            ),
            (
                "a label more",
                {
                    let mut b = body.clone();
                    b["metadata"]["labels"]["team"] = json!("shop");
                    b
                },
                false,
            ),
            (
                "another owner",
                {
                    let mut b = body.clone();
                    b["metadata"]["ownerReferences"][0]["uid"] = json!("u2");
                    b
                },
                false,
            ),
            (
                "a field set to something the server does not hold",
                {
                    let mut b = body.clone();
                    b["spec"]["paused"] = json!(false);
                    b
                },
                false,
            ),
        ];
        for (case, body, unchanged) in rows {
            assert_eq!(apply_changes_nothing(&body, &live), unchanged, "{case}");
        }
    }

    #[test]
    fn a_patch_changes_nothing_when_it_writes_what_is_there() {
        let live = json!({"spec": {"http": [{"route": [
            {"destination": {"subset": "stable"}, "weight": 90},
            {"destination": {"subset": "canary"}, "weight": 10}]}]}});
        let set = |stable: u8, canary: u8, tested: u8| {
            json!([
                {"op": "test", "path": "/spec/http/0/route/1/weight", "value": tested},
                {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": stable},
                {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": canary}
            ])
        };
        assert!(patch_changes_nothing(&set(90, 10, 10), &live));
        assert!(!patch_changes_nothing(&set(80, 20, 10), &live), "a change");
        assert!(
            !patch_changes_nothing(&set(90, 10, 30), &live),
            "its test fails on the cached copy: the server decides"
        );
        assert!(!patch_changes_nothing(&json!("not a patch"), &live));
        assert!(patch_changes_nothing(&json!([]), &live), "no operations");
    }
}
