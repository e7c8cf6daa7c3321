//! kubeha-tests: the test bed of kubeha.
//!
//! - [`lab`]: droplets as network namespaces on a bridge (`kubeha-lab`),
//!   with a TCP responder, a client prober, a VIP sampler, keepalived as the
//!   baseline, and the failover benchmark.
//! - [`droplet`]: real droplets: a debootstrapped Debian booted with systemd-nspawn
//!   in a network namespace, the built .deb installed with apt.
//! - [`lab_haproxy`]: HAProxy in the lab: fake apiserver processes in node
//!   namespaces, TLS from the client namespace, HAProxy's sockets, metrics.
//! - [`do_standin`]: a stand-in for DigitalOcean's Reserved IP API and droplet
//!   metadata service, with injected failures.
//! - [`fake_apiserver`]: a TLS apiserver stand-in (`/healthz`, `/readyz`, `/livez`).
//! - [`fake_apiserver`]: a TLS apiserver stand-in (`/healthz`, `/readyz`, `/livez`,
//!   and with an etcd backend the Node API).
//! - [`fake_kubeadm`]: `fake-kubeadm`, kubeadm's CLI over a real etcd.

pub mod do_standin;
pub mod droplet;
pub mod fake_apiserver;
pub mod fake_kubeadm;
pub mod lab;
pub mod lab_haproxy;
