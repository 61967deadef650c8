//! Human output: aligned tables, short times, text made safe for a terminal.

use std::borrow::Cow;

/// `text` without terminal control sequences: status messages, reasons and Prometheus errors
/// come from the cluster and from servers a template names, and an escape sequence in them
/// must not reach an operator's terminal (cursor moves, title or clipboard writes). Control
/// characters other than newline and tab are shown as `\u{..}`.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if unsafe_char(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// A failure as one JSON line for stdout: `{"type":"error","exitCode":N,"message":"..."}`.
pub fn error_line(failure: &super::cluster::Failure) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ErrorLine<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        exit_code: u8,
        message: &'a str,
    }
    let line = ErrorLine {
        kind: "error",
        exit_code: failure.exit as u8,
        message: &failure.message,
    };
    serde_json::to_string(&line).expect("an error line serialises")
}

/// Renders rows as left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// `2026-11-20T10:01:00Z`: seconds precision, UTC.
pub fn time(timestamp: jiff::Timestamp) -> String {
    timestamp.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let text = table(
            &["A", "LONG HEADER", "LAST"],
            &[
                vec!["x".into(), "y".into(), "the end".into()],
                vec!["wider".into(), "z".into(), "".into()],
            ],
        );
        assert_eq!(
            text,
            "A      LONG HEADER  LAST\nx      y            the end\nwider  z\n"
        );
    }
}

#[cfg(test)]
mod error_line_tests {
    use super::error_line;
    use crate::cli::Exit;
    use crate::cli::cluster::Failure;

    #[test]
    fn a_failure_is_one_json_line() {
        let line = error_line(&Failure::new(Exit::TimedOut, "no \"answer\"\nin time"));
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "error");
        assert_eq!(value["exitCode"], 3);
        assert_eq!(value["message"], "no \"answer\"\nin time");
    }
}

#[cfg(test)]
mod terminal_tests {
    use super::terminal_safe;

    #[test]
    fn escape_sequences_are_shown_not_sent() {
        assert_eq!(terminal_safe("plain\ttext\n"), "plain\ttext\n");
        let hostile = "no data \u{1b}]52;c;aGk=\u{7}\u{9b}31m done";
        let safe = terminal_safe(hostile);
        assert!(!safe.chars().any(|c| c.is_control()), "{safe}");
        assert_eq!(safe, "no data \\u{1b}]52;c;aGk=\\u{7}\\u{9b}31m done");
    }
}
