//! Unit tests of the fast YAML path (`yaml.rs`) against serde-saphyr's (`yaml_saphyr.rs`),
//! the oracle: on a corpus of tricky YAML, every YAML file and ```yaml block of the
//! repository, every truncation of a config and pseudo-random garbage, a tree the fast path
//! builds must be the one serde-saphyr builds, and nothing may panic.

use std::path::{Path, PathBuf};

use super::node::{self, Node};
use super::yaml::{self, Unsupported};
use super::yaml_saphyr;

/// Compares the two paths on `text`; returns what the fast path said.
fn compare(text: &str) -> Result<Node, Unsupported> {
    let fast = yaml::build(text);
    let slow = yaml_saphyr::parse(text);
    if let Ok(tree) = &fast {
        match &slow {
            Ok(want) => assert_eq!(tree, want, "trees differ for {text:?}"),
            Err(e) => panic!("fast path took {text:?}, serde-saphyr: {}", e.message),
        }
    }
    // Whichever path reads it, `node::parse` is serde-saphyr's answer when the fast one bails.
    assert_eq!(
        node::parse(text).map_err(|e| (e.pos, e.message)),
        slow.map_err(|e| (e.pos, e.message)),
        "{text:?}"
    );
    fast
}

fn fast_ok(text: &str) {
    if let Err(why) = compare(text) {
        panic!("fast path bailed ({why}) on {text:?}");
    }
}

/// Where serde-saphyr reads `text`, the fast path must too.
fn agrees(text: &str) {
    let fast = compare(text);
    if yaml_saphyr::parse(text).is_ok() {
        assert!(fast.is_ok(), "fast path bailed ({fast:?}) on {text:?}");
    }
}

fn bails(text: &str, want: Unsupported) {
    assert_eq!(compare(text).err(), Some(want), "{text:?}");
}

#[test]
fn scalars_resolve_as_serde_saphyr_does() {
    let spellings = [
        "",
        "~",
        "null",
        "Null",
        "NULL",
        "nUll",
        "true",
        "True",
        "TRUE",
        "false",
        "FALSE",
        "tRue",
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "0",
        "-0",
        "+0",
        "00",
        "-00",
        "007",
        "-007",
        "+007",
        "12",
        "+12",
        "-12",
        "1_000",
        "1__000",
        "_1",
        "1_",
        "0x1f",
        "0x1F",
        "0X1F",
        "-0x1f",
        "+0x1f",
        "0x",
        "0o17",
        "0O17",
        "0o8",
        "0b101",
        "0B101",
        "0b2",
        "0x_1",
        "0b1_0",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "340282366920938463463374607431768211456",
        "0xffffffffffffffff",
        "0x10000000000000000",
        "1.5",
        "-1.5",
        "+1.5",
        ".5",
        "-.5",
        "1.",
        "1e3",
        "1E3",
        "1e-3",
        "1.5e+3",
        "1_0.5",
        "1e",
        "e3",
        ".",
        "-",
        "+",
        "inf",
        "-inf",
        "nan",
        "NaN",
        "infinity",
        "+.nan",
        "-.nan",
        "-.NaN",
        "1.10",
        "3.0",
        "127.0.0.1",
        "127.0.0.1:8080",
        "10s",
        "250ms",
        "1KiB",
        "a b",
        "x: y",
        "é",
        "0.0.0.0",
        "::1",
        "[::1]:80",
        "1:30",
        "2001:db8::1",
    ];
    for s in spellings {
        if s.starts_with('[') || s.contains(": ") {
            continue;
        }
        agrees(&format!("a: {s}\n"));
        agrees(&format!("- {s}\n"));
        agrees(&format!("a: [{s}]\n"));
        agrees(&format!("{{ k: {s} }}\n"));
        if !s.is_empty() {
            agrees(&format!("{s}: 1\n"));
            fast_ok(&format!("a: '{s}'\nb: \"{s}\"\n"));
            fast_ok(&format!("a: |\n  {s}\nb: >-\n  {s}\n"));
        }
    }
    fast_ok("1.5\n");
    fast_ok("text\n");
    fast_ok("'quoted'\n");
}

#[test]
fn a_config_at_scale_takes_the_fast_path() {
    // bench/scale's shape: flow mappings of routes, pools of flow lists and block lists.
    let mut y = String::from(
        "threads: 1\nshutdown_grace: 1s\nadmin: { listen: \"127.0.0.1:9001\" }\nlisteners:\n  \
         - { name: web, listen: \"127.0.0.1:9000\", protocol: http, pool: default }\nroutes:\n",
    );
    for i in 0..300 {
        y += &format!(
            "  - {{ host: t{i}.example, path_prefix: /api/{i}/, pool: p{} }}\n",
            i % 10
        );
    }
    y += "pools:\n  default: { backends: [ { address: \"127.0.0.1:9100\" } ] }\n";
    for g in 0..8 {
        y += &format!("  idle{g}:\n    backends:\n");
        for n in 0..25 {
            y += &format!("      - {{ address: \"127.3.{g}.{}:9\" }}\n", n + 1);
        }
    }
    fast_ok(&y);
}

#[test]
fn non_finite_numbers_go_to_serde_saphyr() {
    for s in [".inf", "-.Inf", "+.INF", ".nan", ".NaN", "1e999", "-1e400"] {
        bails(&format!("a: {s}\n"), Unsupported::NonFinite);
    }
}

#[test]
fn structures_styles_and_positions() {
    let cases = [
        "a:\n  b:\n    - 1\n    - {c: d, e: [f, g]}\n  h: |\n    literal\n    text\n",
        "- - - deep\n    - x\n  - y\n- z\n",
        "a: [1, [2, [3]], {x: {y: z}}]\n",
        "a: {}\nb: []\nc: [{}, []]\n",
        "a:\nb:\n  c:\n",
        "key:    value   # comment\n# another\nother: 'it''s'\n",
        "a: \"esc\\t\\u00e9\\n\"\nb: 'single'\n",
        "a: >\n  folded\n  text\n\n  more\nb: |+\n  keep\n\nc: |-\n  strip\n",
        "a: plain\n  continued\n  lines\n",
        "é: ü\nçà: 12\nx: [ü, 1.5, 0x10]\n",
        "\u{feff}a: 1\n",
        "a: 1\r\nb: [x,\r\n y]\r\n",
        "---\na: 1\n",
        "---\na: 1\n...\n",
        "%YAML 1.2\n---\na: 1\n",
        "# only a comment\n",
        "",
        "\n\n",
        "---\n",
        "~\n",
        "null\n",
        "- a\n- b\n",
        "[a, b]\n",
        "? a\n: b\n",
        "? a\n",
        "{a: 1, b}\n",
        "a: [b: c]\n",
        ": v\n",
        "a:\n- 1\n- 2\n",
        "listeners:\n  - { name: web, listen: \"127.0.0.1:8080\", pool: web }\n",
        "a: \"multi\n  line\"\n",
        "a:\t1\n",
        "a: 1 # c\nb:  # c\n  - x # c\n",
    ];
    for text in cases {
        fast_ok(text);
    }
}

#[test]
fn keys_that_are_the_same_key() {
    let dups = [
        "a: 1\na: 2\n",
        "a: 1\n'a': 2\n",
        "\"a\": 1\na: 2\n",
        "0xB: 1\n11: 2\n",
        "0X1F: 1\n31: 2\n",
        "-0: 1\n0: 2\n",
        "1: 1\n'1': 2\n",
        "~: 1\nnull: 2\n",
        "~: 1\n'~': 2\n",
        ": 1\n~: 2\n",
        "true: 1\n'true': 2\n",
        "{a: 1, a: 2}\n",
        "0x10000000000000000: 1\n18446744073709551616: 2\n",
    ];
    for text in dups {
        bails(text, Unsupported::DuplicateKey);
    }
    // Beyond the linear check: the hash set.
    let mut big: String = (0..40).map(|i| format!("k{i}: {i}\n")).collect();
    fast_ok(&big);
    big.push_str("k7: again\n");
    bails(&big, Unsupported::DuplicateKey);
    let mut ints: String = (0..40).map(|i| format!("{i}: x\n")).collect();
    fast_ok(&ints);
    ints.push_str("0x1f: y\n");
    bails(&ints, Unsupported::DuplicateKey);
    let mut nulls: String = (0..40).map(|i| format!("k{i}: x\n")).collect();
    nulls.push_str("~: y\n");
    fast_ok(&nulls);
    nulls.push_str("'': z\n");
    bails(&nulls, Unsupported::DuplicateKey);
}

#[test]
fn graph_features_and_tags_go_to_serde_saphyr() {
    let d = "d: &d {retries: 1}\n";
    bails(&format!("{d}p:\n  <<: *d\n  x: 1\n"), Unsupported::Anchor);
    bails("a: &x 1\nb: *x\n", Unsupported::Anchor);
    bails("a: &x 1\n", Unsupported::Anchor);
    bails("p:\n  <<: {a: 1}\n  b: 2\n", Unsupported::MergeKey);
    bails("p:\n  '<<': 1\n", Unsupported::MergeKey);
    for tagged in [
        "a: !!str 1\n",
        "a: !!int '1'\n",
        "a: !!float 1\n",
        "a: !!bool true\n",
        "a: !!null ''\n",
        "a: ! 12\n",
        "a: !custom x\n",
        "a: !!map {b: 1}\n",
        "a: !!seq [1]\n",
        "a: !!binary aGk=\n",
        "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
    ] {
        bails(tagged, Unsupported::Tag);
    }
    bails("a: 1\n---\nb: 2\n", Unsupported::Documents);
    bails("a: 1\n...\n---\nb: 2\n", Unsupported::Documents);
    bails("? [a]\n: b\n", Unsupported::ComplexKey);
    bails("? {a: 1}\n: b\n", Unsupported::ComplexKey);
    bails("[a]: b\n", Unsupported::ComplexKey);
}

#[test]
fn billion_laughs_and_depth_limits() {
    let mut laughs = String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for (i, c) in ('b'..='j').enumerate() {
        let prev = char::from(b'a' + u8::try_from(i).unwrap_or(0));
        laughs += &format!("{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n");
    }
    assert_eq!(compare(&laughs).err(), Some(Unsupported::Anchor));
    let err = node::parse(&laughs).expect_err("alias bomb");
    assert!(err.message.starts_with("invalid yaml:"), "{}", err.message);
    // Nesting: 64 levels are within serde-saphyr's budget, 65 are not. serde-saphyr (the
    // oracle) recurses for each level, more than a test thread's stack holds in a debug build.
    let deep = std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(nesting_limits)
        .expect("thread");
    if let Err(panic) = deep.join() {
        std::panic::resume_unwind(panic);
    }
}

fn nesting_limits() {
    for depth in [64usize, 65, 300] {
        let text = format!("{}{}\n", "[".repeat(depth), "]".repeat(depth));
        let r = compare(&text);
        assert_eq!(r.is_ok(), depth <= 64, "depth {depth}: {r:?}");
        let text: String = (0..depth)
            .map(|i| format!("{}k:\n", "  ".repeat(i)))
            .collect();
        let r = compare(&text);
        assert_eq!(r.is_ok(), depth <= 64, "block depth {depth}: {r:?}");
    }
}

#[test]
fn syntax_errors_keep_serde_saphyrs_position_and_message() {
    for text in [
        "listeners:\n  - { name: web, listen: [127.0.0.1:8080\npools: {}\n",
        "listeners:\n\t- x\n",
        "a: 'unterminated\n",
        "a: \"bad \\q escape\"\n",
        "a: b: c\n",
        "- a\nb: c\n",
        "a:\n  - 1\n - 2\n",
        "]\n",
        "a: [1, 2\n",
        "a: {b\n",
        "*x\n",
        "a: &x\n&y b\n",
        "@a\n",
        "`a\n",
        "a: %x\n",
        "%YAML 1.2\n%YAML 1.2\n---\na\n",
    ] {
        assert!(compare(text).is_err(), "{text:?}");
        let err = node::parse(text).expect_err(text);
        assert!(err.message.starts_with("invalid yaml:"), "{}", err.message);
    }
}

/// The YAML files of the repository and the ```yaml blocks of its Markdown.
fn repository_yaml() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" && name != "node_modules" {
                    dirs.push(path);
                }
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            if name.ends_with(".yaml") || name.ends_with(".yml") {
                out.push((path, text));
            } else if name.ends_with(".md") {
                let mut block: Option<String> = None;
                for line in text.lines() {
                    match &mut block {
                        None if line.trim_start().starts_with("```yaml") => {
                            block = Some(String::new());
                        }
                        Some(b) if line.trim_start().starts_with("```") => {
                            out.push((path.clone(), std::mem::take(b)));
                            block = None;
                        }
                        Some(b) => {
                            b.push_str(line);
                            b.push('\n');
                        }
                        None => {}
                    }
                }
            }
        }
    }
    out
}

#[test]
fn repository_yaml_reads_the_same() {
    let files = repository_yaml();
    assert!(files.len() > 20, "found {} YAML texts", files.len());
    let mut fast = 0;
    for (path, text) in &files {
        if std::panic::catch_unwind(|| compare(text)).is_err() {
            panic!("{}", path.display());
        }
        fast += usize::from(yaml::build(text).is_ok());
    }
    // Most of them are plain configs the fast path reads itself.
    assert!(fast * 2 > files.len(), "{fast} of {}", files.len());
}

#[test]
fn truncations_and_garbage_never_panic() {
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/config/valid.yaml"),
    )
    .unwrap_or_else(|_| super::tests_errors::BASE.to_string());
    let sample =
        format!("{config}\nx: [1, 0x1F, 'q', \"d\\n\", {{a: ~}}]\ny: |\n  t\nz: >-\n  f\n  g\n");
    for end in (0..=sample.len()).filter(|&i| sample.is_char_boundary(i)) {
        let _ = compare(&sample[..end]);
    }
    // A deterministic stream of YAML-ish bytes.
    let alphabet = b"ab01 :-[]{},'\"#&*!|>?~.\n\t\\%@`xe+_";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 1..400 {
        let text: String = (0..len % 60)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let i = usize::try_from(state % alphabet.len() as u64).unwrap_or(0);
                char::from(alphabet[i])
            })
            .collect();
        let _ = compare(&text);
    }
}
