//! The module graph is one-way: every `crate::X` reference in `src/` goes from a top-level
//! module to one on a lower layer (docs/architecture.md draws the layers). A new upward
//! reference closes a cycle between top-level modules and fails here, naming the files and
//! the cycle. An upward edge that must stay would be listed in `ALLOWED` with why (none is);
//! an entry that no longer exists fails too, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// Top-level modules from the bottom layer up. A module may use modules on its own layer
/// or below; modules on one layer may not form a cycle among themselves.
const LAYERS: &[&[&str]] = &[
    &["build", "log_throttle", "procstat", "prom", "sched", "uri"],
    &["config"],
    &["tls", "compress", "cache", "proxy_proto"],
    &["upstream"],
    &["backend"],
    &["balance", "affinity"],
    &["runtime"],
    &["health", "state"],
    &["accesslog"],
    &["proxy", "l4"],
    &["metrics"],
    &["alerts", "autoscale", "acme", "ocsp", "tickets"],
    &["server"],
    &["admin"],
];

/// Upward references still in the code, `(from, to, why)`: none. An entry added here must
/// say why; the test fails on an entry the code no longer needs.
const ALLOWED: &[(&str, &str, &str)] = &[];

/// `from -> to -> [file:line, ...]` for every `crate::to` in a file of `from`.
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let mut mods = BTreeSet::new();
    for entry in std::fs::read_dir(src).expect("read src/") {
        let entry = entry.expect("src/ entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            if name != "bin" {
                mods.insert(name);
            }
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" {
                mods.insert(stem.to_string());
            }
        }
    }
    mods
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a line: without a `//` comment (doc links do not make a dependency).
fn code_of(line: &str) -> &str {
    let mut in_str = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_str = !in_str,
            b'/' if !in_str && bytes[i + 1] == b'/' => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// The modules a line names after `crate::`, `crate::{a, b::c}` included.
fn referenced(code: &str, mods: &BTreeSet<String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `crate::` preceded by an identifier character is something else (`$crate::`,
        // `mycrate::`).
        let before = &rest[..at];
        let standalone = !before
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[at + "crate::".len()..];
        if !standalone {
            continue;
        }
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end]
                .split(',')
                .map(|s| s.trim().split("::").next().unwrap_or("").trim())
                .collect()
        } else {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            vec![&rest[..end]]
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| mods.contains(*n))
                .map(str::to_string),
        );
    }
    found
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = top_level_modules(&src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src/");
        let first = rel
            .components()
            .next()
            .expect("a component")
            .as_os_str()
            .to_string_lossy();
        let from = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if !mods.contains(&from) {
            continue; // lib.rs and src/bin: the crate root and the binaries sit on top
        }
        let text = std::fs::read_to_string(&file).expect("read a source file");
        // A `use crate::{` group may span lines: join it first.
        let mut pending = String::new();
        for (n, line) in text.lines().enumerate() {
            let code = code_of(line);
            if !pending.is_empty() {
                pending.push_str(code);
                if !code.contains('}') {
                    continue;
                }
            } else if code.contains("crate::{") && !code.contains('}') {
                pending.push_str(code);
                continue;
            }
            let joined = if pending.is_empty() {
                code.to_string()
            } else {
                std::mem::take(&mut pending)
            };
            for to in referenced(&joined, &mods) {
                if to != from {
                    graph
                        .entry(from.clone())
                        .or_default()
                        .entry(to)
                        .or_default()
                        .push(format!("src/{}:{}", rel.display(), n + 1));
                }
            }
        }
    }
    graph
}

/// A path `from -> ... -> to` in `graph`, if any.
fn path(graph: &Graph, from: &str, to: &str) -> Option<Vec<String>> {
    let mut queue = VecDeque::from([vec![from.to_string()]]);
    let mut seen = BTreeSet::from([from.to_string()]);
    while let Some(p) = queue.pop_front() {
        let last = p.last().expect("non-empty");
        if last == to {
            return Some(p);
        }
        for next in graph.get(last).into_iter().flat_map(|m| m.keys()) {
            if seen.insert(next.clone()) {
                let mut longer = p.clone();
                longer.push(next.clone());
                queue.push_back(longer);
            }
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let graph = graph();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, mods)| mods.iter().map(move |m| (*m, i)))
        .collect();
    let mut failures = Vec::new();
    for m in top_level_modules(&src) {
        if !layer_of.contains_key(m.as_str()) {
            failures.push(format!(
                "module `{m}` is on no layer: add it to LAYERS in tests/module_graph.rs"
            ));
        }
    }
    let allowed: BTreeSet<(&str, &str)> = ALLOWED.iter().map(|(a, b, _)| (*a, *b)).collect();
    for (from, to, _) in ALLOWED {
        if !graph.get(*from).is_some_and(|m| m.contains_key(*to)) {
            failures.push(format!(
                "ALLOWED lists {from} -> {to}, which the code no longer has: remove the entry"
            ));
        }
        if layer_of.get(*to) <= layer_of.get(*from) {
            failures.push(format!(
                "ALLOWED lists {from} -> {to}, which no longer goes up the layers: remove the entry"
            ));
        }
    }
    // The graph without the allowed edges: an edge between two modules of one layer is fine
    // unless it closes a cycle there.
    let mut graph = graph;
    for (from, to) in &allowed {
        if let Some(tos) = graph.get_mut(*from) {
            tos.remove(*to);
        }
    }
    for (from, tos) in &graph {
        for (to, sites) in tos {
            let (Some(&lf), Some(&lt)) = (layer_of.get(from.as_str()), layer_of.get(to.as_str()))
            else {
                continue;
            };
            let upward = lt > lf || (lt == lf && path(&graph, to, from).is_some());
            if upward {
                let cycle = path(&graph, to, from)
                    .map(|p| format!("{from} -> {}", p.join(" -> ")))
                    .unwrap_or_else(|| "no cycle yet".to_string());
                failures.push(format!(
                    "{from} -> {to} goes up the layers ({cycle}), at {}",
                    sites.join(", ")
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the module graph must be one-way:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn the_reference_parser_sees_plain_grouped_and_commented_uses() {
    let mods: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(referenced("use crate::a::X;", &mods), ["a"]);
    assert_eq!(referenced("use crate::{b::Y, c};", &mods), ["b", "c"]);
    assert_eq!(
        referenced("let x = crate::c::f(crate::a::g());", &mods),
        ["c", "a"]
    );
    assert!(referenced("$crate::a::X", &mods).is_empty());
    assert!(referenced("use crate::zz::X;", &mods).is_empty());
    assert_eq!(code_of("f(); // crate::a::X"), "f(); ");
    assert_eq!(code_of("\"//\"; crate::a"), "\"//\"; crate::a");
}
