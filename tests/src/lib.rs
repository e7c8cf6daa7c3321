//! kubeha-tests: the test bed (fakes, lab, end-to-end tests).

pub mod fake_apiserver;
