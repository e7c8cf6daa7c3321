//! The lease watchdog: the VIP comes off at the holder's deadline even when
//! the main loop is late.
//!
//! The core asks for `RemoveVip` at the instant its lease stops counting, and
//! the shell must carry that out within `actuation_guard` (docs/PROTOCOL.md,
//! "what the shell must do"). The main loop shares its thread with gossip, so
//! under heavy CPU load a tick can come late. This thread does nothing but
//! wait for the deadline the main loop arms after every step and, if the
//! deadline passes while still armed, remove the address itself. Removing is
//! always safe; if the lease had in fact just been renewed, the main loop
//! notices ([`LeaseWatchdog::take_fired`]) and puts the address back.

use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use kubeha_core::time::Time;
use tracing::{info, warn};

use crate::clock;

/// The main loop gets this much of a head start on each deadline.
const SLACK: Duration = Duration::from_millis(5);

#[derive(Default)]
struct State {
    deadline: Option<Time>,
    fired: bool,
    stop: bool,
}

pub struct LeaseWatchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl LeaseWatchdog {
    pub fn spawn(interface: String, address: IpAddr) -> LeaseWatchdog {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("lease-watchdog".into())
            .spawn(move || run(&s, &interface, address))
            .expect("spawning the lease watchdog");
        LeaseWatchdog { shared }
    }

    /// The instant the VIP must be gone unless re-armed, or `None`.
    pub fn arm(&self, deadline: Option<Time>) {
        let (m, cv) = &*self.shared;
        let mut st = m.lock().expect("watchdog lock");
        if st.deadline != deadline {
            st.deadline = deadline;
            cv.notify_one();
        }
    }

    /// Whether the watchdog removed the VIP since the last call.
    pub fn take_fired(&self) -> bool {
        std::mem::take(&mut self.shared.0.lock().expect("watchdog lock").fired)
    }
}

impl Drop for LeaseWatchdog {
    fn drop(&mut self) {
        let (m, cv) = &*self.shared;
        m.lock().expect("watchdog lock").stop = true;
        cv.notify_one();
    }
}

fn run(shared: &(Mutex<State>, Condvar), interface: &str, address: IpAddr) {
    let (m, cv) = shared;
    let mut st = m.lock().expect("watchdog lock");
    loop {
        if st.stop {
            return;
        }
        let Some(deadline) = st.deadline else {
            st = cv.wait(st).expect("watchdog lock");
            continue;
        };
        let due = deadline + SLACK;
        let now = clock::now();
        if now < due {
            st = cv
                .wait_timeout(st, due.saturating_since(now))
                .expect("watchdog lock")
                .0;
            continue;
        }
        st.deadline = None;
        drop(st);
        let late = now.saturating_since(deadline);
        match kubeha_vip::release_blocking(interface, address) {
            Ok(c) if c.is_changed() => warn!(
                late_ms = late.as_millis() as u64,
                vip = %address,
                "lease watchdog removed the VIP: the main loop missed the lease deadline"
            ),
            Ok(_) => info!(vip = %address, "lease watchdog: the VIP was already gone"),
            Err(e) => {
                warn!(vip = %address, interface, error = %e, "lease watchdog could not remove the VIP")
            }
        }
        st = m.lock().expect("watchdog lock");
        // Only now: the main loop puts the VIP back if its lease was renewed
        // meanwhile, and must not do so before this removal is complete.
        st.fired = true;
    }
}
