//! Shards: one glommio executor per core, each the sole owner of a slice of the partitions.
//!
//! A request that touches a partition owned elsewhere is sent to the owner with
//! [`Shard::submit_to`] (Seastar's `submit_to`): a `Send` closure travels to the owner as
//! [`mail`](super::mail), runs there and builds a local future, and the answer comes back as
//! mail to the asking shard.
//! Metadata changes run on shard 0 (the metadata home) and are published to every shard as an
//! immutable snapshot.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_storage::{wall_clock_ms, LogError};

use super::config::{resolve_topic_config, BrokerConfig};
use super::mail::Letter;
use super::metadata::{owner_shard, partition_dir, Metadata};
use super::partition::Partition;
use sluice_storage::notify::Notify;

pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;
pub type Job = Box<dyn FnOnce(Rc<Shard>) -> LocalFuture<()> + Send>;

/// State every shard can read: immutable config, the metadata snapshot, the stop flag.
pub struct Shared {
    pub config: BrokerConfig,
    pub metadata: ArcSwap<Metadata>,
    pub stopping: AtomicBool,
    /// Shutdown barriers: shards that finished draining connections, and closing logs.
    pub drained: std::sync::atomic::AtomicUsize,
    pub closed: std::sync::atomic::AtomicUsize,
}

impl Shared {
    pub fn new(config: BrokerConfig, metadata: Metadata) -> Shared {
        Shared {
            config,
            metadata: ArcSwap::from_pointee(metadata),
            stopping: AtomicBool::new(false),
            drained: Default::default(),
            closed: Default::default(),
        }
    }
}

/// Producer-id allocation, kept on shard 0 and persisted a block at a time.
pub struct ProducerIds {
    next: i64,
    block_end: i64,
}

const PRODUCER_ID_BLOCK: i64 = 1000;

pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub partitions: RefCell<HashMap<(String, i32), Rc<Partition>>>,
    pub producer_ids: RefCell<Option<ProducerIds>>,
    pub stop: Notify,
    pub stopped: Cell<bool>,
    pub connections: Cell<usize>,
    pub idle: Notify,
    /// Consumer groups homed on this shard (opened at startup).
    pub groups: RefCell<Option<Rc<super::groups::GroupHome>>>,
    /// Native protocol: subscriptions, connections, streams owned here.
    pub native: crate::native::pubsub::NativeShard,
    /// Kafka fetch: regions of owned partitions read ahead for consumers replaying from disk.
    pub read_ahead: super::read_ahead::ReadAhead,
    /// Jobs to and answers from the other shards.
    pub mail: super::mail::Mail,
}

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            shared,
            partitions: RefCell::new(HashMap::new()),
            producer_ids: RefCell::new(None),
            stop: Notify::default(),
            stopped: Cell::new(false),
            connections: Cell::new(0),
            idle: Notify::default(),
            groups: RefCell::new(None),
            native: Default::default(),
            read_ahead: Default::default(),
            mail: Default::default(),
        })
    }

    pub fn shards(&self) -> usize {
        self.shared.config.shards
    }

    pub fn metadata(&self) -> Arc<Metadata> {
        self.shared.metadata.load_full()
    }

    pub fn owner(&self, topic: &str, partition: i32) -> usize {
        owner_shard(topic, partition, self.shards())
    }

    /// Runs `f` on shard `target` and returns its result. Local calls run in place.
    pub async fn submit_to<T, F>(self: &Rc<Self>, target: usize, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> LocalFuture<T> + Send + 'static,
    {
        if target == self.id {
            return f(self.clone()).await;
        }
        let (ticket, answer) = self.mail.expect_answer();
        let home = self.id;
        let job: Job = Box::new(move |shard| {
            Box::pin(async move {
                let value = f(shard.clone()).await;
                shard.mail.post(
                    home,
                    Letter::Answer {
                        ticket,
                        value: Box::new(value),
                    },
                );
            })
        });
        self.mail.post(target, Letter::Job(job));
        let value = answer.await.expect("a submitted job always answers");
        *value
            .downcast::<T>()
            .expect("an answer has the type its asker expects")
    }

    /// Runs `f` on shard `target` without waiting for it (jobs to one shard run in the order
    /// they were sent).
    pub fn send_to<F>(self: &Rc<Self>, target: usize, f: F)
    where
        F: FnOnce(Rc<Shard>) -> LocalFuture<()> + Send + 'static,
    {
        if target == self.id {
            glommio::spawn_local(f(self.clone())).detach();
            return;
        }
        self.mail.post(target, Letter::Job(Box::new(f)));
    }

    /// The shard that coordinates `group_id`.
    pub fn group_owner(&self, group_id: &str) -> usize {
        owner_shard(group_id, -1, self.shards())
    }

    pub fn group_home(&self) -> Rc<super::groups::GroupHome> {
        self.groups
            .borrow()
            .clone()
            .expect("group home opened at startup")
    }

    /// Runs `f` on the partition's owner shard with the partition; UNKNOWN_TOPIC_OR_PARTITION
    /// when that shard has no such partition.
    pub async fn on_partition<T, F>(
        self: &Rc<Self>,
        topic: String,
        index: i32,
        f: F,
    ) -> Result<T, i16>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Partition>) -> LocalFuture<Result<T, i16>> + Send + 'static,
    {
        self.submit_to(self.owner(&topic, index), move |s| {
            Box::pin(async move {
                match s.partition(&topic, index) {
                    Some(p) => f(p).await,
                    None => Err(crate::kafka::errors::UNKNOWN_TOPIC_OR_PARTITION),
                }
            })
        })
        .await
    }

    pub fn partition(&self, topic: &str, index: i32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(&(topic.to_string(), index))
            .cloned()
    }

    /// Opens every partition this shard owns according to the current metadata.
    pub async fn open_owned_partitions(self: &Rc<Self>) -> Result<(), LogError> {
        let meta = self.metadata();
        for (name, topic) in &meta.topics {
            for p in 0..topic.partitions {
                if self.owner(name, p) == self.id {
                    self.open_partition(name, p).await?;
                }
            }
        }
        Ok(())
    }

    pub async fn open_partition(self: &Rc<Self>, topic: &str, index: i32) -> Result<(), LogError> {
        if self.partition(topic, index).is_some() {
            return Ok(());
        }
        let meta = self.metadata();
        let Some(t) = meta.topics.get(topic) else {
            return Ok(());
        };
        let cfg = resolve_topic_config(&t.configs, &self.shared.config.topic_defaults);
        let dir = partition_dir(&self.shared.config.data_dir, topic, index);
        let partition = Partition::open(dir, topic, index, &cfg, wall_clock_ms()).await?;
        self.partitions
            .borrow_mut()
            .insert((topic.to_string(), index), Rc::new(partition));
        Ok(())
    }

    /// Closes and deletes a partition's log (topic deletion).
    pub async fn drop_partition(self: &Rc<Self>, topic: &str, index: i32) {
        let p = self
            .partitions
            .borrow_mut()
            .remove(&(topic.to_string(), index));
        if let Some(p) = p {
            let _ = p.log.sync(wall_clock_ms()).await;
        }
        let dir = partition_dir(&self.shared.config.data_dir, topic, index);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Re-reads a topic's configs into its open partitions on this shard.
    pub fn apply_topic_configs(&self, topic: &str) {
        let meta = self.metadata();
        let Some(t) = meta.topics.get(topic) else {
            return;
        };
        let cfg = resolve_topic_config(&t.configs, &self.shared.config.topic_defaults);
        for p in self.partitions.borrow().values() {
            if p.topic == topic {
                p.apply_config(&cfg);
            }
        }
    }

    /// Shard 0 only: the next producer id, persisted a block ahead.
    pub fn allocate_producer_id(&self) -> std::io::Result<i64> {
        assert_eq!(
            self.id, 0,
            "producer ids are allocated on the metadata home shard"
        );
        let path = self
            .shared
            .config
            .data_dir
            .join("meta")
            .join("producer_ids");
        let mut ids = self.producer_ids.borrow_mut();
        if ids.is_none() {
            let start = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .unwrap_or(0);
            *ids = Some(ProducerIds {
                next: start,
                block_end: start,
            });
        }
        let ids = ids.as_mut().expect("initialised above");
        if ids.next >= ids.block_end {
            let end = ids.next + PRODUCER_ID_BLOCK;
            std::fs::create_dir_all(path.parent().expect("meta dir"))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, end.to_string())?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            ids.block_end = end;
        }
        let id = ids.next;
        ids.next += 1;
        Ok(id)
    }

    /// Publishes new metadata (shard 0 only): persist first, then swap the snapshot.
    pub fn publish_metadata(&self, meta: Metadata) -> std::io::Result<()> {
        assert_eq!(
            self.id, 0,
            "metadata changes run on the metadata home shard"
        );
        meta.persist(&self.shared.config.data_dir)?;
        self.shared.metadata.store(Arc::new(meta));
        Ok(())
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }

    /// Syncs every partition and writes producer snapshots (clean shutdown).
    pub async fn close_partitions(&self) {
        let home = self.groups.borrow().clone();
        if let Some(home) = home {
            if let Err(e) = home.close().await {
                eprintln!("sluice: closing the offsets log of shard {}: {e}", self.id);
            }
        }
        let streams: Vec<_> = self.native.streams.borrow().values().cloned().collect();
        for s in streams {
            s.housekeeping().await;
            if let Err(e) = s.save().await {
                eprintln!("sluice: saving stream {}: {e}", s.name);
            }
        }
        let parts: Vec<_> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            if let Err(e) = p.close(wall_clock_ms()).await {
                eprintln!("sluice: closing {}-{}: {e}", p.topic, p.index);
            }
        }
    }

    /// Periodic work on owned partitions: interval fsyncs and retention.
    pub async fn housekeeping(self: Rc<Self>, retention_check_ms: u64) {
        let mut last_retention = wall_clock_ms();
        while !self.stopped.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
            let now = wall_clock_ms();
            let streams: Vec<_> = self.native.streams.borrow().values().cloned().collect();
            for s in streams {
                s.housekeeping().await;
            }
            let parts: Vec<_> = self.partitions.borrow().values().cloned().collect();
            let retention_due = now.saturating_sub(last_retention) >= retention_check_ms;
            for p in parts {
                if let Err(e) = p.log.tick(now).await {
                    eprintln!("sluice: fsync of {}-{} failed: {e}", p.topic, p.index);
                }
                if retention_due {
                    if let Err(e) = p.log.enforce_retention(now).await {
                        eprintln!("sluice: retention of {}-{} failed: {e}", p.topic, p.index);
                    }
                }
            }
            if retention_due {
                last_retention = now;
            }
        }
    }
}

/// Accepts connections on this shard's SO_REUSEPORT `listener` until the broker stops, serving
/// each with `serve` as its own task (counted in `connections` for the shutdown drain).
pub async fn accept_loop<F>(
    shard: Rc<Shard>,
    listener: glommio::net::TcpListener,
    protocol: &'static str,
    serve: fn(Rc<Shard>, glommio::net::TcpStream) -> F,
) where
    F: Future<Output = std::io::Result<()>> + 'static,
{
    loop {
        let stop = shard.stop.notified();
        if shard.is_stopping() {
            break;
        }
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                let shard = shard.clone();
                shard.connections.set(shard.connections.get() + 1);
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    if let Err(e) = serve(shard.clone(), stream).await {
                        if e.kind() != std::io::ErrorKind::UnexpectedEof {
                            eprintln!("sluice: {protocol} connection {peer:?} closed: {e}");
                        }
                    }
                    shard.connections.set(shard.connections.get() - 1);
                    shard.idle.notify_all();
                })
                .detach();
            }
            Some(Err(e)) => {
                eprintln!("sluice: {protocol} accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}
