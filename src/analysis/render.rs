//! Rendering query templates: `{{args.NAME}}` and the context names (`namespace`, `target`,
//! `canary`, `stable`, `workload`, `interval`).
//!
//! An argument must never change a query's structure. The renderer reads the query as PromQL
//! tokens, so it knows where each placeholder stands:
//! - inside a quoted string (a label matcher value, typically), the value is escaped for that
//!   quote style, so quotes, backslashes and newlines stay part of the string;
//! - inside a backtick raw string, where nothing can be escaped, a value holding a backtick is
//!   refused;
//! - anywhere else, the value must be a single harmless token: a number, a duration, or label
//!   names (`pod` or `pod, container` for a `by (...)` clause) that are not PromQL keywords.
//!
//! Arguments whose values come from Secrets are rendered twice: into the query sent to
//! Prometheus, and as `<secret:NAME>` into the query people see (see [`Query`]). Errors name
//! an argument and what is wrong with its value, never the value itself.

use std::collections::{BTreeMap, BTreeSet};

use crate::metrics::Query;

/// Context names a `Canary` fills in (and `canary analyze --arg` can set).
pub const CONTEXT_NAMES: [&str; 6] = [
    "namespace",
    "target",
    "canary",
    "stable",
    "workload",
    "interval",
];

/// PromQL words that would change a query's meaning if an argument produced them as a token.
const PROMQL_KEYWORDS: [&str; 13] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "start",
];

/// The values a query is rendered with.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Variables {
    /// Template arguments, `{{args.NAME}}`.
    pub args: BTreeMap<String, String>,
    /// Context values, `{{namespace}}` etc.
    pub context: BTreeMap<String, String>,
    /// The arguments whose values are secret (declared with `valueFrom.secretKeyRef`): shown
    /// as `<secret:NAME>`.
    pub secret_args: BTreeSet<String>,
}

/// Hand-written so that a secret argument's value never reaches a log line.
impl std::fmt::Debug for Variables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            args,
            context,
            secret_args,
        } = self;
        let args: BTreeMap<&str, &str> = args
            .iter()
            .map(|(name, value)| {
                let shown = if secret_args.contains(name) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect();
        f.debug_struct("Variables")
            .field("args", &args)
            .field("context", context)
            .field("secret_args", secret_args)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "argument {name:?} has no value: give it a value in the template, or pass it (`--arg {name}=...` or the Canary's analysis args)"
    )]
    MissingArgument { name: String },
    #[error(
        "{{{{args.{name}}}}} is used but the template declares no argument {name:?}: add it to spec.args"
    )]
    UndeclaredArgument { name: String },
    #[error(
        "context value {name:?} is not set: it is filled in when a Canary runs the template; for `canary analyze` pass `--arg {name}=...`"
    )]
    MissingContext { name: String },
    #[error(
        "unknown placeholder {{{{{placeholder}}}}}: write {{{{args.NAME}}}} for an argument, or one of the context names {}",
        CONTEXT_NAMES.join(", ")
    )]
    UnknownPlaceholder { placeholder: String },
    #[error("a placeholder opened with {{{{ at byte {offset} is never closed with }}}}")]
    Unclosed { offset: usize },
    /// Names the placeholder and what is wrong with its value, never the value: it may be a
    /// secret, and this message ends up in status, Events and CLI output.
    #[error(
        "the value of {name} cannot be placed where the query uses it: {why}. Quote the placeholder in the query (e.g. label=\"{{{{{name}}}}}\") or pass a plain value"
    )]
    UnsafeValue { name: String, why: &'static str },
    /// For a header value or an address; never quotes the value either.
    #[error(
        "the value of {name} contains a line break or control character, which a header value or an address cannot hold"
    )]
    UnsafeText { name: String },
}

/// Where a placeholder stands in the PromQL text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    Code,
    Quoted(char),
    Raw,
    Comment,
}

/// Renders `query`, placing each value so that it cannot alter the query's structure: the
/// text to send, and the text to show with secret arguments' values as `<secret:NAME>`.
///
/// `declared_args` are the template's argument names: a placeholder for any other argument is
/// an error even if a value was passed, so a typo cannot silently render an empty string.
pub fn render_query(
    query: &str,
    declared_args: &[&str],
    variables: &Variables,
) -> Result<Query, RenderError> {
    let mut out = String::with_capacity(query.len() + 32);
    let mut shown = String::with_capacity(query.len() + 32);
    let mut secrets = Vec::new();
    let mut position = Position::Code;
    // The string being read is a regex matcher's (`=~` or `!~` before it).
    let mut in_regex = false;
    let mut rest = query;
    let mut offset = 0;
    while !rest.is_empty() {
        if let Some(after_open) = rest.strip_prefix("{{") {
            let close = after_open
                .find("}}")
                .ok_or(RenderError::Unclosed { offset })?;
            let placeholder = after_open[..close].trim();
            let found = lookup(placeholder, declared_args, variables)?;
            let placed_from = out.len();
            // A context value (a namespace or Deployment name) inside a regex matcher means
            // that name, not a pattern: `web.v2` must not also match `web-v2`. Arguments are
            // the template author's to use as patterns.
            let literal;
            let value = if in_regex && !found.name.starts_with("args.") {
                literal = regex_literal(found.value);
                literal.as_str()
            } else {
                found.value
            };
            place(&mut out, &found.name, value, position)?;
            match found.secret_arg {
                Some(arg) => {
                    shown.push_str(&Query::placeholder(arg));
                    secrets.push((arg.to_string(), found.value.to_string()));
                    secrets.push((arg.to_string(), out[placed_from..].to_string()));
                }
                None => shown.push_str(&out[placed_from..]),
            }
            let consumed = 2 + close + 2;
            rest = &rest[consumed..];
            offset += consumed;
            continue;
        }
        let c = rest.chars().next().expect("rest is not empty");
        let len = c.len_utf8();
        // An escaped character inside a quoted string cannot end it.
        if let (Position::Quoted(_), '\\') = (position, c) {
            let escaped_len = rest[1..].chars().next().map_or(0, char::len_utf8);
            out.push_str(&rest[..1 + escaped_len]);
            shown.push_str(&rest[..1 + escaped_len]);
            rest = &rest[1 + escaped_len..];
            offset += 1 + escaped_len;
            continue;
        }
        if position == Position::Code && matches!(c, '"' | '\'' | '`') {
            let before = out.trim_end();
            in_regex = before.ends_with("=~") || before.ends_with("!~");
        }
        position = match (position, c) {
            (Position::Code, '"' | '\'') => Position::Quoted(c),
            (Position::Code, '`') => Position::Raw,
            (Position::Code, '#') => Position::Comment,
            (Position::Quoted(q), _) if c == q => Position::Code,
            (Position::Raw, '`') => Position::Code,
            (Position::Comment, '\n') => Position::Code,
            (p, _) => p,
        };
        out.push(c);
        shown.push(c);
        rest = &rest[len..];
        offset += len;
    }
    secrets.dedup();
    Ok(Query::with_secrets(out, shown, secrets))
}

/// Renders text that is not PromQL (an address, header values, a web provider's URL and body,
/// an InfluxDB query, a Job's spec): each placeholder's value goes through `place(text rendered
/// so far, value)` (URL-encoding, JSON string escaping, or [`as_is`]), which decides how a
/// value is kept from changing the text's structure. A placed value that still holds a line
/// break or another control character is refused: in a header it would start another header.
/// Secret arguments are shown as `<secret:NAME>`, as in [`render_query`].
pub fn render_text(
    text: &str,
    declared_args: &[&str],
    variables: &Variables,
    place: &dyn Fn(&str, &str) -> String,
) -> Result<Query, RenderError> {
    let mut out = String::with_capacity(text.len() + 32);
    let mut shown = String::with_capacity(text.len() + 32);
    let mut secrets = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        shown.push_str(&rest[..open]);
        offset += open;
        let after_open = &rest[open + 2..];
        let close = after_open
            .find("}}")
            .ok_or(RenderError::Unclosed { offset })?;
        let found = lookup(after_open[..close].trim(), declared_args, variables)?;
        let placed = place(&out, found.value);
        if placed.chars().any(char::is_control) {
            return Err(RenderError::UnsafeText { name: found.name });
        }
        match found.secret_arg {
            Some(arg) => {
                shown.push_str(&Query::placeholder(arg));
                secrets.push((arg.to_string(), found.value.to_string()));
                secrets.push((arg.to_string(), placed.clone()));
            }
            None => shown.push_str(&placed),
        }
        out.push_str(&placed);
        rest = &after_open[close + 2..];
        offset += 2 + close + 2;
    }
    out.push_str(rest);
    shown.push_str(rest);
    secrets.dedup();
    Ok(Query::with_secrets(out, shown, secrets))
}

/// A value placed as it is, where nothing parses it (a header value, a Graphite target).
pub fn as_is(_rendered_so_far: &str, value: &str) -> String {
    value.to_string()
}

/// The arguments `text` places, by name (`{{args.NAME}}`), in order.
pub fn argument_names(text: &str) -> Vec<&str> {
    placeholders(text)
        .into_iter()
        .filter_map(|p| p.strip_prefix("args."))
        .map(str::trim)
        .collect()
}

/// Every placeholder in `query`, as written (trimmed), in order. Used by validation and by the
/// Flagger importer to discover which arguments a query needs.
pub fn placeholders(query: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut rest = query;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else { break };
        found.push(after[..close].trim());
        rest = &after[close + 2..];
    }
    found
}

/// A placeholder's value, and how errors name it (`args.job`, `namespace`).
struct Found<'v> {
    name: String,
    value: &'v str,
    /// The argument's name, when its value is secret.
    secret_arg: Option<&'v str>,
}

fn lookup<'v>(
    placeholder: &str,
    declared_args: &[&str],
    variables: &'v Variables,
) -> Result<Found<'v>, RenderError> {
    if let Some(name) = placeholder.strip_prefix("args.") {
        let name = name.trim();
        if !declared_args.contains(&name) {
            return Err(RenderError::UndeclaredArgument {
                name: name.to_string(),
            });
        }
        let (name, value) =
            variables
                .args
                .get_key_value(name)
                .ok_or_else(|| RenderError::MissingArgument {
                    name: name.to_string(),
                })?;
        return Ok(Found {
            name: format!("args.{name}"),
            value,
            secret_arg: variables
                .secret_args
                .contains(name)
                .then_some(name.as_str()),
        });
    }
    if CONTEXT_NAMES.contains(&placeholder) {
        let value =
            variables
                .context
                .get(placeholder)
                .ok_or_else(|| RenderError::MissingContext {
                    name: placeholder.to_string(),
                })?;
        return Ok(Found {
            name: placeholder.to_string(),
            value,
            secret_arg: None,
        });
    }
    Err(RenderError::UnknownPlaceholder {
        placeholder: placeholder.to_string(),
    })
}

fn place(out: &mut String, name: &str, value: &str, position: Position) -> Result<(), RenderError> {
    let unsafe_value = |why| RenderError::UnsafeValue {
        name: name.to_string(),
        why,
    };
    match position {
        Position::Quoted(quote) => {
            escape_into(out, value, quote);
            Ok(())
        }
        Position::Raw => {
            if value.contains('`') {
                return Err(unsafe_value(
                    "it contains a backtick inside a `raw` string, which cannot be escaped",
                ));
            }
            out.push_str(value);
            Ok(())
        }
        Position::Code | Position::Comment => {
            if is_number(value) || is_duration(value) || is_label_list(value) {
                out.push_str(value);
                Ok(())
            } else {
                Err(unsafe_value(why_not_a_token(value)))
            }
        }
    }
}

/// What keeps `value` from standing outside quotes, said without quoting it (it may be a
/// secret). Checked in order, so the first problem a reader would fix is named.
fn why_not_a_token(value: &str) -> &'static str {
    if value.is_empty() {
        return "it is empty, and outside quotes only a number, a duration or label names are allowed";
    }
    let reasons: [(fn(char) -> bool, &'static str); 7] = [
        (
            |c| c == '"',
            "it contains a double quote outside a quoted string",
        ),
        (
            |c| c == '\'',
            "it contains a single quote outside a quoted string",
        ),
        (
            |c| c == '`',
            "it contains a backtick outside a quoted string",
        ),
        (
            |c| matches!(c, '{' | '}' | '(' | ')' | '[' | ']'),
            "it contains a bracket or brace outside a quoted string",
        ),
        (
            |c| c.is_control(),
            "it contains a line break or control character outside a quoted string",
        ),
        (
            |c| c == '#',
            "it contains # outside a quoted string, which would comment out the rest of the line",
        ),
        (
            |c| {
                matches!(
                    c,
                    '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' | '~'
                )
            },
            "it contains an operator outside a quoted string",
        ),
    ];
    if let Some((_, why)) = reasons.iter().find(|(is, _)| value.chars().any(is)) {
        return why;
    }
    let words = value.split(',').map(str::trim);
    if words.clone().any(|w| w.contains(char::is_whitespace)) {
        return "it holds several words outside a quoted string (label names are separated by commas)";
    }
    if words.clone().any(is_promql_keyword) {
        return "it is a PromQL keyword (and, or, unless, by, …) outside a quoted string";
    }
    "it is not a number, a duration or label names, which is all that may stand outside quotes"
}

/// `value` as a regular expression (RE2) that matches exactly it.
fn regex_literal(value: &str) -> String {
    let mut literal = String::with_capacity(value.len() + 4);
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            literal.push('\\');
        }
        literal.push(c);
    }
    literal
}

/// Escapes for a PromQL (Go-syntax) quoted string delimited by `quote`.
fn escape_into(out: &mut String, value: &str, quote: char) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

fn is_number(value: &str) -> bool {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    !digits.is_empty()
        && digits.starts_with(|c: char| c.is_ascii_digit())
        && digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && digits.parse::<f64>().is_ok()
}

/// PromQL durations: one or more `<digits><unit>` with units ms, s, m, h, d, w, y.
fn is_duration(value: &str) -> bool {
    let mut rest = value;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

fn is_promql_keyword(word: &str) -> bool {
    PROMQL_KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
}

/// `pod` or `pod, container`: label names, never a PromQL keyword.
fn is_label_list(value: &str) -> bool {
    value.split(',').all(|part| {
        let name = part.trim();
        is_label_name(name) && !is_promql_keyword(name)
    })
}

/// A Prometheus label name: letters, digits and `_`, not starting with a digit.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text a query is sent as.
    fn render_text(
        query: &str,
        declared_args: &[&str],
        variables: &Variables,
    ) -> Result<String, RenderError> {
        render_query(query, declared_args, variables).map(|q| q.text_to_send().to_string())
    }

    fn vars(args: &[(&str, &str)], context: &[(&str, &str)]) -> Variables {
        Variables {
            args: args
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            context: context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secret_args: Default::default(),
        }
    }

    /// Decodes every PromQL string literal in `query` (Go escape rules, as Prometheus' lexer
    /// applies them), and returns them with the query's code outside strings.
    fn lex_strings(query: &str) -> (Vec<String>, String) {
        let mut strings = Vec::new();
        let mut code = String::new();
        let mut chars = query.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' || c == '\'' {
                let mut s = String::new();
                loop {
                    match chars.next().expect("string is terminated") {
                        '\\' => match chars.next().expect("escape is complete") {
                            'n' => s.push('\n'),
                            'r' => s.push('\r'),
                            't' => s.push('\t'),
                            'u' => {
                                let hex: String = (0..4).map(|_| chars.next().unwrap()).collect();
                                s.push(
                                    char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap(),
                                );
                            }
                            other => s.push(other),
                        },
                        q if q == c => break,
                        other => s.push(other),
                    }
                }
                strings.push(s);
                code.push_str("<str>");
            } else {
                code.push(c);
            }
        }
        (strings, code)
    }

    const HOSTILE: [&str; 10] = [
        r#"web"} or vector(1) or up{job=""#,
        r#"web\"}"#,
        "web}",
        "web'} or vector(1) #",
        "a\nb",
        "line\r\nbreak\ttab",
        r"back\slash\",
        "\u{0}\u{1b}[31m",
        "",
        r#"" or on() vector(1) or ""#,
    ];

    #[test]
    fn hostile_values_stay_inside_their_label_matcher() {
        for quote in ['"', '\''] {
            let query = format!(
                "sum(rate(http_requests_total{{job={quote}{{{{args.job}}}}{quote}, code=~{quote}5..{quote}}}[1m]))"
            );
            for hostile in HOSTILE {
                let rendered = render_text(&query, &["job"], &vars(&[("job", hostile)], &[]))
                    .unwrap_or_else(|e| panic!("{hostile:?}: {e}"));
                let (strings, code) = lex_strings(&rendered);
                assert_eq!(
                    strings,
                    vec![hostile.to_string(), "5..".to_string()],
                    "{rendered}"
                );
                assert_eq!(
                    code, "sum(rate(http_requests_total{job=<str>, code=~<str>}[1m]))",
                    "structure changed for {hostile:?}: {rendered}"
                );
            }
        }
    }

    #[test]
    fn values_outside_quotes_must_be_single_harmless_tokens() {
        let ok = [
            ("x > {{args.v}}", "0.95", "x > 0.95"),
            ("x > {{args.v}}", "-1e3", "x > -1e3"),
            ("rate(x[{{args.v}}])", "5m", "rate(x[5m])"),
            ("rate(x[{{args.v}}])", "1h30m", "rate(x[1h30m])"),
            (
                "sum by ({{args.v}}) (x)",
                "pod, container",
                "sum by (pod, container) (x)",
            ),
        ];
        for (query, value, expected) in ok {
            let rendered = render_text(query, &["v"], &vars(&[("v", value)], &[])).unwrap();
            assert_eq!(rendered, expected);
        }
        let refused = [
            "1 or vector(1)",
            "or",
            "OR",
            "x{a=\"b\"}",
            "",
            "5m] or vector(1)[5m",
            "pod) or (up",
            "1\n",
            "x # comment",
        ];
        for value in refused {
            let err = render_text("sum(x) > {{args.v}}", &["v"], &vars(&[("v", value)], &[]))
                .expect_err(value);
            assert!(
                matches!(err, RenderError::UnsafeValue { .. }),
                "{value:?}: {err}"
            );
            assert!(err.to_string().contains("Quote the placeholder"), "{err}");
        }
    }

    #[test]
    fn secret_arguments_are_sent_as_values_and_shown_as_placeholders() {
        let mut variables = vars(&[("token", "hunter\"2"), ("job", "web")], &[]);
        variables.secret_args.insert("token".into());
        let query = render_query(
            r#"sum(x{token="{{args.token}}", job="{{args.job}}"})"#,
            &["token", "job"],
            &variables,
        )
        .unwrap();
        assert_eq!(
            query.text_to_send(),
            r#"sum(x{token="hunter\"2", job="web"})"#
        );
        assert_eq!(
            query.shown(),
            r#"sum(x{token="<secret:token>", job="web"})"#
        );
        assert_eq!(query.to_string(), query.shown());
        for written in [format!("{query:?}"), format!("{variables:?}")] {
            assert!(!written.contains("hunter"), "{written}");
        }
        assert!(format!("{variables:?}").contains("web"), "{variables:?}");
        // What Prometheus might say back about the query, quoting the value as given or as
        // written into the query.
        assert_eq!(
            query.redact(r#"bad regexp `hunter"2` in token="hunter\"2""#),
            r#"bad regexp `<secret:token>` in token="<secret:token>""#
        );
    }

    #[test]
    fn unsafe_values_are_described_never_quoted() {
        let cases = [
            (
                "sum(x) > {{args.v}}",
                "s3cret\"} or vector(1)",
                "double quote",
            ),
            ("sum(x) > {{args.v}}", "s3cret'", "single quote"),
            ("sum(x) > {{args.v}}", "s3cret`", "backtick outside"),
            ("sum(x) > {{args.v}}", "s3cret)", "bracket or brace"),
            ("sum(x) > {{args.v}}", "s3cret\nx", "line break"),
            ("sum(x) > {{args.v}}", "s3cret # x", "comment out"),
            ("sum(x) > {{args.v}}", "1 - s3cret", "operator"),
            ("sum(x) > {{args.v}}", "s3cret s3cret", "several words"),
            ("sum by ({{args.v}}) (x)", "pod, OR", "PromQL keyword"),
            (
                "sum(x) > {{args.v}}",
                "s3cret.x",
                "not a number, a duration or label names",
            ),
            ("sum(x) > {{args.v}}", "", "it is empty"),
            ("x{job=~`{{args.v}}`}", "s3cret`", "raw` string"),
        ];
        for (query, value, why) in cases {
            let mut variables = vars(&[("v", value)], &[]);
            for secret in [false, true] {
                if secret {
                    variables.secret_args.insert("v".into());
                }
                let err = render_query(query, &["v"], &variables).expect_err(value);
                let message = err.to_string();
                assert!(matches!(err, RenderError::UnsafeValue { .. }), "{message}");
                assert!(!message.contains("s3cret"), "{value:?}: {message}");
                assert!(message.contains(why), "{value:?}: {message}");
                assert!(
                    message.starts_with("the value of args.v cannot be placed"),
                    "{message}"
                );
                assert!(message.contains(r#"label="{{args.v}}""#), "{message}");
            }
        }
    }

    #[test]
    fn backtick_strings_refuse_backticks() {
        let query = "x{job=~`{{args.v}}`}";
        assert_eq!(
            render_text(query, &["v"], &vars(&[("v", "a\"b\\c")], &[])).unwrap(),
            "x{job=~`a\"b\\c`}"
        );
        assert!(matches!(
            render_text(query, &["v"], &vars(&[("v", "a` or vector(1) #")], &[])),
            Err(RenderError::UnsafeValue { .. })
        ));
    }

    #[test]
    fn escaped_quotes_in_the_template_do_not_confuse_the_lexer() {
        // The template's own `\"` keeps the string open, so the placeholder is still quoted.
        let query = r#"x{a="say \"hi\" {{args.v}}"}"#;
        let rendered =
            render_text(query, &["v"], &vars(&[("v", "\"} or vector(1)")], &[])).unwrap();
        assert_eq!(rendered, r#"x{a="say \"hi\" \"} or vector(1)"}"#);
    }

    #[test]
    fn placeholders_tolerate_spaces_and_fill_context_names() {
        let rendered = render_text(
            r#"x{ns="{{ namespace }}", w="{{workload}}"}[{{ interval }}]"#,
            &[],
            &vars(
                &[],
                &[
                    ("namespace", "prod"),
                    ("workload", "web-canary"),
                    ("interval", "1m"),
                ],
            ),
        )
        .unwrap();
        assert_eq!(rendered, r#"x{ns="prod", w="web-canary"}[1m]"#);
    }

    #[test]
    fn errors_name_the_argument_and_what_to_do() {
        let cases: [(&str, &[&str], Variables, &str); 5] = [
            (
                "x{a=\"{{args.job}}\"}",
                &["job"],
                vars(&[], &[]),
                "argument \"job\" has no value",
            ),
            (
                "x{a=\"{{args.jbo}}\"}",
                &["job"],
                vars(&[("jbo", "x")], &[]),
                "declares no argument \"jbo\"",
            ),
            (
                "x{a=\"{{target}}\"}",
                &[],
                vars(&[], &[]),
                "context value \"target\" is not set",
            ),
            (
                "x{a=\"{{ variables.foo }}\"}",
                &[],
                vars(&[], &[]),
                "unknown placeholder {{variables.foo}}",
            ),
            (
                "x{a=\"{{args.job\"}",
                &["job"],
                vars(&[], &[]),
                "never closed",
            ),
        ];
        for (query, declared, variables, expected) in cases {
            let err = render_text(query, declared, &variables).expect_err(query);
            assert!(err.to_string().contains(expected), "{query}: {err}");
        }
    }

    #[test]
    fn names_inside_regex_matchers_match_only_themselves() {
        let v = vars(&[("pattern", "web.*")], &[("workload", "web.v2")]);
        let cases = [
            // A Deployment name in a regex matcher is that name (the `.` escaped, then the
            // backslash escaped for the PromQL string).
            (
                r#"up{pod=~"{{workload}}-[a-z0-9]+"}"#,
                r#"up{pod=~"web\\.v2-[a-z0-9]+"}"#,
            ),
            (r#"up{pod!~ '{{workload}}'}"#, r#"up{pod!~ 'web\\.v2'}"#),
            ("up{pod=~`{{workload}}`}", r"up{pod=~`web\.v2`}"),
            // An equality matcher takes it as it is.
            (
                r#"up{deployment="{{workload}}"}"#,
                r#"up{deployment="web.v2"}"#,
            ),
            // Arguments are patterns if the template author says so.
            (r#"up{job=~"{{args.pattern}}"}"#, r#"up{job=~"web.*"}"#),
        ];
        for (query, expected) in cases {
            assert_eq!(
                render_text(query, &["pattern"], &v).unwrap(),
                expected,
                "{query}"
            );
        }
    }

    #[test]
    fn lists_placeholders_in_order() {
        assert_eq!(
            placeholders("a{{args.x}}b{{ target }}c{{ variables.y}}"),
            vec!["args.x", "target", "variables.y"]
        );
    }

    #[test]
    fn text_outside_queries_gets_values_as_they_are_and_no_line_breaks() {
        let mut v = vars(
            &[("tenant", "team-a"), ("token", "s3cr3t-t0ken")],
            &[("namespace", "prod")],
        );
        v.secret_args.insert("token".into());
        let declared = ["tenant", "token"];
        let header = super::render_text("Bearer {{args.token}}", &declared, &v, &as_is).unwrap();
        assert_eq!(header.text_to_send(), "Bearer s3cr3t-t0ken");
        assert_eq!(header.shown(), "Bearer <secret:token>");
        assert_eq!(
            header.redact("denied: s3cr3t-t0ken"),
            "denied: <secret:token>"
        );
        let address = super::render_text(
            "http://{{ args.tenant }}.{{namespace}}:9090/{\"x\"}",
            &declared,
            &v,
            &as_is,
        )
        .unwrap();
        assert_eq!(address.text_to_send(), "http://team-a.prod:9090/{\"x\"}");
        assert_eq!(address.shown(), address.text_to_send());
        v.args.insert("tenant".into(), "a\r\nX-Injected: 1".into());
        let err = super::render_text("{{args.tenant}}", &declared, &v, &as_is).unwrap_err();
        assert!(err.to_string().contains("line break"), "{err}");
        assert!(!err.to_string().contains("Injected"), "{err}");
        assert!(matches!(
            super::render_text("{{args.nope}}", &declared, &v, &as_is),
            Err(RenderError::UndeclaredArgument { .. })
        ));
        assert!(matches!(
            super::render_text("x {{args.tenant", &declared, &v, &as_is),
            Err(RenderError::Unclosed { offset: 2 })
        ));
        assert_eq!(
            argument_names("Bearer {{ args.token }} {{namespace}}"),
            vec!["token"]
        );
    }
}
