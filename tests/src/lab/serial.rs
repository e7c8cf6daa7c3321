//! The lab lock: labs (and their timing) do not compete for the CPU.

use super::*;

/// Holds an exclusive lock on `/run/kubeha-lab/.lock` while alive: lab
/// tests take it so that labs (and their timing) do not compete for the CPU,
/// across test binaries too.
pub struct SerialGuard {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Take the lab lock (blocks until free).
pub fn serial() -> Result<SerialGuard> {
    let root = Path::new(RUN_ROOT);
    mkdir(root)?;
    let p = root.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| LabError::io(&p, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(|f| SerialGuard { _lock: f })
        .map_err(|(_, e)| LabError::io(&p, e.into()))
}
