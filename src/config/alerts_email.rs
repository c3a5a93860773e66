//! `alerts.email:` (the same alerts as the webhook, by SMTP): the file type, the validated
//! model, and its checks (server address, mailboxes, STARTTLS mode, credentials, timings).

use std::time::Duration;

use serde::Deserialize;

use super::error::{Issues, Pos};
use super::file::Dur;
use super::node::Located;
use super::pool::nonzero_dur;

/// How the SMTP connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// STARTTLS when the server offers it, else plain (port 465: TLS from the start).
    Auto,
    /// STARTTLS or nothing is sent (port 465: TLS from the start).
    Always,
    /// Plain SMTP (a local relay).
    Never,
}

/// `alerts.email:`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Email {
    /// The SMTP server (`smtp: HOST[:PORT]`, port 25 by default).
    pub host: String,
    pub port: u16,
    /// `From:`, e.g. `autolb <autolb@example.com>`.
    pub from: String,
    /// Every recipient (at least one).
    pub to: Vec<String>,
    pub starttls: StartTls,
    /// Environment variables holding the SMTP login (both or neither).
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// At most one mail per event kind within this time (default 1m); what comes meanwhile
    /// goes in the next one.
    pub min_interval: Duration,
    /// Time for one delivery, connect to the server's last answer (default 30s).
    pub timeout: Duration,
}

/// `alerts.email:` in the file.
#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an email mapping (smtp, from, to, starttls, username_env, password_env, min_interval, timeout)"
)]
pub struct EmailFile {
    pub smtp: Option<Located<String>>,
    pub from: Option<Located<String>>,
    pub to: Option<Vec<Located<String>>>,
    pub starttls: Option<Located<String>>,
    pub username_env: Option<Located<String>>,
    pub password_env: Option<Located<String>>,
    pub min_interval: Option<Located<Dur>>,
    pub timeout: Option<Located<Dur>>,
}

/// `HOST[:PORT]` (`[v6]:PORT` for IPv6 literals); port 25 when left out.
pub(crate) fn parse_smtp(s: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("invalid smtp \"{s}\": {why}, expected HOST:PORT");
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(|| bad("no closing ]"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("unexpected text after ]")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((_, _)) if s.matches(':').count() > 1 => {
                return Err(bad("an IPv6 address needs brackets"))
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(bad("no host"));
    }
    let port = match port {
        None => 25,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be 1-65535")),
            Ok(p) => p,
        },
    };
    Ok((host.to_string(), port))
}

fn mailbox(field: &Located<String>, what: &str, issues: &mut Issues) -> Option<String> {
    let v = field.value.trim();
    match v.parse::<lettre::message::Mailbox>() {
        Ok(_) => Some(v.to_string()),
        Err(e) => {
            issues.push(
                field.pos,
                format!("invalid {what} address \"{v}\": {e}, e.g. ops@example.com or \"Ops <ops@example.com>\""),
            );
            None
        }
    }
}

fn env_name(field: &Option<Located<String>>, issues: &mut Issues) -> Option<String> {
    let f = field.as_ref()?;
    if f.value.is_empty() || f.value.contains(['=', '\0']) {
        issues.push(
            f.pos,
            format!("invalid environment variable name \"{}\"", f.value),
        );
        return None;
    }
    Some(f.value.clone())
}

/// Validates `alerts.email:` (at `pos`); `None` after recording the issues.
pub(crate) fn email(file: EmailFile, pos: Pos, issues: &mut Issues) -> Option<Email> {
    let before = issues.len();
    let server = match &file.smtp {
        None => {
            issues.push(pos, "alerts email needs smtp: HOST:PORT");
            None
        }
        Some(s) => parse_smtp(&s.value).map_err(|m| issues.push(s.pos, m)).ok(),
    };
    let from = match &file.from {
        None => {
            issues.push(pos, "alerts email needs from: an address");
            None
        }
        Some(f) => mailbox(f, "from", issues),
    };
    let to: Vec<String> = file
        .to
        .iter()
        .flatten()
        .filter_map(|t| mailbox(t, "to", issues))
        .collect();
    if file.to.as_ref().is_none_or(|t| t.is_empty()) {
        issues.push(pos, "alerts email needs to: [at least one address]");
    }
    let starttls = match &file.starttls {
        None => StartTls::Auto,
        Some(s) => match s.value.trim() {
            "auto" => StartTls::Auto,
            "always" => StartTls::Always,
            "never" => StartTls::Never,
            other => {
                issues.push(
                    s.pos,
                    format!("unknown starttls \"{other}\", expected one of: auto, always, never"),
                );
                StartTls::Auto
            }
        },
    };
    let username_env = env_name(&file.username_env, issues);
    let password_env = env_name(&file.password_env, issues);
    if file.username_env.is_some() != file.password_env.is_some() {
        let at = file
            .username_env
            .as_ref()
            .or(file.password_env.as_ref())
            .map_or(pos, |f| f.pos);
        issues.push(
            at,
            "alerts email needs both username_env and password_env, or neither",
        );
    }
    let min_interval = nonzero_dur(
        &file.min_interval,
        Duration::from_secs(60),
        "alerts email min_interval",
        issues,
    );
    let timeout = nonzero_dur(
        &file.timeout,
        Duration::from_secs(30),
        "alerts email timeout",
        issues,
    );
    let (host, port) = server?;
    (issues.len() == before).then(|| Email {
        host,
        port,
        from: from.unwrap_or_default(),
        to,
        starttls,
        username_env,
        password_env,
        min_interval,
        timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_addresses() {
        assert_eq!(
            parse_smtp("mail.example.com:587"),
            Ok(("mail.example.com".into(), 587))
        );
        assert_eq!(parse_smtp("127.0.0.1"), Ok(("127.0.0.1".into(), 25)));
        assert_eq!(parse_smtp("[::1]:2525"), Ok(("::1".into(), 2525)));
        for bad in ["", ":25", "x:0", "x:99999", "::1:25", "[::1", "a b:25"] {
            assert!(parse_smtp(bad).is_err(), "{bad}");
        }
    }
}
