//! systemd's notification protocol (sd_notify(3)), as much as autolb needs: `READY=1` once
//! serving, `STOPPING=1` when draining on SIGTERM, and for a successor (`run --upgrade`)
//! `MAINPID=` and a barrier before the old process is told to drain, so that systemd
//! follows the new process before the old one exits.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use sendfd::SendWithFd;

/// Where to send notifications: the socket systemd named in `NOTIFY_SOCKET`.
pub struct Notifier {
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier of `NOTIFY_SOCKET`, which is removed from the environment: the instances
    /// autolb starts must not talk to systemd on its behalf (a `STOPPING=1` from one would
    /// stop the unit). Call before any thread starts.
    pub fn take_from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let bytes = value.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&value),
        };
        match addr {
            Ok(addr) => Some(Notifier { addr }),
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is not a socket address; not notifying systemd");
                None
            }
        }
    }

    fn socket(&self) -> std::io::Result<UnixDatagram> {
        let sock = UnixDatagram::unbound()?;
        sock.connect_addr(&self.addr)?;
        Ok(sock)
    }

    /// Send `state` (`READY=1`, `MAINPID=42` ...), one assignment a line.
    pub fn send(&self, state: &str) {
        let sent = self.socket().and_then(|s| s.send(state.as_bytes()));
        if let Err(e) = sent {
            tracing::warn!(error = %e, state, "cannot notify systemd");
        }
    }

    /// Wait until systemd has processed every notification sent before (`BARRIER=1` with a
    /// pipe, which it closes once done), at most `limit`.
    pub fn barrier(&self, limit: Duration) -> std::io::Result<()> {
        let (mut reader, writer) = std::io::pipe()?;
        self.socket()?
            .send_with_fd(b"BARRIER=1\n", &[writer.as_raw_fd()])?;
        drop(writer);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("autolb-notify".into())
            .spawn(move || {
                let mut buf = [0u8; 8];
                // EOF (or an error) once every copy of the write end is closed.
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                let _ = tx.send(());
            })?;
        rx.recv_timeout(limit).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "systemd did not answer the notification barrier",
            )
        })
    }
}
