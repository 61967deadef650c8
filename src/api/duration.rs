//! Durations as users write them in manifests: `30s`, `1m`, `1h30m`, `500ms`.
//!
//! The grammar is Go's `time.ParseDuration` restricted to the units that make sense for
//! analysis (ms, s, m, h), so what works in Argo Rollouts and Flagger manifests works here.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD schema enforces; kept in step with [`Duration::from_str`] by a test.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(std::time::Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {problem}; write it like 30s, 5m, 1h30m or 500ms")]
pub struct ParseDurationError {
    input: String,
    problem: &'static str,
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Self(std::time::Duration::from_millis(millis))
    }

    pub const fn as_std(self) -> std::time::Duration {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl From<std::time::Duration> for Duration {
    fn from(value: std::time::Duration) -> Self {
        Self(value)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(value: Duration) -> Self {
        value.0
    }
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |problem| ParseDurationError {
            input: input.to_string(),
            problem,
        };
        if input.is_empty() {
            return Err(fail("it is empty"));
        }
        let mut rest = input;
        let mut total_nanos: u128 = 0;
        while !rest.is_empty() {
            let number_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| fail("a number has no unit"))?;
            if number_len == 0 {
                return Err(fail("a unit has no number before it"));
            }
            let (number, tail) = rest.split_at(number_len);
            let (whole, fraction) = match number.split_once('.') {
                Some((w, f)) if !w.is_empty() && !f.is_empty() && !f.contains('.') => (w, f),
                Some(_) => return Err(fail("a number is malformed")),
                None => (number, ""),
            };
            let (unit_nanos, unit_len): (u128, usize) = if tail.starts_with("ms") {
                (1_000_000, 2)
            } else if tail.starts_with('s') {
                (1_000_000_000, 1)
            } else if tail.starts_with('m') {
                (60_000_000_000, 1)
            } else if tail.starts_with('h') {
                (3_600_000_000_000, 1)
            } else {
                return Err(fail("the unit is not one of ms, s, m, h"));
            };
            let whole: u128 = whole.parse().map_err(|_| fail("a number is too large"))?;
            let mut part = whole
                .checked_mul(unit_nanos)
                .ok_or_else(|| fail("it is too large"))?;
            if !fraction.is_empty() {
                let digits = fraction.len().min(18) as u32;
                let fraction: u128 = fraction[..digits as usize]
                    .parse()
                    .map_err(|_| fail("a number is malformed"))?;
                part += fraction * unit_nanos / 10u128.pow(digits);
            }
            total_nanos = total_nanos
                .checked_add(part)
                .ok_or_else(|| fail("it is too large"))?;
            rest = &tail[unit_len..];
        }
        let secs =
            u64::try_from(total_nanos / 1_000_000_000).map_err(|_| fail("it is too large"))?;
        Ok(Self(std::time::Duration::new(
            secs,
            (total_nanos % 1_000_000_000) as u32,
        )))
    }
}

impl fmt::Display for Duration {
    /// The shortest spelling that parses back to the same value, e.g. `1h30m`, `45s`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        if millis == 0 {
            return f.write_str("0s");
        }
        if !millis.is_multiple_of(1000) {
            return write!(f, "{millis}ms");
        }
        let secs = millis / 1000;
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration such as 30s, 5m, 1h30m or 500ms."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_users_write() {
        let cases = [
            ("30s", 30_000),
            ("1m", 60_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("1.5m", 90_000),
            ("2h0m5s", 7_205_000),
            ("0s", 0),
            ("1m500ms", 60_500),
        ];
        for (text, millis) in cases {
            let parsed: Duration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed.as_std().as_millis(), millis, "{text}");
        }
    }

    #[test]
    fn rejects_malformed_input_with_a_hint() {
        for text in [
            "", "5", "m", "5x", "1.m", ".5s", "1..5s", "5 m", "-5s", "1d",
        ] {
            let err = text.parse::<Duration>().expect_err(text);
            assert!(err.to_string().contains("30s, 5m"), "{text}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "30s", "1m", "1h30m", "500ms", "2h5s", "0s", "1h1m1s", "1500ms",
        ] {
            let parsed: Duration = text.parse().unwrap();
            let shown = parsed.to_string();
            assert_eq!(
                shown.parse::<Duration>().unwrap(),
                parsed,
                "{text} -> {shown}"
            );
        }
        assert_eq!(Duration::from_secs(5400).to_string(), "1h30m");
        assert_eq!(Duration::from_millis(1500).to_string(), "1500ms");
    }

    #[test]
    fn schema_pattern_agrees_with_the_parser() {
        let pattern = regex_lite_match;
        for text in ["30s", "1h30m", "1.5m", "500ms", "5", "1d", "", "m", "1..5s"] {
            assert_eq!(
                pattern(text),
                text.parse::<Duration>().is_ok(),
                "pattern and parser disagree on {text:?}"
            );
        }
    }

    /// The CRD pattern, evaluated with the same regex engine the CEL crate brings.
    fn regex_lite_match(text: &str) -> bool {
        regex::Regex::new(DURATION_PATTERN).unwrap().is_match(text)
    }
}
