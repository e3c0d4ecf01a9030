//! The PS's bandwidth manager: a byte budget per MT with a time-of-day
//! schedule, shared by that MT's pairs, handed out highest priority first
//! (the seed had one cap per PS and no priorities, seed line 1402).
//!
//! Schedule entries are `HH:MM-HH:MM=RATE` (UTC, may wrap midnight) or
//! `*=RATE`; the first that matches the current time wins; RATE is like
//! `20MB/s`, `100MiB/s` or `0` (unlimited). No entry matching: unlimited.
//!
//! Invariants: a caller waits only for its own bytes; among waiters, a
//! higher priority is served first, equal priorities in arrival order; with
//! rate 0 nobody waits. A waiter's place in the queue lives exactly as long
//! as its `acquire` future: one dropped while it waits (its pair deleted or
//! stopped) leaves the queue at once, so it never blocks those behind it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::util::{in_window, parse_rate, parse_window};

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Minutes after midnight, [from, to); None = all day.
    pub window: Option<(u32, u32)>,
    /// Bytes per second; 0 = unlimited.
    pub rate: u64,
}

pub fn parse_schedule(entries: &[String]) -> Result<Vec<Entry>, String> {
    entries
        .iter()
        .map(|e| {
            let (when, rate) = e.split_once('=').ok_or_else(|| {
                format!("bad bandwidth entry `{e}`: use HH:MM-HH:MM=RATE or *=RATE")
            })?;
            let window = match when.trim() {
                "*" => None,
                w => Some(parse_window(w)?),
            };
            Ok(Entry {
                window,
                rate: parse_rate(rate)?,
            })
        })
        .collect()
}

/// The rate in force at `now_ms` (UTC).
pub fn rate_at(schedule: &[Entry], now_ms: u64) -> u64 {
    schedule
        .iter()
        .find(|e| e.window.is_none_or(|w| in_window(w, now_ms)))
        .map_or(0, |e| e.rate)
}

struct State {
    /// Bytes that may go now (may go negative: a large chunk borrows).
    tokens: f64,
    last: Instant,
    /// Waiting callers: (−priority, arrival) → nothing; the first key is next.
    queue: BTreeMap<(i16, u64), ()>,
    arrivals: u64,
}

/// One budget (one MT).
pub struct Limiter {
    schedule: Vec<Entry>,
    st: Mutex<State>,
    wake: tokio::sync::Notify,
}

impl Limiter {
    pub fn new(schedule: Vec<Entry>) -> Limiter {
        Limiter {
            schedule,
            st: Mutex::new(State {
                tokens: 0.0,
                last: Instant::now(),
                queue: BTreeMap::new(),
                arrivals: 0,
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn rate(&self) -> u64 {
        rate_at(&self.schedule, crate::util::now_ms())
    }

    /// Wait until `bytes` may be sent at `priority` (higher first).
    pub async fn acquire(&self, bytes: u64, priority: u8) {
        if self.rate() == 0 {
            return;
        }
        let key = {
            let mut s = self.st.lock().unwrap();
            s.arrivals += 1;
            let k = (-(priority as i16), s.arrivals);
            s.queue.insert(k, ());
            k
        };
        let _place = Place { lim: self, key };
        loop {
            let rate = self.rate();
            let wait = {
                let mut s = self.st.lock().unwrap();
                let now = Instant::now();
                // Refill, holding at most one second of budget.
                s.tokens = (s.tokens + now.duration_since(s.last).as_secs_f64() * rate as f64)
                    .min(rate.max(1) as f64);
                s.last = now;
                let first = s.queue.keys().next() == Some(&key);
                if rate == 0 || (first && s.tokens >= 0.0) {
                    s.tokens -= bytes as f64;
                    None
                } else if first {
                    Some(Duration::from_secs_f64(-s.tokens / rate as f64))
                } else {
                    Some(Duration::from_millis(50))
                }
            };
            match wait {
                // `_place` leaves the queue and wakes the next.
                None => return,
                Some(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d.min(Duration::from_millis(200))) => {}
                        _ = self.wake.notified() => {}
                    }
                }
            }
        }
    }
}

/// A waiter's key in the queue: removed when `acquire` returns or is
/// dropped mid-wait, and the next waiter woken.
struct Place<'a> {
    lim: &'a Limiter,
    key: (i16, u64),
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.lim.st.lock().unwrap().queue.remove(&self.key);
        self.lim.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_pick_the_first_matching_entry() {
        let s = parse_schedule(&["08:00-18:00=20MB/s".into(), "*=0".into()]).unwrap();
        let at = |h: u64| h * 3_600_000;
        assert_eq!(rate_at(&s, at(9)), 20_000_000);
        assert_eq!(rate_at(&s, at(20)), 0);
        let w = parse_schedule(&["22:00-06:00=100Mbit".into()]).unwrap();
        assert_eq!(rate_at(&w, at(23)), 12_500_000);
        assert_eq!(rate_at(&w, at(12)), 0);
        assert!(parse_schedule(&["9-17=1MB".into()]).is_err());
        assert!(parse_schedule(&["*=fast".into()]).is_err());
    }

    #[tokio::test]
    async fn higher_priority_goes_first_and_the_rate_holds() {
        let l = std::sync::Arc::new(Limiter::new(vec![Entry {
            window: None,
            rate: 1_000_000,
        }]));
        // Drain the initial budget so everyone queues.
        l.acquire(1_000_000, 0).await;
        let order = std::sync::Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, prio) in [(0, 1u8), (1, 9), (2, 5)] {
            let (l, order) = (l.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                l.acquire(200_000, prio).await;
                order.lock().unwrap().push(prio);
            }));
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        let t0 = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        // A 1 MB debt and 600 kB more at 1 MB/s: well over a second.
        assert!(t0.elapsed() >= Duration::from_secs(1), "{:?}", t0.elapsed());
        let o = order.lock().unwrap().clone();
        assert_eq!(o, [9, 5, 1], "served by priority, not arrival: {o:?}");
    }

    #[tokio::test]
    async fn a_waiter_dropped_at_the_head_does_not_block_the_rest() {
        let l = std::sync::Arc::new(Limiter::new(vec![Entry {
            window: None,
            rate: 10_000_000,
        }]));
        l.acquire(10_000_000, 0).await; // a one-second debt
        // The highest priority waits first, then is dropped (its pair gone).
        let head = {
            let l = l.clone();
            tokio::spawn(async move { l.acquire(1_000, 9).await })
        };
        while l.st.lock().unwrap().queue.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        head.abort();
        assert!(head.await.unwrap_err().is_cancelled());
        assert!(l.st.lock().unwrap().queue.is_empty(), "its place is gone");
        // A lower priority is served once the debt is paid, not never.
        tokio::time::timeout(Duration::from_secs(5), l.acquire(1_000, 1))
            .await
            .expect("served after the dropped waiter");
        assert!(l.st.lock().unwrap().queue.is_empty());
    }
}
