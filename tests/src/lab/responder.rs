//! A TCP responder inside a node's namespace: answers each connection with
//! the node's name and a newline, then closes. It stands in for what sits
//! behind the VIP (HAProxy, an apiserver), so the prober can tell which node
//! answered.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};

use super::error::{LabError, Result};
use super::netns;

pub struct Responder {
    node: String,
    bind: SocketAddr,
    sock: Arc<Socket>,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    /// Listen on `bind` inside `ns` (binding the VIP before the node holds
    /// it needs `ip_nonlocal_bind`, which the lab sets in node namespaces).
    pub fn start(ns: &str, node: &str, bind: SocketAddr) -> Result<Responder> {
        let sock = netns::run_in(ns, move || -> std::io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.bind(&bind.into())?;
            s.listen(1024)?;
            Ok(s)
        })?
        .map_err(|source| LabError::Netns {
            ns: ns.to_string(),
            what: "responder bind",
            source: std::io::Error::new(source.kind(), format!("{bind}: {source}")),
        })?;
        let sock = Arc::new(sock);
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let reply = format!("{node}\n").into_bytes();
        let (s2, stop2, served2) = (sock.clone(), stop.clone(), served.clone());
        let thread = std::thread::Builder::new()
            .name(format!("responder-{node}"))
            .spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    match s2.accept() {
                        Ok((c, _)) => {
                            let mut c: std::net::TcpStream = c.into();
                            let _ = c.write_all(&reply);
                            served2.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                        // EINVAL after `shutdown` in `stop`; anything else
                        // would spin, so stop serving as well.
                        Err(_) => break,
                    }
                }
            })
            .map_err(|source| LabError::Netns {
                ns: ns.to_string(),
                what: "spawn responder thread",
                source,
            })?;
        Ok(Responder {
            node: node.to_string(),
            bind,
            sock,
            stop,
            served,
            thread: Some(thread),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn bind_addr(&self) -> SocketAddr {
        self.bind
    }

    /// Connections answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Stop answering: the listening socket is closed when this returns, so
    /// new connections are refused, as when the process behind the VIP dies.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocked accept (it fails with EINVAL).
        let _ = self.sock.shutdown(std::net::Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shutdown();
    }
}
