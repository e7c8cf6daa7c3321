//! `kubeha-guardian`: the VIP guardian kubeha-agent starts beside itself
//! (agent/src/guardian.rs).

fn main() -> std::process::ExitCode {
    kubeha_agent::guardian::main()
}
