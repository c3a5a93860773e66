//! uring-twins (issue 22 item 3): two single-threaded HTTP/1.1 keep-alive reverse proxies that
//! share one proxy (`proxy`) and differ only in the I/O runtime: tokio current_thread on epoll
//! (`rt_tokio`, binary `epoll-twin`) and monoio on io_uring (`rt_monoio`, binary `uring-twin`).
//! `bench/uring-twins/run` measures them against each other, autolb and HAProxy.

pub mod args;
pub mod proxy;
pub mod rt_monoio;
pub mod rt_tokio;
