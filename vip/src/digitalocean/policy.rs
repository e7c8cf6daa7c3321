//! The pure half of the DigitalOcean provider: how an API answer is
//! classified, how long to wait before the next try, and the assignment state
//! machine. No I/O and no clock: time comes in as a [`Duration`] since an
//! arbitrary epoch (monotonic) and, for `ratelimit-reset`, as Unix seconds.

use std::fmt;
use std::time::Duration;

pub use kubeha_core::lease::Assignment;

/// `ratelimit-*` and `retry-after` headers of one answer. DigitalOcean's
/// limits are 5 000 requests per hour and 250 per minute per token;
/// `ratelimit-reset` is the Unix time at which the oldest counted request
/// expires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    pub reset_unix: Option<u64>,
    /// `retry-after` in seconds (the delta form; an HTTP date is ignored).
    pub retry_after: Option<Duration>,
}

impl RateLimit {
    /// From header (name, value) pairs; names compared case-insensitively.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut rl = RateLimit::default();
        for (name, value) in headers {
            let num = value.trim().parse::<u64>().ok();
            match name.to_ascii_lowercase().as_str() {
                "ratelimit-limit" => rl.limit = num,
                "ratelimit-remaining" => rl.remaining = num,
                "ratelimit-reset" => rl.reset_unix = num,
                "retry-after" => rl.retry_after = num.map(Duration::from_secs),
                _ => {}
            }
        }
        rl
    }
}

/// How a failed call is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 401, 403, 404, other 4xx, a bad token file, an answer we cannot
    /// parse: trying again at once will not help. Retried slowly, since an
    /// operator may fix the token or the IP meanwhile.
    Permanent,
    /// 422 (or 409): the Reserved IP or the droplet has a pending event,
    /// typically the previous failover's action. Retried every few seconds.
    Busy,
    /// 429: wait as the server says.
    RateLimited,
    /// 5xx, 408, a timeout, a refused or reset connection.
    Transient,
}

impl Class {
    pub fn of_status(status: u16) -> Class {
        match status {
            422 | 409 => Class::Busy,
            429 => Class::RateLimited,
            408 | 500..=599 => Class::Transient,
            _ => Class::Permanent,
        }
    }
}

/// Retry every 3 s while the IP is busy: DigitalOcean's own keepalived
/// recipe retries `assign` 10 times, 3 s apart.
pub const BUSY_RETRY: Duration = Duration::from_secs(3);
/// Back-off for transient failures: 1 s, 2 s, 4 s ... up to this.
pub const TRANSIENT_MAX: Duration = Duration::from_secs(30);
/// Permanent failures are retried this slowly (a fixed token file, a
/// recreated IP), so a node that could not assign does not stay stuck.
pub const PERMANENT_RETRY: Duration = Duration::from_secs(60);
/// 429 without usable headers.
pub const RATE_LIMITED_DEFAULT: Duration = Duration::from_secs(60);
/// After this many failed attempts in a row the state is `failed` (the
/// attempts go on).
pub const FAILED_AFTER: u32 = 10;

/// How long to wait before trying again. `attempt` counts the failures in a
/// row (1 for the first); `now_unix` is the wall clock for `ratelimit-reset`.
pub fn retry_delay(class: Class, attempt: u32, rl: &RateLimit, now_unix: u64) -> Duration {
    let base = match class {
        Class::Permanent => PERMANENT_RETRY,
        Class::Busy => BUSY_RETRY,
        Class::Transient => {
            let exp = attempt.saturating_sub(1).min(16);
            Duration::from_secs(1u64 << exp).min(TRANSIENT_MAX)
        }
        Class::RateLimited => match (rl.retry_after, rl.reset_unix) {
            (Some(after), _) => after.max(Duration::from_secs(1)),
            (None, Some(reset)) => {
                Duration::from_secs(reset.saturating_sub(now_unix).clamp(1, 3600))
            }
            (None, None) => RATE_LIMITED_DEFAULT,
        },
    };
    // Whatever failed, an exhausted quota means waiting for the reset.
    if class != Class::RateLimited
        && rl.remaining == Some(0)
        && let Some(reset) = rl.reset_unix
    {
        return base.max(Duration::from_secs(
            reset.saturating_sub(now_unix).min(3600),
        ));
    }
    base
}

/// An action's `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionStatus {
    InProgress,
    Completed,
    Errored,
    Other(String),
}

impl ActionStatus {
    pub fn parse(s: &str) -> ActionStatus {
        match s {
            "in-progress" => ActionStatus::InProgress,
            "completed" => ActionStatus::Completed,
            "errored" => ActionStatus::Errored,
            other => ActionStatus::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ActionStatus::InProgress => "in-progress",
            ActionStatus::Completed => "completed",
            ActionStatus::Errored => "errored",
            ActionStatus::Other(s) => s,
        }
    }
}

/// An action as far as we follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub id: u64,
    pub status: ActionStatus,
}

/// A failed call, as the state machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub class: Class,
    /// Names the call and the status, never the token.
    pub message: String,
    pub rate: RateLimit,
}

/// The calls the worker can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// The droplet id from the metadata service.
    Metadata,
    /// `GET /v2/reserved_ips/{ip}`: to whom it is assigned now.
    Check,
    /// `POST /v2/reserved_ips/{ip}/actions` `{"type":"assign",...}`.
    Assign,
    /// `GET /v2/reserved_ips/{ip}/actions/{id}`.
    Poll(u64),
}

/// What `GET /v2/reserved_ips/{ip}` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    /// The droplet the IP is assigned to now.
    pub droplet: Option<u64>,
    /// `locked`: an action on the IP is in progress (it may move the IP
    /// when it completes).
    pub locked: bool,
}

impl Current {
    pub fn unlocked(droplet: Option<u64>) -> Current {
        Current {
            droplet,
            locked: false,
        }
    }
}

/// What happened, fed to [`Assigner::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start,
    Woke,
    Metadata(Result<u64, Failure>),
    Check(Result<Current, Failure>),
    Assign(Result<Action, Failure>),
    Poll(Result<Action, Failure>),
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Do(Call),
    /// Sleep until this time (same epoch as `now`), then feed [`Event::Woke`].
    SleepUntil(Duration),
    /// Assigned to this droplet: nothing more to do.
    Done,
}

/// The observable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Pending,
    Assigned,
    Failed,
}

impl Assigner {
    /// The view the lease takes as an input (`Input::VipAssignment`).
    pub fn assignment(&self) -> Assignment {
        match self.state {
            State::Idle => Assignment::Idle,
            State::Assigned => Assignment::Assigned,
            _ if self.permanent => Assignment::Failing { permanent: true },
            State::Failed => Assignment::Failing { permanent: false },
            // Retrying a transient failure, before `FAILED_AFTER`: the lease
            // treats it as pending (only the time bound counts).
            State::Pending => Assignment::Pending,
        }
    }
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Pending => "pending",
            State::Assigned => "assigned",
            State::Failed => "failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Timing knobs of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between two polls of an in-progress action.
    pub poll_interval: Duration,
    /// An action still in progress after this is given up on: the IP is
    /// checked and assigned again (which waits while the action blocks it).
    pub action_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll_interval: Duration::from_secs(1),
            action_timeout: Duration::from_secs(120),
        }
    }
}

/// Drives one assignment of the Reserved IP to this droplet: metadata (once),
/// check, assign, follow the action; every failure is retried after
/// [`retry_delay`]. Pure: the caller makes the calls and sleeps.
#[derive(Debug, Clone)]
pub struct Assigner {
    timing: Timing,
    pub state: State,
    /// Why it is not assigned (yet), if something failed.
    pub reason: Option<String>,
    pub droplet_id: Option<u64>,
    /// The droplet the IP was last seen on (check, or our completed action).
    pub assigned_to: Option<u64>,
    pub last_action: Option<Action>,
    /// When the last action was started (the `assign` call returned it).
    pub last_action_at: Option<Duration>,
    /// Failures in a row.
    pub failures: u32,
    /// The last call failed with a permanent answer (401, 403, 404, ...):
    /// retrying will not help until someone fixes the token or the IP.
    pub permanent: bool,
    following: Option<(u64, Duration)>,
    after_sleep: Option<Call>,
}

impl Assigner {
    pub fn new(timing: Timing) -> Self {
        Assigner {
            timing,
            state: State::Idle,
            reason: None,
            droplet_id: None,
            assigned_to: None,
            last_action: None,
            last_action_at: None,
            failures: 0,
            permanent: false,
            following: None,
            after_sleep: None,
        }
    }

    /// Feed one event at `now`; `now_unix` only matters for rate limits.
    pub fn step(&mut self, now: Duration, now_unix: u64, event: Event) -> Cmd {
        match event {
            Event::Start => {
                self.state = State::Pending;
                self.failures = 0;
                self.permanent = false;
                self.following = None;
                self.after_sleep = None;
                self.reason = None;
                Cmd::Do(self.first_call())
            }
            Event::Woke => match self.after_sleep.take() {
                Some(call) => Cmd::Do(call),
                None => Cmd::Do(self.first_call()),
            },
            Event::Metadata(Ok(id)) => {
                self.droplet_id = Some(id);
                self.ok();
                Cmd::Do(Call::Check)
            }
            Event::Metadata(Err(f)) => self.fail(now, now_unix, f, Call::Metadata),
            Event::Check(Ok(current)) => {
                self.ok();
                self.assigned_to = current.droplet;
                if current.droplet.is_some() && current.droplet == self.droplet_id {
                    if current.locked {
                        // Ours now, but an action is in progress: another
                        // droplet's assign (started by the previous holder
                        // before it lost the lease) that moves the IP away
                        // when it completes. Look again, do not stop here.
                        self.after_sleep = Some(Call::Check);
                        return Cmd::SleepUntil(now + self.timing.poll_interval);
                    }
                    self.assigned()
                } else {
                    Cmd::Do(Call::Assign)
                }
            }
            Event::Check(Err(f)) => self.fail(now, now_unix, f, Call::Check),
            Event::Assign(Ok(action)) => {
                self.ok();
                self.last_action_at = Some(now);
                self.following = Some((action.id, now));
                self.on_action(now, action)
            }
            // After a failed assign look again: a lost answer may have
            // assigned it, or the blocking action may be gone.
            Event::Assign(Err(f)) => self.fail(now, now_unix, f, Call::Check),
            Event::Poll(Ok(action)) => {
                self.ok();
                self.on_action(now, action)
            }
            Event::Poll(Err(f)) => {
                let next = match (f.class, self.following) {
                    (Class::Permanent, _) | (_, None) => Call::Check,
                    (_, Some((id, _))) => Call::Poll(id),
                };
                self.fail(now, now_unix, f, next)
            }
        }
    }

    fn first_call(&self) -> Call {
        if self.droplet_id.is_some() {
            Call::Check
        } else {
            Call::Metadata
        }
    }

    fn ok(&mut self) {
        self.permanent = false;
        if self.state != State::Assigned {
            self.state = State::Pending;
        }
    }

    fn assigned(&mut self) -> Cmd {
        self.state = State::Assigned;
        self.reason = None;
        self.failures = 0;
        self.permanent = false;
        self.following = None;
        self.assigned_to = self.droplet_id;
        Cmd::Done
    }

    fn on_action(&mut self, now: Duration, action: Action) -> Cmd {
        let id = action.id;
        let status = action.status.clone();
        self.last_action = Some(action);
        match status {
            ActionStatus::Completed => self.assigned(),
            ActionStatus::Errored => {
                self.following = None;
                let f = Failure {
                    class: Class::Transient,
                    message: format!("assign action {id} errored"),
                    rate: RateLimit::default(),
                };
                self.fail(now, 0, f, Call::Check)
            }
            ActionStatus::InProgress | ActionStatus::Other(_) => {
                let since = self.following.map(|(_, s)| s).unwrap_or(now);
                if now.saturating_sub(since) >= self.timing.action_timeout {
                    self.following = None;
                    let f = Failure {
                        class: Class::Busy,
                        message: format!(
                            "assign action {id} still {} after {}s",
                            status.as_str(),
                            self.timing.action_timeout.as_secs()
                        ),
                        rate: RateLimit::default(),
                    };
                    return self.fail(now, 0, f, Call::Check);
                }
                self.after_sleep = Some(Call::Poll(id));
                Cmd::SleepUntil(now + self.timing.poll_interval)
            }
        }
    }

    fn fail(&mut self, now: Duration, now_unix: u64, f: Failure, next: Call) -> Cmd {
        self.failures = self.failures.saturating_add(1);
        self.permanent = f.class == Class::Permanent;
        let delay = retry_delay(f.class, self.failures, &f.rate, now_unix);
        self.state = if f.class == Class::Permanent || self.failures >= FAILED_AFTER {
            State::Failed
        } else {
            State::Pending
        };
        self.reason = Some(format!(
            "{} (attempt {}, next in {}s)",
            f.message,
            self.failures,
            delay.as_secs_f64().ceil() as u64
        ));
        self.after_sleep = Some(next);
        Cmd::SleepUntil(now + delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn failure(class: Class) -> Failure {
        Failure {
            class,
            message: "POST /v2/reserved_ips/203.0.113.7/actions: 503".into(),
            rate: RateLimit::default(),
        }
    }

    fn action(id: u64, status: ActionStatus) -> Action {
        Action { id, status }
    }

    #[test]
    fn headers_are_parsed_case_insensitively() {
        let rl = RateLimit::from_headers([
            ("RateLimit-Limit", "5000"),
            ("ratelimit-remaining", " 4816 "),
            ("Ratelimit-Reset", "1444931833"),
            ("Retry-After", "7"),
            ("content-type", "application/json"),
        ]);
        assert_eq!(
            rl,
            RateLimit {
                limit: Some(5000),
                remaining: Some(4816),
                reset_unix: Some(1444931833),
                retry_after: Some(S(7)),
            }
        );
        // An HTTP-date retry-after is not a number: ignored, not a panic.
        let rl = RateLimit::from_headers([("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(rl.retry_after, None);
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(Class::of_status(401), Class::Permanent);
        assert_eq!(Class::of_status(403), Class::Permanent);
        assert_eq!(Class::of_status(404), Class::Permanent);
        assert_eq!(Class::of_status(422), Class::Busy);
        assert_eq!(Class::of_status(429), Class::RateLimited);
        assert_eq!(Class::of_status(500), Class::Transient);
        assert_eq!(Class::of_status(503), Class::Transient);
        assert_eq!(Class::of_status(408), Class::Transient);
    }

    #[test]
    fn delays_follow_class_attempt_and_headers() {
        let none = RateLimit::default();
        assert_eq!(retry_delay(Class::Transient, 1, &none, 0), S(1));
        assert_eq!(retry_delay(Class::Transient, 2, &none, 0), S(2));
        assert_eq!(retry_delay(Class::Transient, 4, &none, 0), S(8));
        assert_eq!(retry_delay(Class::Transient, 40, &none, 0), TRANSIENT_MAX);
        assert_eq!(retry_delay(Class::Busy, 9, &none, 0), S(3));
        assert_eq!(retry_delay(Class::Permanent, 1, &none, 0), S(60));
        assert_eq!(retry_delay(Class::RateLimited, 1, &none, 0), S(60));

        let after = RateLimit {
            retry_after: Some(S(7)),
            reset_unix: Some(1_000_100),
            ..RateLimit::default()
        };
        assert_eq!(retry_delay(Class::RateLimited, 1, &after, 1_000_000), S(7));
        let reset = RateLimit {
            reset_unix: Some(1_000_042),
            ..RateLimit::default()
        };
        assert_eq!(retry_delay(Class::RateLimited, 1, &reset, 1_000_000), S(42));
        // A reset in the past still waits a second, never zero.
        assert_eq!(retry_delay(Class::RateLimited, 1, &reset, 2_000_000), S(1));
        // An exhausted quota stretches any other retry to the reset.
        let empty = RateLimit {
            remaining: Some(0),
            reset_unix: Some(1_000_020),
            ..RateLimit::default()
        };
        assert_eq!(retry_delay(Class::Transient, 1, &empty, 1_000_000), S(20));
        assert_eq!(retry_delay(Class::Permanent, 1, &empty, 1_000_000), S(60));
    }

    #[test]
    fn ours_but_locked_is_checked_again_not_done() {
        let mut a = Assigner::new(Timing::default());
        a.step(S(0), 0, Event::Start);
        a.step(S(0), 0, Event::Metadata(Ok(7)));
        // Still on this droplet, but another droplet's action is pending.
        let locked = Current {
            droplet: Some(7),
            locked: true,
        };
        assert_eq!(
            a.step(S(0), 0, Event::Check(Ok(locked))),
            Cmd::SleepUntil(S(1))
        );
        assert_eq!(a.state, State::Pending);
        assert_eq!(a.step(S(1), 0, Event::Woke), Cmd::Do(Call::Check));
        // That action moved it to droplet 8: assign it back.
        assert_eq!(
            a.step(S(1), 0, Event::Check(Ok(Current::unlocked(Some(8))))),
            Cmd::Do(Call::Assign)
        );
        // Another round, locked by our own lost action, then unlocked: done.
        let mut b = Assigner::new(Timing::default());
        b.step(S(0), 0, Event::Start);
        b.step(S(0), 0, Event::Metadata(Ok(7)));
        assert!(matches!(
            b.step(S(0), 0, Event::Check(Ok(locked))),
            Cmd::SleepUntil(_)
        ));
        b.step(S(1), 0, Event::Woke);
        assert_eq!(
            b.step(S(1), 0, Event::Check(Ok(Current::unlocked(Some(7))))),
            Cmd::Done
        );
        assert_eq!(b.state, State::Assigned);
    }

    #[test]
    fn happy_path_metadata_check_assign_poll_done() {
        let mut a = Assigner::new(Timing::default());
        assert_eq!(a.step(S(0), 0, Event::Start), Cmd::Do(Call::Metadata));
        assert_eq!(a.state, State::Pending);
        assert_eq!(
            a.step(S(0), 0, Event::Metadata(Ok(7))),
            Cmd::Do(Call::Check)
        );
        assert_eq!(
            a.step(S(0), 0, Event::Check(Ok(Current::unlocked(Some(8))))),
            Cmd::Do(Call::Assign)
        );
        assert_eq!(a.assigned_to, Some(8));
        let in_progress = action(42, ActionStatus::InProgress);
        assert_eq!(
            a.step(S(1), 0, Event::Assign(Ok(in_progress.clone()))),
            Cmd::SleepUntil(S(2))
        );
        assert_eq!(a.step(S(2), 0, Event::Woke), Cmd::Do(Call::Poll(42)));
        assert_eq!(
            a.step(S(2), 0, Event::Poll(Ok(in_progress))),
            Cmd::SleepUntil(S(3))
        );
        assert_eq!(a.state, State::Pending);
        assert_eq!(a.step(S(3), 0, Event::Woke), Cmd::Do(Call::Poll(42)));
        assert_eq!(
            a.step(
                S(3),
                0,
                Event::Poll(Ok(action(42, ActionStatus::Completed)))
            ),
            Cmd::Done
        );
        assert_eq!(a.state, State::Assigned);
        assert_eq!(a.assigned_to, Some(7));
        assert_eq!(a.last_action, Some(action(42, ActionStatus::Completed)));
        assert_eq!(a.last_action_at, Some(S(1)));
        assert_eq!(a.reason, None);

        // A second round (refresh) skips the metadata and finds it ours.
        assert_eq!(a.step(S(9), 0, Event::Start), Cmd::Do(Call::Check));
        assert_eq!(
            a.step(S(9), 0, Event::Check(Ok(Current::unlocked(Some(7))))),
            Cmd::Done
        );
        assert_eq!(a.state, State::Assigned);
    }

    #[test]
    fn busy_ip_is_retried_every_three_seconds_then_failed_after_ten() {
        let mut a = Assigner::new(Timing::default());
        a.droplet_id = Some(7);
        assert_eq!(a.step(S(0), 0, Event::Start), Cmd::Do(Call::Check));
        assert_eq!(
            a.step(S(0), 0, Event::Check(Ok(Current::unlocked(Some(8))))),
            Cmd::Do(Call::Assign)
        );
        let mut now = S(0);
        for n in 1..=FAILED_AFTER {
            let cmd = a.step(now, 0, Event::Assign(Err(failure(Class::Busy))));
            assert_eq!(cmd, Cmd::SleepUntil(now + BUSY_RETRY));
            now += BUSY_RETRY;
            let expect = if n < FAILED_AFTER {
                State::Pending
            } else {
                State::Failed
            };
            assert_eq!(a.state, expect, "after {n} failures");
            assert!(
                a.reason
                    .as_deref()
                    .unwrap()
                    .contains(&format!("attempt {n}"))
            );
            // After a failed assign it looks again before assigning again.
            assert_eq!(a.step(now, 0, Event::Woke), Cmd::Do(Call::Check));
            assert_eq!(
                a.step(now, 0, Event::Check(Ok(Current::unlocked(Some(8))))),
                Cmd::Do(Call::Assign)
            );
        }
        // It keeps trying, and the previous holder's action completing lets it through.
        assert_eq!(
            a.step(
                now,
                0,
                Event::Assign(Ok(action(5, ActionStatus::Completed)))
            ),
            Cmd::Done
        );
        assert_eq!(a.state, State::Assigned);
        assert_eq!(a.failures, 0);
    }

    #[test]
    fn permanent_failure_is_failed_at_once_and_retried_slowly() {
        let mut a = Assigner::new(Timing::default());
        a.step(S(0), 0, Event::Start);
        let cmd = a.step(S(0), 0, Event::Metadata(Ok(7)));
        assert_eq!(cmd, Cmd::Do(Call::Check));
        let cmd = a.step(S(5), 0, Event::Check(Err(failure(Class::Permanent))));
        assert_eq!(cmd, Cmd::SleepUntil(S(65)));
        assert_eq!(a.state, State::Failed);
        assert!(a.reason.as_deref().unwrap().starts_with("POST /v2/"));
        assert_eq!(a.step(S(65), 0, Event::Woke), Cmd::Do(Call::Check));
    }

    #[test]
    fn metadata_down_backs_off_exponentially() {
        let mut a = Assigner::new(Timing::default());
        a.step(S(0), 0, Event::Start);
        let mut now = S(0);
        for expect in [1, 2, 4, 8, 16, 30, 30] {
            let cmd = a.step(now, 0, Event::Metadata(Err(failure(Class::Transient))));
            assert_eq!(cmd, Cmd::SleepUntil(now + S(expect)));
            now += S(expect);
            assert_eq!(a.step(now, 0, Event::Woke), Cmd::Do(Call::Metadata));
        }
        assert_eq!(a.droplet_id, None);
    }

    #[test]
    fn rate_limited_waits_for_retry_after() {
        let mut a = Assigner::new(Timing::default());
        a.droplet_id = Some(7);
        a.step(S(0), 0, Event::Start);
        a.step(S(0), 0, Event::Check(Ok(Current::unlocked(None))));
        let mut f = failure(Class::RateLimited);
        f.rate.retry_after = Some(S(11));
        assert_eq!(
            a.step(S(0), 0, Event::Assign(Err(f))),
            Cmd::SleepUntil(S(11))
        );
        assert_eq!(a.state, State::Pending);
    }

    #[test]
    fn errored_action_starts_over_and_stuck_action_times_out() {
        let t = Timing {
            poll_interval: S(1),
            action_timeout: S(5),
        };
        let mut a = Assigner::new(t);
        a.droplet_id = Some(7);
        a.step(S(0), 0, Event::Start);
        a.step(S(0), 0, Event::Check(Ok(Current::unlocked(None))));
        a.step(
            S(0),
            0,
            Event::Assign(Ok(action(1, ActionStatus::InProgress))),
        );
        a.step(S(1), 0, Event::Woke);
        let cmd = a.step(S(1), 0, Event::Poll(Ok(action(1, ActionStatus::Errored))));
        assert_eq!(cmd, Cmd::SleepUntil(S(2)));
        assert!(a.reason.as_deref().unwrap().contains("action 1 errored"));
        assert_eq!(a.step(S(2), 0, Event::Woke), Cmd::Do(Call::Check));
        a.step(S(2), 0, Event::Check(Ok(Current::unlocked(None))));
        a.step(
            S(2),
            0,
            Event::Assign(Ok(action(2, ActionStatus::InProgress))),
        );
        let mut now = S(2);
        loop {
            now += S(1);
            assert_eq!(a.step(now, 0, Event::Woke), Cmd::Do(Call::Poll(2)));
            let cmd = a.step(now, 0, Event::Poll(Ok(action(2, ActionStatus::InProgress))));
            if now < S(7) {
                assert_eq!(cmd, Cmd::SleepUntil(now + S(1)));
            } else {
                assert_eq!(cmd, Cmd::SleepUntil(now + BUSY_RETRY));
                assert!(a.reason.as_deref().unwrap().contains("still in-progress"));
                break;
            }
        }
        assert_eq!(
            a.step(now + BUSY_RETRY, 0, Event::Woke),
            Cmd::Do(Call::Check)
        );
    }

    #[test]
    fn poll_failures_keep_following_unless_permanent() {
        let mut a = Assigner::new(Timing::default());
        a.droplet_id = Some(7);
        a.step(S(0), 0, Event::Start);
        a.step(S(0), 0, Event::Check(Ok(Current::unlocked(None))));
        a.step(
            S(0),
            0,
            Event::Assign(Ok(action(3, ActionStatus::InProgress))),
        );
        a.step(S(1), 0, Event::Woke);
        a.step(S(1), 0, Event::Poll(Err(failure(Class::Transient))));
        assert_eq!(a.step(S(2), 0, Event::Woke), Cmd::Do(Call::Poll(3)));
        a.step(S(2), 0, Event::Poll(Err(failure(Class::Permanent))));
        assert_eq!(a.step(S(62), 0, Event::Woke), Cmd::Do(Call::Check));
    }

    #[test]
    fn the_lease_sees_pending_failing_and_assigned() {
        let mut a = Assigner::new(Timing::default());
        assert_eq!(a.assignment(), Assignment::Idle);
        a.step(S(0), 0, Event::Start);
        assert_eq!(a.assignment(), Assignment::Pending);
        a.step(S(0), 0, Event::Metadata(Err(failure(Class::Transient))));
        assert_eq!(a.assignment(), Assignment::Pending, "retrying");
        a.step(S(1), 0, Event::Woke);
        a.step(S(1), 0, Event::Metadata(Ok(7)));
        assert_eq!(a.assignment(), Assignment::Pending);
        a.step(S(1), 0, Event::Check(Err(failure(Class::Permanent))));
        assert_eq!(a.assignment(), Assignment::Failing { permanent: true });
        a.step(S(61), 0, Event::Woke);
        a.step(S(61), 0, Event::Check(Err(failure(Class::Transient))));
        assert_ne!(
            a.assignment(),
            Assignment::Failing { permanent: true },
            "a transient answer after a permanent one is not permanent"
        );
        for t in 0..FAILED_AFTER as u64 {
            a.step(S(62 + t), 0, Event::Woke);
            a.step(S(62 + t), 0, Event::Check(Err(failure(Class::Transient))));
        }
        assert_eq!(a.assignment(), Assignment::Failing { permanent: false });
        a.step(S(99), 0, Event::Woke);
        a.step(S(99), 0, Event::Check(Ok(Current::unlocked(Some(7)))));
        assert_eq!(a.assignment(), Assignment::Assigned);
    }
}
