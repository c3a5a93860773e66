//! `compress:` of a pool or a route (gzip and brotli of responses): the file type, the
//! validated model and its checks.

use serde::Deserialize;

use super::error::Issues;
use super::node::Located;

/// A content coding autolb can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Encoding {
    #[serde(rename = "br")]
    Brotli,
    #[serde(rename = "gzip")]
    Gzip,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
        }
    }
}

/// Response types compressed by default: text and structured text formats.
pub const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "text/csv",
    "text/markdown",
    "application/javascript",
    "application/json",
    "application/xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/ld+json",
    "application/manifest+json",
    "application/wasm",
    "image/svg+xml",
];

/// `compress:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compress {
    /// Lower-case media types (`text/html`) or `type/*`; parameters are ignored.
    pub types: Vec<String>,
    /// Responses announcing a smaller `Content-Length` are sent as they are (default 1024).
    pub min_size: u64,
    /// 1 (fastest) to 9 (smallest): gzip's level and brotli's quality (default 5).
    pub level: u32,
    /// Codings offered, in autolb's order of preference (default br, gzip).
    pub algorithms: Vec<Encoding>,
}

impl Compress {
    /// Whether `content_type` (a Content-Type value) is one of `types`.
    pub fn matches_type(&self, content_type: &str) -> bool {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let Some((major, _)) = essence.split_once('/') else {
            return false;
        };
        self.types
            .iter()
            .any(|t| *t == essence || t.strip_suffix("/*").is_some_and(|m| m == major))
    }
}

/// `compress:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a compress mapping (types, min_size, level, algorithms)"
)]
pub struct CompressFile {
    pub types: Option<Vec<Located<String>>>,
    pub min_size: Option<Located<u64>>,
    pub level: Option<Located<u32>>,
    pub algorithms: Option<Located<Vec<Located<Encoding>>>>,
}

/// Validates `compress:`; `None` after recording the issues.
pub(crate) fn compress(file: &CompressFile, issues: &mut Issues) -> Option<Compress> {
    let before = issues.len();
    let types = match &file.types {
        None => DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
        Some(list) => {
            let mut out = Vec::new();
            for t in list {
                let v = t.value.trim().to_ascii_lowercase();
                let valid = v.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty() && !b.is_empty() && a != "*" && !v.contains([';', ' ', ','])
                });
                if valid {
                    out.push(v);
                } else {
                    issues.push(
                        t.pos,
                        format!(
                            "invalid media type \"{}\" in compress types (e.g. text/html, text/*)",
                            t.value
                        ),
                    );
                }
            }
            out
        }
    };
    let level = match &file.level {
        None => 5,
        Some(l) if !(1..=9).contains(&l.value) => {
            issues.push(
                l.pos,
                format!("compress level must be between 1 and 9, got {}", l.value),
            );
            5
        }
        Some(l) => l.value,
    };
    let algorithms = match &file.algorithms {
        None => vec![Encoding::Brotli, Encoding::Gzip],
        Some(list) if list.value.is_empty() => {
            issues.push(list.pos, "compress algorithms must not be empty (br, gzip)");
            Vec::new()
        }
        Some(list) => {
            let mut out: Vec<Encoding> = Vec::new();
            for a in &list.value {
                if !out.contains(&a.value) {
                    out.push(a.value);
                }
            }
            out
        }
    };
    (issues.len() == before).then_some(Compress {
        types,
        min_size: file.min_size.as_ref().map_or(1024, |m| m.value),
        level,
        algorithms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_match_by_essence_and_wildcard() {
        let c = Compress {
            types: vec!["text/*".into(), "application/json".into()],
            min_size: 0,
            level: 5,
            algorithms: vec![Encoding::Gzip],
        };
        assert!(c.matches_type("text/html; charset=utf-8"));
        assert!(c.matches_type("Application/JSON"));
        assert!(!c.matches_type("application/jsonp"));
        assert!(!c.matches_type("image/png"));
        assert!(!c.matches_type("garbage"));
    }
}
