//! `BackendMode`: what the operator allows a backend to take (`set server ... state`).

/// What the operator allows a backend to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendMode {
    /// Normal service.
    #[default]
    Ready,
    /// No new requests or sessions; in-flight requests, sticky sessions and WebSockets
    /// pinned to it still use it.
    Drain,
    /// No traffic at all, active checks paused; in-flight requests finish.
    Maint,
}

impl BackendMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendMode::Ready => "ready",
            BackendMode::Drain => "drain",
            BackendMode::Maint => "maint",
        }
    }

    pub fn parse(s: &str) -> Option<BackendMode> {
        match s {
            "ready" => Some(BackendMode::Ready),
            "drain" => Some(BackendMode::Drain),
            "maint" => Some(BackendMode::Maint),
            _ => None,
        }
    }
}
