//! Ctrl-C and SIGTERM: tear down every lab this process owns, then exit.
//!
//! [`install`] blocks SIGINT, SIGTERM and SIGHUP in the calling thread (call
//! it first thing in `main`, before any other thread exists, so every thread
//! inherits the mask) and waits for them on a thread of its own. Children
//! get a clean mask (see `netns::child_setup`; std resets it as well).

use std::sync::{Mutex, Weak};

use super::Shared;

static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

pub(crate) fn register(sh: Weak<Shared>) {
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|w| w.strong_count() > 0);
    live.push(sh);
}

type Hook = Box<dyn Fn() + Send>;
static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Run `f` before the labs are torn down on a signal (e.g. power off the
/// droplets booted in the lab's namespaces).
pub fn on_teardown(f: Hook) {
    HOOKS.lock().unwrap_or_else(|e| e.into_inner()).push(f);
}

/// Tear down every lab this process owns (also called by the signal thread).
pub fn teardown_all() {
    for h in HOOKS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        h();
    }
    let live: Vec<_> = LIVE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for sh in live {
        sh.teardown();
    }
}

/// Install the handler. Returns an error if signals cannot be blocked.
pub fn install() -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("lab-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("kubeha-lab: got {sig}, tearing down");
                teardown_all();
                std::process::exit(128 + sig as i32);
            }
        })?;
    Ok(())
}
