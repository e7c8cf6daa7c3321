//! kubeha-agent
