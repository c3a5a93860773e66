//! A hyper client connection to a backend (HTTP/1.1 or a shared HTTP/2 one), as the
//! requests that use it and the idle queues hold it.

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper::{Request, Response};

use super::h2_peer::Slot;
use super::RequestBody;

/// An HTTP/1.1 or HTTP/2 client connection.
pub(super) enum Conn {
    H1(http1::SendRequest<RequestBody>),
    H2(http2::SendRequest<RequestBody>),
}

/// A connection to a backend, as requests hold it.
pub struct Sender {
    pub(super) conn: Conn,
    pub(super) generation: u64,
    /// On a shared HTTP/2 connection: this request's stream, given back when the request
    /// is done with the connection (the `Sender` dropped).
    pub(super) slot: Option<Slot>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("h2", &self.is_h2())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match &self.conn {
            Conn::H1(tx) => tx.is_closed(),
            Conn::H2(tx) => tx.is_closed(),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.conn, Conn::H2(_))
    }

    pub(super) async fn ready(&mut self) -> hyper::Result<()> {
        match &mut self.conn {
            Conn::H1(tx) => tx.ready().await,
            Conn::H2(tx) => tx.ready().await,
        }
    }

    pub(super) async fn try_send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match &mut self.conn {
            Conn::H1(tx) => tx.try_send_request(req).await,
            Conn::H2(tx) => tx.try_send_request(req).await,
        }
    }
}
