//! kubeha-vip
