//! One shutdown path for the whole process.
//!
//! A [`Shutdown`] is handed to every listener, worker and loop. Each of them
//! `select!`s between its work and [`Shutdown::wait`]. [`ShutdownTrigger::fire`]
//! is called once (by the signal handler, or by a test) and every waiter wakes.
//!
//! Invariant: once fired, a shutdown stays fired; late subscribers see it at once.

use tokio::sync::watch;

/// The sending side: fire it once to stop everything that holds a [`Shutdown`].
#[derive(Clone)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// The receiving side, cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// A connected pair.
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownTrigger {
    /// A trigger nobody listens to yet (subscribe later).
    pub fn new() -> ShutdownTrigger {
        let (tx, _rx) = watch::channel(false);
        ShutdownTrigger { tx }
    }

    /// Ask everything to stop. Idempotent.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown {
            rx: self.tx.subscribe(),
        }
    }
}

impl Shutdown {
    /// Resolves once shutdown has been requested (immediately if it already was).
    pub async fn wait(&mut self) {
        // An error means every trigger was dropped: treat that as shutdown too,
        // so nothing waits forever on a trigger that can no longer fire.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }

    pub fn is_fired(&self) -> bool {
        *self.rx.borrow()
    }
}

/// A shutdown that fires when either `a` or `b` does: a part of the process
/// (one pair, one volume) that can be stopped alone or with everything.
pub fn either(mut a: Shutdown, mut b: Shutdown) -> Shutdown {
    let (t, s) = channel();
    tokio::spawn(async move {
        tokio::select! {
            _ = a.wait() => {}
            _ = b.wait() => {}
        }
        t.fire();
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_subscriber_sees_a_fired_shutdown() {
        let (trigger, _keep) = channel();
        trigger.fire();
        let mut late = trigger.subscribe();
        tokio::time::timeout(std::time::Duration::from_secs(1), late.wait())
            .await
            .expect("a late subscriber must wake at once");
        assert!(late.is_fired());
    }

    #[tokio::test]
    async fn dropped_trigger_releases_waiters() {
        let (trigger, mut s) = channel();
        drop(trigger);
        tokio::time::timeout(std::time::Duration::from_secs(1), s.wait())
            .await
            .expect("waiters must not hang when the trigger is gone");
    }
}
