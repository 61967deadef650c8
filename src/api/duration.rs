//! Durations as users write them in manifests: `30s`, `1m`, `1h30m`, `500ms`.
//!
//! The grammar is Go's `time.ParseDuration` restricted to the units that make sense for
//! analysis (ms, s, m, h), so what works in Argo Rollouts and Flagger manifests works here.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern the CRD schema enforces; kept in step with [`Duration::from_str`] by a test.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The longest duration any field accepts: a year. Longer ones are refused by the CRD schema
/// and by validation (a year-long interval or pause is a typo, and an unbounded one made time
/// arithmetic overflow); time arithmetic saturates besides, so nothing can panic on one.
pub const MAX: Duration = Duration::from_secs(8760 * 3600);
/// [`MAX`] as the schema and messages spell it.
pub const MAX_TEXT: &str = "8760h";
/// The longest duration text the schema accepts (bounds the cost of its CEL rule).
const MAX_TEXT_LENGTH: u32 = 32;

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

    /// Why this duration is too long for a manifest field, if it is (see [`MAX`]).
    pub fn too_long(self) -> Option<String> {
        (self > MAX).then(|| format!("{self} is longer than the maximum {MAX_TEXT} (a year)"))
    }
}

/// `time` plus `duration`, or the latest time there is when that overflows: time arithmetic on
/// durations users write must never panic.
pub fn later(time: Timestamp, duration: std::time::Duration) -> Timestamp {
    jiff::SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| time.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// `time` minus `duration`, or the earliest time there is when that overflows.
pub fn earlier(time: Timestamp, duration: std::time::Duration) -> Timestamp {
    jiff::SignedDuration::try_from(duration)
        .ok()
        .and_then(|d| time.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
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

    /// Any text of the schema's pattern parses, however large (it saturates, and [`MAX`] is
    /// enforced by validation): a Canary stored with an absurd duration must still be read,
    /// or it would break the controller's watch of every Canary.
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
            // Digits only (checked above), so the only failure is overflow: saturate.
            let whole: u128 = whole.parse().unwrap_or(u128::MAX);
            let mut part = whole.saturating_mul(unit_nanos);
            if !fraction.is_empty() {
                let digits = fraction.len().min(18) as u32;
                let fraction: u128 = fraction[..digits as usize]
                    .parse()
                    .map_err(|_| fail("a number is malformed"))?;
                part = part.saturating_add(fraction * unit_nanos / 10u128.pow(digits));
            }
            total_nanos = total_nanos.saturating_add(part);
            rest = &tail[unit_len..];
        }
        let secs = u64::try_from(total_nanos / 1_000_000_000).unwrap_or(u64::MAX);
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
            "maxLength": MAX_TEXT_LENGTH,
            "description": "A duration such as 30s, 5m, 1h30m or 500ms, at most 8760h.",
            "x-kubernetes-validations": [{
                "rule": format!("duration(self) <= duration('{MAX_TEXT}')"),
                "message": format!("a duration must be at most {MAX_TEXT} (a year)"),
            }]
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
    fn absurdly_large_durations_parse_saturated_and_are_too_long() {
        for text in [
            "100000000h",
            "99999999999999999999999999999999999999999999h",
            "18446744073709551616s",
            "1h99999999999999999999999999999999999999.5h",
        ] {
            let parsed: Duration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(parsed.too_long().is_some(), "{text}");
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
    fn time_arithmetic_saturates_instead_of_panicking() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let huge = "100000000h".parse::<Duration>().unwrap().as_std();
        assert_eq!(later(now, huge), Timestamp::MAX);
        assert_eq!(later(now, std::time::Duration::MAX), Timestamp::MAX);
        assert_eq!(earlier(now, std::time::Duration::MAX), Timestamp::MIN);
        assert!(earlier(now, huge) < now);
        assert_eq!(
            later(now, MAX.as_std()).duration_since(now).as_secs(),
            8760 * 3600
        );
        assert_eq!(
            earlier(now, std::time::Duration::from_secs(60)).as_second(),
            1_800_000_000 - 60
        );
        assert_eq!(MAX.too_long(), None);
        let over = Duration::from_secs(8760 * 3600 + 1);
        assert!(
            over.too_long().unwrap().contains("8760h"),
            "{:?}",
            over.too_long()
        );
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
