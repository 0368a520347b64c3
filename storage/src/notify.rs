//! A single-threaded broadcast notification: every waiter registered before `notify_all` wakes.
//! Executor-agnostic, so the log runs the same under glommio and under a test's `block_on`.
//!
//! A `Notified` dropped before its notification gives its slot back: a loop that takes a fresh
//! `notified()` on every turn (a connection's stop signal, raced against each read) must not
//! pile up wakers until the notification finally comes. (It once did: after ~32,767 requests
//! on one connection the clones of the connection task's waker overflowed glommio's task
//! reference count and the shard panicked.)

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    slots: RefCell<Slots>,
}

/// Registered wakers; `None` marks a slot given back by a dropped waiter, reused by the next.
#[derive(Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Notify {
    /// A future that completes at the next `notify_all` after this call. Take it *before*
    /// checking the condition you wait for, so that no notification is lost in between.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            epoch: self.epoch.get(),
            slot: None,
        }
    }

    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        let wakers = {
            let mut s = self.slots.borrow_mut();
            s.free.clear();
            std::mem::take(&mut s.wakers)
        };
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Wakers registered and not given back (for tests).
    pub fn waiters(&self) -> usize {
        let s = self.slots.borrow();
        s.wakers.len() - s.free.len()
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    epoch: u64,
    /// Where this future's waker sits (stable until the next `notify_all`), so a re-poll costs
    /// O(1) — thousands of appends may wait on one log's notification.
    slot: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut s = self.notify.slots.borrow_mut();
        match self.slot {
            Some(i) => match &mut s.wakers[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            },
            None => {
                let i = match s.free.pop() {
                    Some(i) => {
                        s.wakers[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        s.wakers.push(Some(cx.waker().clone()));
                        s.wakers.len() - 1
                    }
                };
                drop(s);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        // Slots are only valid within the epoch they were taken in.
        if let (Some(i), true) = (self.slot, self.notify.epoch.get() == self.epoch) {
            let mut s = self.notify.slots.borrow_mut();
            if s.wakers[i].take().is_some() {
                s.free.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_once(f: &mut Pin<Box<Notified<'_>>>, waker: &Waker) -> Poll<()> {
        f.as_mut().poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn dropped_waiters_give_their_slot_back() {
        let n = Notify::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        // A loop racing a fresh notified() against other work, 100,000 times.
        for _ in 0..100_000 {
            let mut f = Box::pin(n.notified());
            assert!(poll_once(&mut f, &waker).is_pending());
            assert!(poll_once(&mut f, &waker).is_pending());
        }
        assert_eq!(n.waiters(), 0);
        assert_eq!(n.slots.borrow().wakers.len(), 1, "one slot, reused");
        // Only the waker of this count's clones remains: the Arc is not leaked.
        assert_eq!(Arc::strong_count(&count), 2);
    }

    #[test]
    fn every_live_waiter_is_woken_once_and_completes() {
        let n = Notify::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut a = Box::pin(n.notified());
        let mut b = Box::pin(n.notified());
        let mut c = Box::pin(n.notified());
        for f in [&mut a, &mut b, &mut c] {
            assert!(poll_once(f, &waker).is_pending());
        }
        drop(b);
        // The freed slot is reused by a new waiter.
        let mut d = Box::pin(n.notified());
        assert!(poll_once(&mut d, &waker).is_pending());
        assert_eq!(n.waiters(), 3);
        n.notify_all();
        assert_eq!(count.0.load(Ordering::SeqCst), 3);
        for f in [&mut a, &mut c, &mut d] {
            assert!(poll_once(f, &waker).is_ready());
        }
        // A waiter taken after the notification waits for the next one.
        let mut e = Box::pin(n.notified());
        assert!(poll_once(&mut e, &waker).is_pending());
        drop((a, c, d));
        assert_eq!(n.waiters(), 1);
    }
}
