//! The forms a secret value may take in what an endpoint answers, so that every one of them
//! is taken out of text people read.
//!
//! An endpoint that quotes a request back (an error page echoing the request headers, a proxy
//! quoting the form body, an auth server naming the token it refused) does not quote it the
//! way it was configured: it may show the credential without its `Bearer ` scheme, the
//! `user:password` inside a `Basic` header, the form-encoded query, or a JSON-escaped copy.

use base64::Engine as _;

/// Parts of a secret shorter than this are not redacted on their own (the secret itself
/// always is): replacing every `ab` in a message would make it unreadable and hide nothing,
/// since such a part is not the secret.
const MIN_PART_LEN: usize = 4;

/// Every form of `value` to take out of text people read, longest first, without repeats.
/// Empty for an empty value.
pub fn secret_forms(value: &str) -> Vec<String> {
    if value.is_empty() {
        return Vec::new();
    }
    let mut parts = vec![value.to_string()];
    if let Some((scheme, credential)) = value.trim().split_once(char::is_whitespace) {
        let credential = credential.trim();
        let is_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if is_scheme && credential.len() >= MIN_PART_LEN {
            parts.push(credential.to_string());
            if scheme.eq_ignore_ascii_case("basic")
                && let Some(decoded) = base64::engine::general_purpose::STANDARD
                    .decode(credential)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
            {
                if let Some((_, password)) = decoded.split_once(':')
                    && password.len() >= MIN_PART_LEN
                {
                    parts.push(password.to_string());
                }
                parts.push(decoded);
            }
        }
    }
    let mut forms: Vec<String> = parts
        .iter()
        .flat_map(|part| {
            let json = serde_json::to_string(part).unwrap_or_default();
            let json = json
                .strip_prefix('"')
                .and_then(|j| j.strip_suffix('"'))
                .unwrap_or_default()
                .to_string();
            let form: String = url::form_urlencoded::byte_serialize(part.as_bytes()).collect();
            let percent = form.replace('+', "%20");
            [part.clone(), json, form, percent]
        })
        .filter(|form| !form.is_empty())
        .collect();
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    forms.dedup();
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_a_secret_may_be_quoted_in() {
        // (secret, forms that must be among the result)
        let cases: [(&str, &[&str]); 6] = [
            ("s3cret", &["s3cret"]),
            (
                "Bearer eyJhbGciOi.payload",
                &["Bearer eyJhbGciOi.payload", "eyJhbGciOi.payload"],
            ),
            (
                // base64("admin:pa55-word")
                "Basic YWRtaW46cGE1NS13b3Jk",
                &[
                    "Basic YWRtaW46cGE1NS13b3Jk",
                    "YWRtaW46cGE1NS13b3Jk",
                    "admin:pa55-word",
                    "pa55-word",
                    "admin%3Apa55-word",
                ],
            ),
            (
                "p@ss/w rd+\"q\"",
                &[
                    "p@ss/w rd+\"q\"",
                    "p%40ss%2Fw+rd%2B%22q%22",
                    "p%40ss%2Fw%20rd%2B%22q%22",
                    r#"p@ss/w rd+\"q\""#,
                ],
            ),
            ("Token abc", &["Token abc"]),
            ("", &[]),
        ];
        for (secret, expected) in cases {
            let forms = secret_forms(secret);
            for form in expected {
                assert!(
                    forms.iter().any(|f| f == form),
                    "{secret:?}: {form:?} missing from {forms:?}"
                );
            }
            // Short parts are left alone: "abc" of "Token abc" is not redacted by itself.
            assert!(
                !forms.iter().any(|f| f.len() < MIN_PART_LEN && f != secret),
                "{forms:?}"
            );
            let mut sorted = forms.clone();
            sorted.sort_by_key(|f| std::cmp::Reverse(f.len()));
            assert_eq!(
                forms.iter().map(String::len).collect::<Vec<_>>(),
                sorted.iter().map(String::len).collect::<Vec<_>>(),
                "longest first"
            );
        }
    }
}
