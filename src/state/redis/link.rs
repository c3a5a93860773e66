//! How autolb reaches a Redis node: credentials (from the URL, or `password_env`), TLS
//! (`rediss://` or a `tls:` block: CA bundle, client certificate, `sni`), and bounded
//! connects to one node or to a Redis Cluster through every address it knows.

use std::net::SocketAddr;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster_async::ClusterConnection;
use ::redis::io::AsyncDNSResolver;
use ::redis::{
    AsyncConnectionConfig, ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    ProtocolVersion, RedisFuture, TlsCertificates,
};

use crate::config::Redis;
use crate::state::{StateError, CALL_TIMEOUT};

/// How long a TCP (and TLS) connect may take (in the supervisor, never on a request).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why the Redis backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("state.redis.password_env names {0}, but that environment variable is unset or empty")]
    MissingPassword(String),
    #[error("state.redis.tls: cannot read {path}: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("state.redis: {0}")]
    Url(String),
}

/// A node address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Addr {
    /// `host:port` or `[v6]:port`.
    pub fn parse(text: &str) -> Option<Addr> {
        crate::config::host_port(text).map(|(host, port)| Addr { host, port })
    }
}

/// Everything needed to open a connection to any node of the deployment.
pub struct Access {
    /// Credentials and protocol of every data node (the address is replaced per node).
    base: ConnectionInfo,
    tls: Option<TlsCertificates>,
    sni: Option<String>,
    /// Seed addresses from `url`/`urls`, in order.
    pub seeds: Vec<Addr>,
}

impl Access {
    /// Reads the password variable and the TLS files.
    pub fn new(settings: &Redis) -> Result<Access, StartError> {
        let mut seeds = Vec::new();
        let mut base: Option<ConnectionInfo> = None;
        for url in &settings.urls {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| StartError::Url(e.to_string()))?;
            let (host, port) = match info.addr() {
                ConnectionAddr::Tcp(h, p)
                | ConnectionAddr::TcpTls {
                    host: h, port: p, ..
                } => (h.clone(), *p),
                ConnectionAddr::Unix(_) => {
                    return Err(StartError::Url("unix sockets are not supported".into()))
                }
                _ => return Err(StartError::Url("unsupported address".into())),
            };
            seeds.push(Addr { host, port });
            base.get_or_insert(info);
        }
        let mut base = match base {
            Some(b) => b,
            None => ("127.0.0.1", 6379)
                .into_connection_info()
                .map_err(|e| StartError::Url(e.to_string()))?,
        };
        if let Some(var) = &settings.password_env {
            let password = std::env::var(var)
                .ok()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| StartError::MissingPassword(var.clone()))?;
            let redis = base.redis_settings().clone().set_password(password);
            base = base.set_redis_settings(redis);
        }
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| StartError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        let (tls, sni) = match &settings.tls {
            None => (None, None),
            Some(t) => {
                let root_cert = t.ca.as_deref().map(read).transpose()?;
                let client_tls = match (&t.client_cert, &t.client_key) {
                    (Some(c), Some(k)) => Some(ClientTlsConfig {
                        client_cert: read(c)?,
                        client_key: read(k)?,
                    }),
                    _ => None,
                };
                let certs = TlsCertificates {
                    client_tls,
                    root_cert,
                };
                (Some(certs), t.sni.clone())
            }
        };
        Ok(Access {
            base,
            tls,
            sni,
            seeds,
        })
    }

    /// The connection info of `addr` (TLS and credentials as configured; `sentinel`: no
    /// credentials, Sentinels have their own).
    fn info(&self, addr: &Addr, sentinel: bool) -> Result<::redis::Client, StateError> {
        let host = self.sni.clone().unwrap_or_else(|| addr.host.clone());
        let mut info = self.base.clone();
        if sentinel {
            let plain = ("127.0.0.1", 6379)
                .into_connection_info()
                .map_err(backend)?;
            info = info.set_redis_settings(plain.redis_settings().clone());
        }
        match &self.tls {
            Some(certs) => {
                let info = info.set_addr(ConnectionAddr::TcpTls {
                    host,
                    port: addr.port,
                    insecure: false,
                    tls_params: None,
                });
                ::redis::Client::build_with_tls(info, certs.clone()).map_err(backend)
            }
            None => ::redis::Client::open(
                info.set_addr(ConnectionAddr::Tcp(addr.host.clone(), addr.port)),
            )
            .map_err(backend),
        }
    }

    fn config(&self, addr: &Addr) -> AsyncConnectionConfig {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        if self.sni.is_some() {
            // The TLS name is `sni`; the address is the node's.
            config.set_dns_resolver(Pinned(addr.clone()))
        } else {
            config
        }
    }

    /// One connection to `addr`, bounded.
    pub async fn connect(&self, addr: &Addr) -> Result<MultiplexedConnection, StateError> {
        let client = self.info(addr, false)?;
        let config = self.config(addr);
        bounded_connect(client.get_multiplexed_async_connection_with_config(&config)).await
    }

    /// A connection to the Sentinel at `addr` (RESP3, so that it can carry the pushes of a
    /// subscription to `push`).
    pub async fn sentinel(
        &self,
        addr: &Addr,
        push: Option<tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>>,
    ) -> Result<MultiplexedConnection, StateError> {
        self.push_capable(addr, true, push).await
    }

    /// A connection to the data node at `addr` (credentials and TLS as configured) that
    /// carries the pushes of a subscription to `push` (RESP3).
    pub async fn subscriber(
        &self,
        addr: &Addr,
        push: tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>,
    ) -> Result<MultiplexedConnection, StateError> {
        self.push_capable(addr, false, Some(push)).await
    }

    async fn push_capable(
        &self,
        addr: &Addr,
        sentinel: bool,
        push: Option<tokio::sync::mpsc::UnboundedSender<::redis::PushInfo>>,
    ) -> Result<MultiplexedConnection, StateError> {
        let client = self.info(addr, sentinel)?;
        let mut config = self.config(addr);
        let client = if let Some(tx) = push {
            config = config.set_push_sender(tx);
            let info = client.get_connection_info().clone();
            let resp3 = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let info = info.set_redis_settings(resp3);
            match &self.tls {
                Some(certs) => ::redis::Client::build_with_tls(info, certs.clone()),
                None => ::redis::Client::open(info),
            }
            .map_err(backend)?
        } else {
            client
        };
        bounded_connect(client.get_multiplexed_async_connection_with_config(&config)).await
    }

    /// A Redis Cluster connection through every address in `nodes` (any one answering is
    /// enough: the client reads the slot map from it and connects to every node).
    pub async fn cluster(&self, nodes: &[Addr]) -> Result<ClusterConnection, StateError> {
        if self.sni.is_some() {
            return Err(StateError::Backend(
                "tls.sni cannot be used with Redis Cluster: each node is verified against the address the cluster announces (cluster-announce-hostname)".into(),
            ));
        }
        let mut infos = Vec::new();
        for n in nodes {
            infos.push(self.info(n, false)?.get_connection_info().clone());
        }
        let mut builder = ::redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(CALL_TIMEOUT)
            .retries(2)
            .min_retry_wait(20)
            .max_retry_wait(100);
        if let Some(certs) = &self.tls {
            builder = builder.certs(certs.clone());
        }
        let client = builder.build().map_err(backend)?;
        bounded_connect(client.get_async_connection()).await
    }
}

fn backend(e: ::redis::RedisError) -> StateError {
    StateError::Backend(e.to_string())
}

async fn bounded_connect<T>(
    fut: impl std::future::Future<Output = ::redis::RedisResult<T>>,
) -> Result<T, StateError> {
    let limit = CONNECT_TIMEOUT * 4;
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(backend),
        Err(_) => Err(StateError::Timeout(limit)),
    }
}

/// Resolves whatever name TLS uses (`sni`) to the node's own address.
struct Pinned(Addr);

impl AsyncDNSResolver for Pinned {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _host: &'b str,
        _port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((self.0.host.as_str(), self.0.port))
                    .await?
                    .collect();
            Ok(Box::new(addrs.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// `SUBSCRIBE channel` on `conn` (a push-capable connection), within the command bound.
pub async fn subscribe(
    mut conn: MultiplexedConnection,
    channel: &str,
) -> Result<MultiplexedConnection, StateError> {
    crate::state::bounded(async {
        conn.subscribe(channel)
            .await
            .map_err(|e| StateError::Backend(e.to_string()))
    })
    .await?;
    Ok(conn)
}

/// Whether a subscribed connection still answers a PING (a subscription goes silent, not
/// closed, when its node is gone).
pub async fn answers_ping(conn: &mut MultiplexedConnection) -> bool {
    let ping: Result<::redis::Value, _> = crate::state::bounded(async {
        ::redis::cmd("PING")
            .query_async(conn)
            .await
            .map_err(|e| StateError::Backend(e.to_string()))
    })
    .await;
    ping.is_ok()
}
