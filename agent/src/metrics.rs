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
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
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
    pub metrics_rejected: IntCounter,
    /// Cloud VIP provider API calls (`digitalocean`), by call and outcome.
    pub vip_cloud_calls: IntCounterVec,
    pub vip_cloud_seconds: HistogramVec,
    /// Leases let go because the cloud assignment failed, by reason.
    pub vip_cloud_faults: IntCounterVec,
    /// 1 while standing aside after a cloud fault.
    pub vip_cloud_standing_aside: IntGauge,
    /// Sizes of gossip-channel datagrams on the wire (frames included).
    pub gossip_datagram_bytes: HistogramVec,
    /// The largest gossip-channel datagram seen, by direction.
    pub gossip_datagram_max: IntGaugeVec,
    /// The encoded size of this node's last gossip digest (a SYN's
    /// chitchat encoding, before compression and framing).
    pub gossip_digest_bytes: IntGauge,
    /// Gossip messages by what the transport did with them: `compressed`,
    /// `fragmented`, `paced` (a SYN left out to hold this node's gossip rate).
    pub gossip_messages: IntCounterVec,
}

/// The `digitalocean` provider reports each API call here.
impl kubeha_vip::digitalocean::ApiObserver for Metrics {
    fn observe(&self, call: &'static str, outcome: &'static str, latency: Duration) {
        self.vip_cloud_calls
            .with_label_values(&[call, outcome])
            .inc();
        self.vip_cloud_seconds
            .with_label_values(&[call])
            .observe(latency.as_secs_f64());
    }
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
                Opts::new(
                    "kubeadm_runs_total",
                    "kubeadm and kubectl runs by operation (init, join, reset, ...) and outcome",
                ),
                &["op", "outcome"],
            )
            .unwrap(),
            metrics_rejected: IntCounter::new(
                "metrics_connections_rejected_total",
                "/metrics connections closed unanswered because too many were open",
            )
            .unwrap(),
            vip_cloud_calls: IntCounterVec::new(
                Opts::new(
                    "vip_cloud_calls_total",
                    "Cloud VIP provider API calls by call (metadata, get_reserved_ip, assign, get_action) and outcome",
                ),
                &["call", "outcome"],
            )
            .unwrap(),
            vip_cloud_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "vip_cloud_call_seconds",
                    "Latency of cloud VIP provider API calls",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["call"],
            )
            .unwrap(),
            vip_cloud_faults: IntCounterVec::new(
                Opts::new(
                    "vip_cloud_faults_total",
                    "VIP leases let go because the cloud assignment failed (reason: timeout, permanent)",
                ),
                &["reason"],
            )
            .unwrap(),
            vip_cloud_standing_aside: IntGauge::new(
                "vip_cloud_standing_aside",
                "1 while this node is no VIP candidate after a cloud assignment fault",
            )
            .unwrap(),
            gossip_datagram_bytes: HistogramVec::new(
                HistogramOpts::new(
                    "gossip_datagram_bytes",
                    "Sizes of gossip datagrams on the wire, frames included",
                )
                .buckets(vec![
                    256.0, 1024.0, 4096.0, 8192.0, 16384.0, 32768.0, 49152.0, 65507.0,
                ]),
                &["direction"],
            )
            .unwrap(),
            gossip_datagram_max: IntGaugeVec::new(
                Opts::new(
                    "gossip_datagram_max_bytes",
                    "The largest gossip datagram sent or received since start, frame included",
                ),
                &["direction"],
            )
            .unwrap(),
            gossip_digest_bytes: IntGauge::new(
                "gossip_digest_bytes",
                "Encoded size of this node's last gossip digest (before compression and framing)",
            )
            .unwrap(),
            gossip_messages: IntCounterVec::new(
                Opts::new(
                    "gossip_messages_total",
                    "Gossip messages by transport action: compressed, fragmented, paced (a SYN left out to hold the gossip rate)",
                ),
                &["action"],
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
            Box::new(m.metrics_rejected.clone()),
            Box::new(m.vip_cloud_calls.clone()),
            Box::new(m.vip_cloud_seconds.clone()),
            Box::new(m.vip_cloud_faults.clone()),
            Box::new(m.vip_cloud_standing_aside.clone()),
            Box::new(m.gossip_datagram_bytes.clone()),
            Box::new(m.gossip_datagram_max.clone()),
            Box::new(m.gossip_digest_bytes.clone()),
            Box::new(m.gossip_messages.clone()),
        ] {
            m.registry.register(c).expect("metric names are unique");
        }
        // Zero series exist from the start, so rates work and absent means broken.
        for r in DropReason::ALL {
            m.dropped.with_label_values(&[r.as_str()]);
        }
        for r in ["timeout", "permanent"] {
            m.vip_cloud_faults.with_label_values(&[r]);
        }
        for s in ["alive", "dead", "left"] {
            m.members.with_label_values(&[s]);
        }
        for d in ["in", "out"] {
            for c in [Channel::Gossip, Channel::Lease] {
                m.packets.with_label_values(&[d, channel_label(c)]);
                m.bytes.with_label_values(&[d, channel_label(c)]);
            }
            m.gossip_datagram_bytes.with_label_values(&[d]);
            m.gossip_datagram_max.with_label_values(&[d]);
        }
        for a in ["compressed", "fragmented", "paced"] {
            m.gossip_messages.with_label_values(&[a]);
        }
        Arc::new(m)
    }

    pub fn count_packet(&self, direction: &str, channel: Channel, bytes: usize) {
        let c = channel_label(channel);
        self.packets.with_label_values(&[direction, c]).inc();
        self.bytes
            .with_label_values(&[direction, c])
            .inc_by(bytes as u64);
        if channel == Channel::Gossip {
            self.gossip_datagram_bytes
                .with_label_values(&[direction])
                .observe(bytes as f64);
            let max = self.gossip_datagram_max.with_label_values(&[direction]);
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            if bytes > max.get() {
                max.set(bytes);
            }
        }
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

/// At most this many `/metrics` connections are served at once; more are
/// closed at once. A scraper needs one; this leaves room for a few, and
/// bounds the descriptors a flood of connections can take from the agent
/// (which needs some to add and remove the VIP and to persist votes).
pub const MAX_CONNECTIONS: usize = 16;
/// A connection gets this long, in all, to send its request and take the
/// answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);

/// Bounds of the `/metrics` server.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            timeout: CONNECTION_TIMEOUT,
        }
    }
}

/// Bind the metrics listener (before anything else runs, so a bad address
/// fails the start) and serve `/metrics` from a task. Returns the bound
/// address.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<SocketAddr> {
    serve_with(addr, metrics, Limits::default()).await
}

pub async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    limits: Limits,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding `metrics_addr` {addr}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("`metrics_addr` {addr}"))?;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE/ENFILE leave the connection in the backlog; wait
                    // instead of spinning on it.
                    warn!(addr = %bound, error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.metrics_rejected.inc();
                debug!(%peer, "too many metrics connections; closed");
                drop(stream);
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let res = tokio::time::timeout(limits.timeout, answer(stream, &metrics)).await;
                match res {
                    Ok(Err(e)) => debug!(%peer, error = %e, "metrics request failed"),
                    Err(_) => debug!(%peer, "metrics connection timed out"),
                    Ok(Ok(())) => {}
                }
            });
        }
    });
    Ok(bound)
}

async fn answer(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
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
    let (status, ctype, body) =
        if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET /metrics?") {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_vip::digitalocean::ApiObserver;

    /// Sockets of this process whose local port is `port`, listener
    /// excluded: the server's side of accepted connections. Exact even
    /// while other tests open descriptors.
    fn server_sockets(port: u16) -> usize {
        let mine: std::collections::BTreeSet<String> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter_map(|l| {
                let l = l.to_string_lossy().into_owned();
                Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
            })
            .collect();
        let tcp = std::fs::read_to_string("/proc/self/net/tcp").unwrap();
        tcp.lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let local_port = f[1].rsplit(':').next().unwrap();
                u16::from_str_radix(local_port, 16).unwrap() == port
                    && f[3] != "0A"
                    && mine.contains(f[9])
            })
            .count()
    }

    async fn scrape(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// A flood of idle connections holds at most `max_connections`
    /// descriptors of the server, each for at most `timeout`; scrapes work
    /// again once they time out, and while flooded the process can still
    /// open descriptors (what VIP removal and persisting need).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_connections_is_bounded_and_scrapes_recover() {
        let m = Metrics::new("n", "0");
        let limits = Limits {
            max_connections: 4,
            // Longer than the flood takes on a loaded machine, so that no
            // admitted connection frees its slot before all are in.
            timeout: Duration::from_secs(3),
        };
        let addr = serve_with("127.0.0.1:0".parse().unwrap(), m.clone(), limits)
            .await
            .unwrap();
        assert!(scrape(addr).await.unwrap().contains("kubeha_build_info"));
        const FLOOD: usize = 300;
        let mut idle = Vec::new();
        for _ in 0..FLOOD {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Wait until the server has accepted (and closed) all but the
        // admitted ones: rejected counts FLOOD - 4.
        let start = std::time::Instant::now();
        while m.metrics_rejected.get() < (FLOOD - 4) as u64 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "rejected only {}",
                m.metrics_rejected.get()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let held_by_server = server_sockets(addr.port());
        assert!(
            held_by_server <= limits.max_connections,
            "the server holds {held_by_server} descriptors for {FLOOD} idle connections"
        );
        // A descriptor for other work (a netlink socket, the state file).
        assert!(std::fs::File::open("/proc/self/stat").is_ok());
        // The admitted idle ones time out; then a scrape is answered.
        let start = std::time::Instant::now();
        let body = loop {
            match scrape(addr).await {
                Ok(b) if b.starts_with("HTTP/1.1 200") => break b,
                _ => {
                    assert!(
                        start.elapsed() < Duration::from_secs(20),
                        "no scrape answered after the flood"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        assert!(body.contains("kubeha_metrics_connections_rejected_total"));
        drop(idle);
    }

    #[tokio::test]
    async fn other_paths_are_404() {
        let addr = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Metrics::new("n", "0"),
            Limits::default(),
        )
        .await
        .unwrap();
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    }

    #[test]
    fn cloud_calls_are_counted_by_call_and_outcome() {
        let m = Metrics::new("lb-0", "0.1.0");
        m.observe("assign", "ok", Duration::from_millis(300));
        m.observe("assign", "busy", Duration::from_millis(40));
        m.observe("assign", "busy", Duration::from_millis(40));
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("kubeha_vip_cloud_calls_total{call=\"assign\",outcome=\"busy\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("kubeha_vip_cloud_calls_total{call=\"assign\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kubeha_vip_cloud_call_seconds_bucket{call=\"assign\",le=\"0.5\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("kubeha_vip_cloud_call_seconds_bucket{call=\"assign\",le=\"0.25\"} 2"),
            "{text}"
        );
    }
}
