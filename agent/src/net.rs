//! The one UDP socket an agent talks to its peers on (`advertise_addr:gossip_port`).
//!
//! Every datagram in or out is an authenticated frame (kubeha_core::frame).
//! A reader task opens each incoming datagram, drops (and counts) what fails
//! authentication, is malformed, comes from another cluster or is a replay,
//! and hands the rest to gossip or to the lease/lock logic by channel. Nothing
//! unauthenticated ever reaches chitchat, and nothing is ever sent in reply to
//! a datagram that did not authenticate.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use kubeha_core::frame::{self, Channel, DropReason, Keyring, ReplayGuard};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::clock;
use crate::metrics::Metrics;

/// Frames older or newer than this (sender's vs receiver's wall clock) are
/// dropped as stale. Peers' clocks must agree within it (NTP does far better).
pub const REPLAY_WINDOW_MS: u64 = 60_000;
/// Bound on remembered nonces (a few minutes of traffic at 50 nodes).
const REPLAY_CAPACITY: usize = 500_000;

pub type Inbound = (SocketAddr, Vec<u8>);

pub struct FrameSocket {
    socket: UdpSocket,
    keyring: RwLock<Keyring>,
    tag: [u8; 8],
    replay: Mutex<ReplayGuard>,
    metrics: Arc<Metrics>,
}

impl FrameSocket {
    pub async fn bind(
        addr: SocketAddr,
        keyring: Keyring,
        cluster: &str,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<FrameSocket>> {
        let socket = UdpSocket::bind(addr).await.with_context(|| {
            format!("binding the gossip socket {addr}/udp (`advertise_addr`, `gossip_port`)")
        })?;
        Ok(Arc::new(FrameSocket {
            socket,
            keyring: RwLock::new(keyring),
            tag: frame::cluster_tag(cluster),
            replay: Mutex::new(ReplayGuard::new(REPLAY_WINDOW_MS, REPLAY_CAPACITY)),
            metrics,
        }))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Swap the keyring (SIGHUP after a key rotation step).
    pub fn set_keyring(&self, keyring: Keyring) {
        *self.keyring.write().expect("keyring lock") = keyring;
    }

    pub fn key_ids(&self) -> Vec<String> {
        self.keyring.read().expect("keyring lock").ids()
    }

    /// Seal and send. An oversize payload is dropped and counted, not an error
    /// (chitchat treats send errors as a broken transport).
    pub async fn send(
        &self,
        to: SocketAddr,
        channel: Channel,
        payload: &[u8],
    ) -> io::Result<usize> {
        let sealed = {
            let keyring = self.keyring.read().expect("keyring lock");
            frame::seal(
                &keyring,
                self.tag,
                channel,
                rand::random(),
                clock::unix_ms(),
                payload,
            )
        };
        let bytes = match sealed {
            Ok(b) => b,
            Err(reason) => {
                self.metrics.count_drop(reason);
                warn!(peer = %to, len = payload.len(), reason = %reason, "outgoing datagram dropped");
                return Ok(0);
            }
        };
        let n = self.socket.send_to(&bytes, to).await?;
        self.metrics.count_packet("out", channel, n);
        Ok(n)
    }

    /// Seal `payload` exactly as [`send`](Self::send) does, for a datagram
    /// someone else sends later: the VIP guardian's releases (guard.rs),
    /// sent if this agent dies. Valid for [`REPLAY_WINDOW_MS`] at receivers.
    pub fn seal(&self, channel: Channel, payload: &[u8]) -> Result<Vec<u8>, DropReason> {
        let keyring = self.keyring.read().expect("keyring lock");
        frame::seal(
            &keyring,
            self.tag,
            channel,
            rand::random(),
            clock::unix_ms(),
            payload,
        )
    }

    /// Open one datagram: authenticated payload and channel, or why not.
    fn open(&self, datagram: &[u8]) -> Result<(Channel, Vec<u8>), DropReason> {
        let opened = {
            let keyring = self.keyring.read().expect("keyring lock");
            frame::open(&keyring, self.tag, datagram)?
        };
        self.replay
            .lock()
            .expect("replay lock")
            .check(clock::unix_ms(), &opened)?;
        Ok((opened.channel, opened.payload))
    }

    /// Read datagrams until the socket breaks, dispatching by channel.
    pub fn spawn_reader(
        self: &Arc<Self>,
        gossip: mpsc::Sender<Inbound>,
        lease: mpsc::Sender<Inbound>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let (n, from) = match this.socket.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(e) if transient(&e) => continue,
                    Err(e) => {
                        warn!(error = %e, "gossip socket receive failed; stopping the reader");
                        return;
                    }
                };
                match this.open(&buf[..n]) {
                    Ok((channel, payload)) => {
                        this.metrics.count_packet("in", channel, n);
                        let tx = match channel {
                            Channel::Gossip => &gossip,
                            Channel::Lease => &lease,
                        };
                        if tx.try_send((from, payload)).is_err() {
                            debug!(peer = %from, ?channel, "inbound queue full, datagram dropped");
                        }
                    }
                    Err(reason) => {
                        this.metrics.count_drop(reason);
                        debug!(peer = %from, len = n, reason = %reason, "datagram dropped");
                    }
                }
            }
        })
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(libc::ENOBUFS)
}
