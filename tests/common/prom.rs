//! Prometheus helpers: find and run `promtool` (Debian's `prometheus` package, installed by
//! .ci/run), and read metric and label names out of an exposition or a PromQL expression.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// `promtool` on PATH, or `None`.
pub fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// `promtool`, or `None` after saying why the caller skips (a failure in CI, where .ci/run
/// installs it).
pub fn promtool_or_skip(test: &str) -> Option<PathBuf> {
    let found = promtool();
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("{test}: no promtool in CI (.ci/run installs Debian's prometheus package)");
        }
        eprintln!("SKIPPED {test}: no promtool (apt-get install prometheus)");
    }
    found
}

/// Run `promtool ARGS` in `dir` with `stdin`; (success, stdout + stderr).
pub fn run(promtool: &Path, args: &[&str], dir: &Path, stdin: &str) -> (bool, String) {
    let mut child = super::command(promtool.to_str().expect("utf-8 path"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ident_at(s: &str, start: usize) -> &str {
    let end = s[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(s.len(), |e| start + e);
    &s[start..end]
}

/// `autolb_*` metric names in `q`.
pub fn metric_names(q: &str) -> Vec<String> {
    q.match_indices("autolb_")
        .filter(|(i, _)| {
            !q[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(i, _)| ident_at(q, i).to_string())
        .collect()
}

/// Label names used in `q`: inside `{...}` selectors and `by`/`without`/`on`/`ignoring (...)`.
pub fn label_names(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in q.split('{').skip(1) {
        let sel = part.split('}').next().unwrap_or_default();
        for m in sel.split(',') {
            let name = m.split(['=', '!', '~']).next().unwrap_or_default().trim();
            if !name.is_empty() && !name.starts_with('$') {
                out.push(name.to_string());
            }
        }
    }
    for kw in ["by (", "without (", "on (", "ignoring ("] {
        for part in q.split(kw).skip(1) {
            out.extend(
                part.split(')')
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
    }
    out
}

/// Labels Prometheus adds to every scraped series (the target's), not autolb.
pub const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// What a running autolb exports: sample names and label names.
pub fn exported(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut names, mut labels) = (BTreeSet::new(), BTreeSet::new());
    for line in text.lines().filter(|l| l.starts_with("autolb_")) {
        names.insert(ident_at(line, 0).to_string());
        if let Some(inner) = line
            .split_once('{')
            .and_then(|(_, r)| r.split_once('}'))
            .map(|(i, _)| i)
        {
            for kv in inner.split("\",") {
                if let Some((k, _)) = kv.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
    (names, labels)
}
