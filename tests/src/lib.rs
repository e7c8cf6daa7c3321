//! kubeha-tests
