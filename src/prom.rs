//! The Prometheus text format's two helpers (label escaping, `# HELP`/`# TYPE` lines), for
//! every module that renders its own metrics. Depends on nothing in the crate.

use std::fmt::Write as _;

/// Escape a label value (backslash, quote, newline).
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `# HELP` and `# TYPE` lines of metric `autolb_{name}`.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP autolb_{name} {help}");
    let _ = writeln!(out, "# TYPE autolb_{name} {kind}");
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(super::label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(super::label("x\ny"), "x\\ny");
        let mut out = String::new();
        super::header(&mut out, "x_total", "counter", "Xs.");
        assert_eq!(
            out,
            "# HELP autolb_x_total Xs.\n# TYPE autolb_x_total counter\n"
        );
    }
}
