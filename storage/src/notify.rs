//! A single-threaded broadcast notification: every waiter registered before `notify_all` wakes.
//! Executor-agnostic, so the log runs the same under glommio and under a test's `block_on`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
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
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in wakers {
            w.wake();
        }
    }
}

pub struct Notified<'a> {
    notify: &'a Notify,
    epoch: u64,
    /// Where this future's waker sits in `wakers` (stable until the next `notify_all`), so a
    /// re-poll costs O(1) — thousands of appends may wait on one log's notification.
    slot: Option<usize>,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        match self.slot {
            Some(i) if i < wakers.len() => {
                if !wakers[i].will_wake(cx.waker()) {
                    wakers[i] = cx.waker().clone();
                }
            }
            _ => {
                wakers.push(cx.waker().clone());
                let i = wakers.len() - 1;
                drop(wakers);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}
