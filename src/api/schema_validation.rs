//! The OpenAPI part of a CRD's validation, as the API server runs it on a create or update:
//! types, `required`, `minimum`/`maximum`, `minLength`/`maxLength`, `minItems`/`maxItems`,
//! `enum`, `pattern`, over `properties`, `additionalProperties` and `items`. With the CEL rules
//! (`x-kubernetes-validations`, run by `kube::core::cel`), `canary validate` rejects what the
//! API server rejects, from the CRD the Rust types generate, so the two cannot drift apart.
//!
//! Only what the generated CRDs use is covered; `allOf`/`anyOf`/`oneOf`/`not` and `format`
//! (which the API server does not check for numbers) are not.

use serde_json::Value;

/// One field that breaks the schema: `field` as the API server names it
/// (`spec.steps[0].setWeight`), `message` saying what it must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// Every violation of `schema` (an `openAPIV3Schema`) by `value`, in document order.
pub fn violations(schema: &Value, value: &Value) -> Vec<Violation> {
    let mut found = Vec::new();
    walk(schema, value, "", &mut found);
    found
}

fn join(base: &str, key: &str) -> String {
    if base.is_empty() {
        key.to_string()
    } else {
        format!("{base}.{key}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, wanted: &str) -> bool {
    match (wanted, value) {
        // A whole number is a number too; 2.0 is an integer as JSON reads it.
        ("number", Value::Number(_)) => true,
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        (wanted, value) => type_name(value) == wanted,
    }
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64()
}

/// `100` for whole numbers, `0.5` otherwise.
fn show(limit: f64) -> String {
    if limit.fract() == 0.0 && limit.abs() < 1e15 {
        format!("{}", limit as i64)
    } else {
        format!("{limit}")
    }
}

fn walk(schema: &Value, value: &Value, path: &str, found: &mut Vec<Violation>) {
    let mut report = |message: String| {
        found.push(Violation {
            field: if path.is_empty() {
                "(the document)".into()
            } else {
                path.to_string()
            },
            message,
        })
    };
    if value.is_null() {
        // Absent and null read the same to our types; the API server drops a null of a
        // nullable field and refuses one of a field that is not.
        if schema.get("nullable").and_then(Value::as_bool) != Some(true)
            && schema.get("type").is_some()
        {
            report("must not be null: give a value or leave the field out".into());
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if let Some(wanted) = schema.get("type").and_then(Value::as_str)
        && !int_or_string
        && !has_type(value, wanted)
    {
        report(format!(
            "must be of type {wanted}, not {}",
            type_name(value)
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let listed: Vec<String> = allowed
            .iter()
            .filter(|v| !v.is_null())
            .map(Value::to_string)
            .collect();
        report(format!(
            "unsupported value {value}: use one of {}",
            listed.join(", ")
        ));
    }
    match value {
        Value::Number(_) => {
            let n = number(value).unwrap_or_default();
            let exclusive = |key: &str| schema.get(key).and_then(Value::as_bool) == Some(true);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if exclusive("exclusiveMinimum") && n <= min {
                    report(format!("must be greater than {} (is {value})", show(min)));
                } else if n < min {
                    report(format!("must be at least {} (is {value})", show(min)));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if exclusive("exclusiveMaximum") && n >= max {
                    report(format!("must be less than {} (is {value})", show(max)));
                } else if n > max {
                    report(format!("must be at most {} (is {value})", show(max)));
                }
            }
        }
        Value::String(text) => {
            // The API server counts characters, not bytes.
            let length = text.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && length < min
            {
                report(format!(
                    "must be at least {min} characters long (is {length})"
                ));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && length > max
            {
                report(format!(
                    "must be at most {max} characters long (is {length})"
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                && let Ok(regex) = regex::Regex::new(pattern)
                && !regex.is_match(text)
            {
                report(format!("{value} does not match the pattern {pattern}"));
            }
        }
        Value::Array(items) => {
            let count = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && count < min
            {
                report(format!("must have at least {min} items (has {count})"));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && count > max
            {
                report(format!("must have at most {max} items (has {count})"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    walk(item_schema, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                // The API server fills in defaults before it validates.
                let defaulted = properties
                    .and_then(|p| p.get(required))
                    .is_some_and(|s| s.get("default").is_some());
                if !fields.contains_key(required) && !defaulted {
                    found.push(Violation {
                        field: join(path, required),
                        message: "is required".into(),
                    });
                }
            }
            for (key, field_value) in fields {
                let field_schema = properties
                    .and_then(|p| p.get(key))
                    .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()));
                if let Some(field_schema) = field_schema {
                    walk(field_schema, field_value, &join(path, key), found);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_each_bound_the_schema_sets_with_its_field() {
        let schema = json!({
            "type": "object",
            "required": ["name", "port"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 5},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "mode": {"type": "string", "enum": ["a", "b", null], "nullable": true},
                "ratio": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": true},
                "kept": {"type": "string", "default": "x"},
                "duration": {"type": "string", "pattern": "^[0-9]+s$"},
                "steps": {"type": "array", "maxItems": 2, "items": {
                    "type": "object",
                    "properties": {"weight": {"type": "integer", "maximum": 100}},
                }},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 2}},
            },
        });
        let good = json!({"name": "web", "port": 80, "mode": null, "ratio": 0.5,
                          "duration": "30s", "steps": [{"weight": 100}], "labels": {"a": "bb"}});
        assert_eq!(violations(&schema, &good), vec![]);
        // (document, field, part of the message)
        let cases = [
            (json!({"port": 80}), "name", "is required"),
            (
                json!({"name": "", "port": 80}),
                "name",
                "at least 1 characters",
            ),
            (
                json!({"name": "website", "port": 80}),
                "name",
                "at most 5 characters long (is 7)",
            ),
            (
                json!({"name": "w", "port": 0}),
                "port",
                "must be at least 1 (is 0)",
            ),
            (
                json!({"name": "w", "port": "80"}),
                "port",
                "must be of type integer, not string",
            ),
            (
                json!({"name": "w", "port": 1.5}),
                "port",
                "must be of type integer, not number",
            ),
            (
                json!({"name": "w", "port": 1, "mode": "c"}),
                "mode",
                "unsupported value \"c\": use one of \"a\", \"b\"",
            ),
            (
                json!({"name": "w", "port": 1, "ratio": 1}),
                "ratio",
                "must be less than 1 (is 1)",
            ),
            (
                json!({"name": "w", "port": 1, "duration": "5 minutes"}),
                "duration",
                "does not match the pattern ^[0-9]+s$",
            ),
            (
                json!({"name": "w", "port": 1, "steps": [{}, {}, {}]}),
                "steps",
                "at most 2 items (has 3)",
            ),
            (
                json!({"name": "w", "port": 1, "steps": [{"weight": 150}]}),
                "steps[0].weight",
                "must be at most 100 (is 150)",
            ),
            (
                json!({"name": "w", "port": 1, "labels": {"a": "long"}}),
                "labels.a",
                "at most 2 characters",
            ),
            (json!({"name": null, "port": 1}), "name", "must not be null"),
        ];
        for (document, field, message) in cases {
            let found = violations(&schema, &document);
            assert!(
                found
                    .iter()
                    .any(|v| v.field == field && v.message.contains(message)),
                "{document}: {found:?}"
            );
            assert_eq!(found.len(), 1, "{document}: {found:?}");
        }
    }
}
