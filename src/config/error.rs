//! Config errors: `ConfigError` (`FILE:LINE:COL: message`), the `ConfigErrors` list, and the
//! internal `Pos` / `Issue` / `Issues` types every stage of the pipeline collects into.

use std::fmt;

/// A 1-based line/column in the config file (line 0 = no location, e.g. an I/O error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    /// No location (reported as `FILE: message`).
    pub const NONE: Pos = Pos { line: 0, column: 0 };
    /// The start of the file.
    pub const START: Pos = Pos { line: 1, column: 1 };

    pub const fn new(line: u64, column: u64) -> Self {
        Pos { line, column }
    }
}

/// One problem found in a config file: `FILE:LINE:COL: message`, or `FILE: message` when it
/// has no place in the file (line 0: the file cannot be read, a certificate changed since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order. Displays one error per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            fmt::Display::fmt(e, f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// A single error without a location (`FILE: message`).
    pub fn single(file: &str, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line: 0,
            column: 0,
            message: message.into(),
        }])
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A located message, before the file name is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub pos: Pos,
    pub message: String,
}

/// A collector of issues.
#[derive(Debug, Default)]
pub struct Issues(Vec<Issue>);

impl Issues {
    pub fn new() -> Self {
        Issues(Vec::new())
    }

    pub fn push(&mut self, pos: Pos, message: impl Into<String>) {
        self.0.push(Issue {
            pos,
            message: message.into(),
        });
    }

    /// A collector holding one issue.
    pub fn one(pos: Pos, message: impl Into<String>) -> Self {
        let mut issues = Issues::new();
        issues.push(pos, message);
        issues
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn extend(&mut self, other: Issues) {
        self.0.extend(other.0);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was collected, else the collected issues.
    pub fn result<T>(self, value: T) -> Result<T, Issues> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Sorted in file order (stable, so same-place issues keep their order), duplicates removed.
    pub fn into_errors(mut self, file: &str) -> ConfigErrors {
        self.0.sort_by_key(|i| i.pos);
        self.0.dedup();
        ConfigErrors(
            self.0
                .into_iter()
                .map(|i| ConfigError {
                    file: file.to_string(),
                    line: i.pos.line,
                    column: i.pos.column,
                    message: i.message,
                })
                .collect(),
        )
    }
}
