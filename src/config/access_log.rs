//! `access_log:` (one line per request, JSON or combined, to stdout or a file): the file
//! type, the validated model and its checks.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::error::{Issues, Pos};
use super::node::Located;

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One JSON object per line (the default).
    #[default]
    Json,
    /// Apache/nginx "combined", followed by autolb's own fields.
    Combined,
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Stderr,
    /// Appended to; reopened on SIGUSR1 (after logrotate moved it).
    File(PathBuf),
}

/// `access_log:`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    pub format: AccessLogFormat,
    pub target: AccessLogTarget,
    /// Lines queued for the writer; past this, lines are dropped and counted, never waited
    /// for (default 16384).
    pub buffer: usize,
}

/// `access_log:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an access_log mapping (format, path, buffer)"
)]
pub struct AccessLogFile {
    pub format: Option<Located<AccessLogFormat>>,
    pub path: Option<Located<String>>,
    pub buffer: Option<Located<u64>>,
}

/// Validates `access_log:`; a relative `path` resolves against `base` (the config file's
/// directory), whose directory must exist.
pub(crate) fn access_log(
    file: AccessLogFile,
    base: &Path,
    issues: &mut Issues,
) -> Option<AccessLog> {
    let before = issues.len();
    let target = match &file.path {
        None => AccessLogTarget::Stdout,
        Some(p) => match p.value.trim() {
            "" => {
                issues.push(
                    p.pos,
                    "access_log path must not be empty (or stdout, stderr)",
                );
                AccessLogTarget::Stdout
            }
            "stdout" | "-" => AccessLogTarget::Stdout,
            "stderr" => AccessLogTarget::Stderr,
            path => {
                let path = base.join(path);
                check_dir(&path, p.pos, issues);
                AccessLogTarget::File(path)
            }
        },
    };
    let buffer = match &file.buffer {
        None => 16_384,
        Some(b) if !(1..=1_048_576).contains(&b.value) => {
            issues.push(
                b.pos,
                format!(
                    "access_log buffer must be between 1 and 1048576 lines, got {}",
                    b.value
                ),
            );
            16_384
        }
        Some(b) => b.value as usize,
    };
    (issues.len() == before).then_some(AccessLog {
        format: file.format.map(|f| f.value).unwrap_or_default(),
        target,
        buffer,
    })
}

fn check_dir(path: &Path, pos: Pos, issues: &mut Issues) {
    if path.is_dir() {
        issues.push(
            pos,
            format!("access_log path {} is a directory", path.display()),
        );
        return;
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        issues.push(
            pos,
            format!("access_log directory {} does not exist", dir.display()),
        );
    }
}
