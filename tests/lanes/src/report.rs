//! Result reporting both runners share: the verdict words and totals line the lane scripts
//! and scripts/test.sh parse, one-line texts, and the JSON result file.

use serde::Serialize;
use std::io;
use std::path::Path;

/// `PASS` or `FAIL`.
pub fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The closing line the lane scripts look for: `<who>: N passed, M failed`.
pub fn totals_line(who: &str, passed: usize, failed: usize) -> String {
    format!("{who}: {passed} passed, {failed} failed")
}

/// `s` with every run of whitespace (newlines included) made one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Writes `value` as pretty JSON to `path` (a temporary file, then a rename, so a reader on the
/// lane share never sees half of it).
pub fn write_json(path: &Path, value: &impl Serialize) -> io::Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(io::Error::other)?;
    text.push('\n');
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_line_is_what_the_scripts_parse() {
        assert_eq!(
            totals_line("verbs-lane client", 7, 0),
            "verbs-lane client: 7 passed, 0 failed"
        );
        assert_eq!(one_line(" a\n b\t c "), "a b c");
        assert_eq!(verdict(false), "FAIL");
    }
}
