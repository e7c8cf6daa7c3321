//! Prometheus metrics (`/metrics` on `metrics_addr`), all prefixed `kubeha_`.
//!
//! Labels carry node names, states and reasons only: never a key, token or
//! payload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kubeha_core::frame::{Channel, DropReason};
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

pub struct Metrics {
    registry: Registry,
    pub members: IntGaugeVec,
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub dropped: IntCounterVec,
    pub vip_holder: IntGaugeVec,
    pub vip_held: IntGauge,
    pub failovers: IntCounter,
    pub lease_renewals: IntCounter,
    pub quorum_reachable: IntGauge,
    pub voter_mismatch: IntGauge,
    pub haproxy_reloads: IntCounterVec,
    pub kubeadm_runs: IntCounterVec,
}

fn channel_label(c: Channel) -> &'static str {
    match c {
        Channel::Gossip => "gossip",
        Channel::Lease => "lease",
    }
}

impl Metrics {
    pub fn new(node: &str, version: &str) -> Arc<Metrics> {
        let registry = Registry::new_custom(Some("kubeha".into()), None)
            .expect("static registry options are valid");
        let m = Metrics {
            members: IntGaugeVec::new(
                Opts::new("members", "Members by state (alive, dead, left), one per node name"),
                &["state"],
            )
            .unwrap(),
            packets: IntCounterVec::new(
                Opts::new("gossip_packets_total", "Authenticated datagrams sent and received"),
                &["direction", "channel"],
            )
            .unwrap(),
            bytes: IntCounterVec::new(
                Opts::new("gossip_bytes_total", "Bytes on the wire, frames included"),
                &["direction", "channel"],
            )
            .unwrap(),
            dropped: IntCounterVec::new(
                Opts::new(
                    "gossip_dropped_total",
                    "Datagrams dropped, by reason (malformed, other_cluster, auth, stale, replay, oversize, bad_payload, tier, misaddressed, spoofed, bad_name, unknown_peer)",
                ),
                &["reason"],
            )
            .unwrap(),
            vip_holder: IntGaugeVec::new(
                Opts::new("vip_holder", "1 for the node this agent sees holding the VIP"),
                &["node"],
            )
            .unwrap(),
            vip_held: IntGauge::new("vip_held", "1 while this node holds the VIP").unwrap(),
            failovers: IntCounter::new(
                "vip_failovers_total",
                "Times this node took the VIP over",
            )
            .unwrap(),
            lease_renewals: IntCounter::new(
                "lease_renewals_total",
                "VIP lease renewals sent by this node while holding",
            )
            .unwrap(),
            quorum_reachable: IntGauge::new(
                "quorum_reachable_voters",
                "Voters this node can reach",
            )
            .unwrap(),
            voter_mismatch: IntGauge::new(
                "voter_mismatch_members",
                "Members whose voter list differs from this node's",
            )
            .unwrap(),
            haproxy_reloads: IntCounterVec::new(
                Opts::new("haproxy_reloads_total", "HAProxy config applications by outcome"),
                &["outcome"],
            )
            .unwrap(),
            kubeadm_runs: IntCounterVec::new(
                Opts::new("kubeadm_runs_total", "kubeadm runs by command and outcome"),
                &["command", "outcome"],
            )
            .unwrap(),
            registry,
        };
        let info = IntGaugeVec::new(
            Opts::new("build_info", "Agent version and node name"),
            &["version", "node"],
        )
        .unwrap();
        info.with_label_values(&[version, node]).set(1);
        for c in [
            Box::new(info) as Box<dyn prometheus::core::Collector>,
            Box::new(m.members.clone()),
            Box::new(m.packets.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.dropped.clone()),
            Box::new(m.vip_holder.clone()),
            Box::new(m.vip_held.clone()),
            Box::new(m.failovers.clone()),
            Box::new(m.lease_renewals.clone()),
            Box::new(m.quorum_reachable.clone()),
            Box::new(m.voter_mismatch.clone()),
            Box::new(m.haproxy_reloads.clone()),
            Box::new(m.kubeadm_runs.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        // Zero series exist from the start, so rates work and absent means broken.
        for r in DropReason::ALL {
            m.dropped.with_label_values(&[r.as_str()]);
        }
        for s in ["alive", "dead", "left"] {
            m.members.with_label_values(&[s]);
        }
        for d in ["in", "out"] {
            for c in [Channel::Gossip, Channel::Lease] {
                m.packets.with_label_values(&[d, channel_label(c)]);
                m.bytes.with_label_values(&[d, channel_label(c)]);
            }
        }
        Arc::new(m)
    }

    pub fn count_packet(&self, direction: &str, channel: Channel, bytes: usize) {
        let c = channel_label(channel);
        self.packets.with_label_values(&[direction, c]).inc();
        self.bytes
            .with_label_values(&[direction, c])
            .inc_by(bytes as u64);
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.dropped.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec does not fail");
        buf
    }
}

/// Bind the metrics listener (before anything else runs, so a bad address
/// fails the start) and serve `/metrics` from a task.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding `metrics_addr` {addr}"))?;
    tokio::spawn(async move {
        loop {
            let (mut stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let res = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut head = Vec::with_capacity(512);
                    let mut buf = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
                    let (status, ctype, body) = if line.starts_with(b"GET /metrics ")
                        || line.starts_with(b"GET /metrics?")
                    {
                        ("200 OK", "text/plain; version=0.0.4", metrics.render())
                    } else {
                        ("404 Not Found", "text/plain", b"try /metrics\n".to_vec())
                    };
                    let hdr = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream.write_all(hdr.as_bytes()).await?;
                    stream.write_all(&body).await?;
                    stream.shutdown().await
                })
                .await;
                if let Ok(Err(e)) = res {
                    debug!(%peer, error = %e, "metrics request failed");
                }
            });
        }
    });
    Ok(())
}
