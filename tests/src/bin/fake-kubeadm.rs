//! `fake-kubeadm`: accepts kubeadm's command lines (init, join, token create,
//! certs certificate-key, init phase upload-certs, reset, version) and does
//! what kubeadm does, over a real etcd and the fake apiserver. Install it as
//! `kubeadm` in a test's PATH or point kubeha's `kubernetes.kubeadm` at it.
//! Configuration: environment variables, see docs/testing.md "fake-kubeadm".

fn main() {
    let code = kubeha_tests::fake_kubeadm::main(std::env::args().collect());
    std::process::exit(code);
}
