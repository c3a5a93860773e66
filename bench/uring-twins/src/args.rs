//! The twins' command line: `--listen ADDR --backend ADDR [--backend ADDR ...]`.

use std::net::SocketAddr;

/// Where to listen and which backends to forward to.
pub struct Args {
    pub listen: SocketAddr,
    pub backends: Vec<SocketAddr>,
}

impl Args {
    /// Parses `std::env::args()`; the error is a usage message.
    pub fn from_env() -> Result<Self, String> {
        Self::parse(std::env::args().skip(1))
    }

    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, String> {
        let usage = "usage: TWIN --listen ADDR --backend ADDR [--backend ADDR ...]";
        let mut listen = None;
        let mut backends = Vec::new();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(usage)?;
            let addr: SocketAddr = value.parse().map_err(|e| format!("{value}: {e}"))?;
            match flag.as_str() {
                "--listen" => listen = Some(addr),
                "--backend" => backends.push(addr),
                _ => return Err(usage.into()),
            }
        }
        match listen {
            Some(listen) if !backends.is_empty() => Ok(Self { listen, backends }),
            _ => Err(usage.into()),
        }
    }
}
