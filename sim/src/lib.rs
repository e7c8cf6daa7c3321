//! kubeha-sim
