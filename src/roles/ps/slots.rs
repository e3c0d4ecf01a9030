//! Resync admission: at most `ps.resync_batch` pairs of one PS run a resync
//! (step I and II) at a time, so a PS that comes back after a long outage,
//! or a plan of many new pairs, does not read every source disk and flood
//! the WAN at once (the seed's batch resync limit, default 3).
//!
//! The agent asks for a slot before it copies and renews it while it
//! copies; the PS grants in order of pair priority, then of first asking.
//!
//! Invariants: at most `batch` pairs hold a slot (0 = no limit); a slot not
//! renewed within the lease is free again, so an agent that dies, a pair
//! that is paused or deleted never blocks the others for long; a waiter
//! that stops asking loses its place after the same lease.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a slot (or a place in the queue) lasts without being asked for.
pub const LEASE: Duration = crate::engine::control::RESYNC_SLOT_LEASE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Granted,
    /// 1 = next to be granted.
    Queued(usize),
}

struct Waiter {
    priority: i16,
    since: Instant,
    seen: Instant,
}

pub struct Slots {
    batch: usize,
    running: HashMap<String, Instant>,
    waiting: HashMap<String, Waiter>,
}

impl Slots {
    pub fn new(batch: usize) -> Slots {
        Slots {
            batch,
            running: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        self.running.retain(|_, t| now.duration_since(*t) < LEASE);
        self.waiting
            .retain(|_, w| now.duration_since(w.seen) < LEASE);
    }

    /// Ask for (or renew) `pair`'s slot.
    pub fn ask(&mut self, pair: &str, priority: i16, now: Instant) -> Grant {
        self.expire(now);
        if let Some(t) = self.running.get_mut(pair) {
            *t = now;
            return Grant::Granted;
        }
        let w = self.waiting.entry(pair.to_owned()).or_insert(Waiter {
            priority,
            since: now,
            seen: now,
        });
        w.seen = now;
        w.priority = priority;
        let mut order: Vec<(&String, &Waiter)> = self.waiting.iter().collect();
        order.sort_by(|a, b| (-a.1.priority, a.1.since, a.0).cmp(&(-b.1.priority, b.1.since, b.0)));
        let pos = order.iter().position(|(n, _)| n.as_str() == pair).unwrap();
        let free = if self.batch == 0 {
            usize::MAX
        } else {
            self.batch.saturating_sub(self.running.len())
        };
        if pos < free {
            self.waiting.remove(pair);
            self.running.insert(pair.to_owned(), now);
            Grant::Granted
        } else {
            Grant::Queued(pos - free + 1)
        }
    }

    /// The pair's resync is over (or it gave up its place).
    pub fn release(&mut self, pair: &str) {
        self.running.remove(pair);
        self.waiting.remove(pair);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_priority_and_leases() {
        let t0 = Instant::now();
        let mut s = Slots::new(2);
        assert_eq!(s.ask("a", 0, t0), Grant::Granted);
        assert_eq!(s.ask("b", 0, t0), Grant::Granted);
        assert_eq!(s.ask("c", 0, t0), Grant::Queued(1));
        assert_eq!(s.ask("d", 0, t0), Grant::Queued(2));
        // A higher priority goes ahead of earlier askers.
        assert_eq!(s.ask("e", 5, t0), Grant::Queued(1));
        assert_eq!(s.ask("c", 0, t0), Grant::Queued(2));
        // Renewal keeps a slot; release frees it for the head of the queue.
        assert_eq!(s.ask("a", 0, t0), Grant::Granted);
        s.release("a");
        // The free slot is kept for e, the head of the queue: c does not
        // take it, and is next after it.
        assert_eq!(s.ask("c", 0, t0), Grant::Queued(1));
        assert_eq!(s.ask("e", 5, t0), Grant::Granted);
        // b and e hold both slots: even the highest priority waits.
        assert_eq!(s.ask("f", 9, t0), Grant::Queued(1));
        s.release("f");
        // b stops renewing, c and d keep asking: b's lease ends, c goes next.
        let t1 = t0 + LEASE / 2;
        assert_eq!(s.ask("e", 5, t1), Grant::Granted);
        assert_eq!(s.ask("c", 0, t1), Grant::Queued(1));
        assert_eq!(s.ask("d", 0, t1), Grant::Queued(2));
        let t2 = t0 + LEASE + Duration::from_secs(1);
        assert_eq!(s.ask("c", 0, t2), Grant::Granted);
        assert_eq!(s.ask("d", 0, t2), Grant::Queued(1));
        // No limit.
        let mut u = Slots::new(0);
        for p in ["a", "b", "c", "d", "e"] {
            assert_eq!(u.ask(p, 0, t0), Grant::Granted);
        }
    }
}
