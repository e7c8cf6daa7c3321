//! kubeha-ctl as a library: its command line and the human status table.

pub mod cli;
pub mod table;
