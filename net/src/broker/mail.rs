//! Cross-shard mail: how one shard hands work to another and gets its answer back.
//!
//! Every ordered pair of shards has its own glommio `shared_channel` (a bounded SPSC ring whose
//! receiving side sleeps on its reactor's eventfd). A task is only ever woken by its own
//! executor: the channel's reactor wakes the receiving loop, and an answer travels back as mail
//! to the asking shard, which completes the asker's local oneshot itself.
//!
//! This matters because glommio 0.9 does not survive a task's waker being woken or dropped from
//! another thread in every interleaving: a foreign `drop_waker` lowers the task's reference
//! count to zero and raises it again a moment later, and if the task's `JoinHandle` is dropped
//! on the home thread inside that window the task is freed under the foreign thread (it showed
//! as a reference-count assertion in a Kafka request task, aborting the broker). So no future
//! here ever waits on a `Send` channel completed by another shard.
//!
//! Sending never blocks the sender: mail first goes into a local unbounded queue per
//! destination, and a pump task moves it into the shared ring in order (mail from one shard to
//! another is delivered in the order it was sent).

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::channels::shared_channel::{self, SharedReceiver, SharedSender};

use super::shard::{Job, Shard};

/// Mail in flight in one shard-to-shard ring.
const RING_CAPACITY: usize = 1024;

/// What travels between shards.
pub enum Letter {
    /// Run this job on the receiving shard, as its own task.
    Job(Job),
    /// The answer to the receiving shard's `ticket`.
    Answer { ticket: u64, value: Answer },
}

/// A job's result on its way home (its type is known to the one waiting for it).
pub type Answer = Box<dyn Any + Send>;

/// One shard's ends of the mail rings, handed to it at startup.
pub struct Endpoints {
    outgoing: Vec<Option<SharedSender<Letter>>>,
    incoming: Vec<Option<SharedReceiver<Letter>>>,
}

/// A full mesh of rings for `shards` shards: element `i` belongs to shard `i`.
pub fn mesh(shards: usize) -> Vec<Endpoints> {
    let mut all: Vec<Endpoints> = (0..shards)
        .map(|_| Endpoints {
            outgoing: (0..shards).map(|_| None).collect(),
            incoming: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(RING_CAPACITY);
                all[from].outgoing[to] = Some(tx);
                all[to].incoming[from] = Some(rx);
            }
        }
    }
    all
}

/// A shard's post office: its outboxes and the answers it is waiting for.
#[derive(Default)]
pub struct Mail {
    outboxes: OnceCell<Vec<Option<LocalSender<Letter>>>>,
    waiting: RefCell<HashMap<u64, oneshot::Sender<Answer>>>,
    next_ticket: Cell<u64>,
}

impl Mail {
    /// Starts the pumps (one per destination) and the delivery loops (one per source) of
    /// `shard`, which must run on its own executor.
    pub fn start(shard: &Rc<Shard>, endpoints: Endpoints) {
        let mut outboxes = Vec::with_capacity(endpoints.outgoing.len());
        for ring in endpoints.outgoing {
            outboxes.push(ring.map(|ring| {
                let (tx, rx) = local_channel::new_unbounded::<Letter>();
                glommio::spawn_local(async move {
                    let ring = ring.connect().await;
                    while let Some(letter) = rx.recv().await {
                        if ring.send(letter).await.is_err() {
                            break; // the destination has stopped
                        }
                    }
                })
                .detach();
                tx
            }));
        }
        for ring in endpoints.incoming.into_iter().flatten() {
            glommio::spawn_local(deliver(shard.clone(), ring)).detach();
        }
        if shard.mail.outboxes.set(outboxes).is_err() {
            panic!("a shard's mail starts once");
        }
    }

    /// Queues `letter` for shard `to` (never this shard).
    pub fn post(&self, to: usize, letter: Letter) {
        let outbox = self
            .outboxes
            .get()
            .and_then(|o| o.get(to)?.as_ref())
            .expect("mail goes to another shard, after startup");
        if outbox.try_send(letter).is_err() {
            // Only after the pump has ended, i.e. the destination has stopped.
            eprintln!("sluice: mail to shard {to} dropped: it has stopped");
        }
    }

    /// A ticket whose answer will complete the returned receiver.
    pub fn expect_answer(&self) -> (u64, oneshot::Receiver<Answer>) {
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket + 1);
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(ticket, tx);
        (ticket, rx)
    }

    fn answer(&self, ticket: u64, value: Answer) {
        if let Some(tx) = self.waiting.borrow_mut().remove(&ticket) {
            let _ = tx.send(value); // the asker may have gone away
        }
    }

    /// Answers still awaited (for tests).
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().len()
    }
}

/// Delivers the mail of one source ring on this shard until the source stops.
async fn deliver(shard: Rc<Shard>, ring: SharedReceiver<Letter>) {
    let ring = ring.connect().await;
    while let Some(letter) = ring.recv().await {
        match letter {
            Letter::Job(job) => {
                glommio::spawn_local(job(shard.clone())).detach();
            }
            Letter::Answer { ticket, value } => shard.mail.answer(ticket, value),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::broker::config::BrokerConfig;
    use crate::broker::metadata::Metadata;
    use crate::broker::shard::Shared;

    /// Runs `body(shard)` on each of `shards` executors, each shard with its mail started, and
    /// returns what each body returned, by shard id.
    fn on_shards<T, F, Fut>(shards: usize, body: F) -> Vec<T>
    where
        T: Send + 'static,
        F: Fn(Rc<Shard>) -> Fut + Send + Sync + Clone + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        let config = BrokerConfig {
            shards,
            ..Default::default()
        };
        let shared = Arc::new(Shared::new(config, Metadata::default()));
        let endpoints = Arc::new(Mutex::new(
            mesh(shards).into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let arrived = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..shards)
            .map(|id| {
                let (shared, endpoints, arrived) =
                    (shared.clone(), endpoints.clone(), arrived.clone());
                let body = body.clone();
                glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .io_memory(512 << 10)
                    .spawn(move || async move {
                        let shard = Shard::new(id, shared);
                        let ends = endpoints.lock().unwrap()[id].take().unwrap();
                        Mail::start(&shard, ends);
                        let out = body(shard).await;
                        // Stay (delivering mail) until every shard is done.
                        arrived.fetch_add(1, Ordering::SeqCst);
                        while arrived.load(Ordering::SeqCst) < shards {
                            glommio::timer::sleep(std::time::Duration::from_millis(2)).await;
                        }
                        out
                    })
                    .unwrap()
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn submitted_jobs_answer_their_askers_across_shards() {
        let sums = on_shards(2, |shard| async move {
            let other = 1 - shard.id;
            let asks = (0..2000u64).map(|i| {
                let shard = shard.clone();
                async move {
                    let (id, doubled) = shard
                        .submit_to(other, move |s| Box::pin(async move { (s.id, i * 2) }))
                        .await;
                    assert_eq!(id, other, "the job ran on the shard it was sent to");
                    assert_eq!(doubled, i * 2, "each asker gets its own answer");
                    doubled
                }
            });
            let sum: u64 = futures::future::join_all(asks).await.into_iter().sum();
            assert_eq!(shard.mail.waiting(), 0, "no answer left waiting");
            sum
        });
        assert_eq!(sums, vec![(0..2000u64).map(|i| i * 2).sum::<u64>(); 2]);
    }

    #[test]
    fn jobs_sent_to_a_shard_run_in_the_order_sent() {
        static RAN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
        // More than a ring holds, so the pump has to wait for room.
        let sent = RING_CAPACITY as u32 * 5;
        on_shards(2, move |shard| async move {
            if shard.id == 0 {
                for i in 0..sent {
                    shard.send_to(1, move |_| {
                        Box::pin(async move { RAN.lock().unwrap().push(i) })
                    });
                }
                // Delivered after every job above, and so run after them.
                shard.submit_to(1, |_| Box::pin(async {})).await;
            }
        });
        let ran = RAN.lock().unwrap().clone();
        assert_eq!(ran, (0..sent).collect::<Vec<_>>());
    }

    #[test]
    fn an_asker_that_gives_up_leaves_nothing_behind() {
        let left = on_shards(2, |shard| async move {
            let other = 1 - shard.id;
            for _ in 0..100 {
                let ask = shard.submit_to(other, |_| {
                    Box::pin(async move {
                        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        7u8
                    })
                });
                // Give up at once: the answer still arrives and is thrown away.
                let give_up = glommio::timer::sleep(std::time::Duration::from_micros(1));
                futures_lite::future::or(async { Some(ask.await) }, async {
                    give_up.await;
                    None
                })
                .await;
            }
            let last = shard
                .submit_to(other, |_| Box::pin(async move { 9u8 }))
                .await;
            assert_eq!(last, 9);
            // The abandoned answers come home within moments and find no one waiting.
            for _ in 0..5000 {
                if shard.mail.waiting() == 0 {
                    break;
                }
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            shard.mail.waiting()
        });
        assert_eq!(
            left,
            vec![0, 0],
            "answers to askers that gave up are dropped"
        );
    }
}
