//! The broker process: shards ([`shard`]), partitions ([`partition`]), metadata
//! ([`metadata`]), configuration ([`config`]) and [`serve`], which runs it all.

pub mod config;
pub mod groups;
pub mod mail;
pub mod metadata;
pub mod partition;
pub mod read_ahead;
pub mod shard;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use self::config::BrokerConfig;
use self::metadata::Metadata;
use self::shard::{Shard, Shared};

/// How often owned partitions are checked against retention.ms / retention.bytes.
pub const RETENTION_CHECK_MS: u64 = 60_000;

/// Runs the broker until SIGTERM or SIGINT: one pinned glommio executor per shard, each
/// accepting Kafka connections on the same port (SO_REUSEPORT). Prints one line when every
/// shard is serving. On a signal: stop accepting, finish in-flight requests, sync every log.
pub fn serve(config: BrokerConfig) -> Result<(), String> {
    // A panic is a bug; a shard that died of one would leave its partitions unanswered behind
    // open sockets (clients hang). Stop the whole process instead, loudly: what was
    // acknowledged is on disk, and a supervisor restarts the broker.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("sluice: aborting after a panic (a bug: please report it)");
        std::process::abort();
    }));
    let mut config = config;
    config.shards = config.shards.max(1);
    let shards = config.shards;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", config.data_dir.display()))?;
    let metadata = Metadata::load(&config.data_dir).map_err(|e| e.to_string())?;
    if !Metadata::path(&config.data_dir).exists() {
        metadata
            .persist(&config.data_dir)
            .map_err(|e| format!("cannot write metadata: {e}"))?;
    }
    // Block the stop signals in every thread; the main thread waits for them below.
    let sigset = block_stop_signals();

    let endpoints: Vec<Option<mail::Endpoints>> =
        mail::mesh(shards).into_iter().map(Some).collect();
    let listen = config.kafka_listen;
    let shared = Arc::new(Shared::new(config, metadata));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    let endpoints = Arc::new(std::sync::Mutex::new(endpoints));
    let next_shard_id = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Shards are pinned inside the CPUs this process may use (taskset, cgroup cpusets): a
    // broker started on CPU 1 must not pin itself onto CPU 0.
    let placement = glommio::PoolPlacement::MaxSpread(shards, allowed_cpu_set());
    let pool = glommio::LocalExecutorPoolBuilder::new(placement)
        .io_memory(1 << 20)
        .name("sluice-shard")
        .on_all_shards({
            let shared = shared.clone();
            move || {
                let shared = shared.clone();
                let endpoints = endpoints.clone();
                let ready_tx = ready_tx.clone();
                let next_shard_id = next_shard_id.clone();
                async move {
                    let id = next_shard_id.fetch_add(1, Ordering::SeqCst);
                    let mail = endpoints.lock().expect("startup lock")[id]
                        .take()
                        .expect("one set of mail rings per shard");
                    run_shard(id, shared, mail, listen, ready_tx).await
                }
            }
        })
        .map_err(|e| format!("cannot start shards: {e}"))?;
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                shared.stopping.store(true, Ordering::SeqCst);
                let _ = pool.join_all();
                return Err(e);
            }
            Err(_) => return Err("a shard died during startup".into()),
        }
    }
    let native = match shared.config.native_listen {
        Some(a) => format!(", native on {a}"),
        None => String::new(),
    };
    println!(
        "sluice ready: kafka on {listen} (advertised {}:{}){native}, {shards} shard(s), data in {}",
        shared.config.advertised_host,
        shared.config.advertised_port,
        shared.config.data_dir.display()
    );
    let sig = wait_for_signal(&sigset);
    eprintln!("sluice: signal {sig}, stopping");
    shared.stopping.store(true, Ordering::SeqCst);
    for r in pool.join_all() {
        if let Err(e) = r {
            return Err(format!("a shard failed: {e:?}"));
        }
    }
    eprintln!("sluice: stopped cleanly");
    Ok(())
}

/// How often a shard looks at the stop flag the signal thread sets. (The signal thread is no
/// executor, and waking a glommio task from a foreign thread is what [`mail`] avoids.)
const STOP_POLL_MS: u64 = 20;

/// Wakes everything on this shard waiting for the stop once the signal thread asks for it.
async fn watch_for_stop(shard: std::rc::Rc<Shard>) {
    while !shard.shared.stopping.load(Ordering::SeqCst) {
        glommio::timer::sleep(std::time::Duration::from_millis(STOP_POLL_MS)).await;
    }
    shard.stop.notify_all();
}

async fn run_shard(
    id: usize,
    shared: Arc<Shared>,
    mail: mail::Endpoints,
    listen: std::net::SocketAddr,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) {
    let shard = Shard::new(id, shared);
    mail::Mail::start(&shard, mail);
    glommio::spawn_local(watch_for_stop(shard.clone())).detach();
    let listener = match start_shard(&shard, listen).await {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            // The shards that did start must not wait for this one at their shutdown barriers.
            shard.shared.drained.fetch_add(1, Ordering::SeqCst);
            shard.close_partitions().await;
            shard.shared.closed.fetch_add(1, Ordering::SeqCst);
            shard.stopped.set(true);
            return;
        }
    };
    let _ = ready.send(Ok(id));
    server_until_stopped(shard.clone(), listener).await;
    // Shutdown in phases across shards, so that no shard leaves while another still needs it
    // for a forwarded request: (1) drain in-flight requests, (2) sync every log, (3) exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while shard.connections.get() > 0 && std::time::Instant::now() < deadline {
        let idle = shard.idle.notified();
        if shard.connections.get() == 0 {
            break;
        }
        futures_lite::future::or(
            idle,
            glommio::timer::sleep(std::time::Duration::from_millis(50)),
        )
        .await;
    }
    barrier(&shard.shared.drained, shards_of(&shard)).await;
    shard.close_partitions().await;
    barrier(&shard.shared.closed, shards_of(&shard)).await;
    shard.stopped.set(true);
}

/// Opens what this shard owns (partitions, the offsets log, streams) and its listeners; returns
/// the Kafka listener.
async fn start_shard(
    shard: &std::rc::Rc<Shard>,
    listen: std::net::SocketAddr,
) -> Result<glommio::net::TcpListener, String> {
    let id = shard.id;
    if let Err(e) = shard.open_owned_partitions().await {
        return Err(format!("shard {id}: cannot open partitions: {e}"));
    }
    let limits = sluice_core::group::GroupLimits {
        session_timeout_ms_min: shard.shared.config.group_min_session_timeout_ms,
        ..Default::default()
    };
    let cfg = &shard.shared.config;
    let consumer = sluice_core::consumer_group::ConsumerGroupConfig {
        session_timeout_ms: cfg.group_consumer_session_timeout_ms,
        heartbeat_interval_ms: cfg.group_consumer_heartbeat_interval_ms,
        ..Default::default()
    };
    let offsets = groups::OffsetsConfig {
        retention_ms: cfg.offsets_retention_ms,
        ..Default::default()
    };
    match groups::GroupHome::open(&cfg.data_dir, id, limits, consumer, offsets).await {
        Ok(home) => {
            let home = std::rc::Rc::new(home);
            *shard.groups.borrow_mut() = Some(home.clone());
            let (s, s2) = (shard.clone(), shard.clone());
            glommio::spawn_local(home.run_timers(
                move || s.stopped.get(),
                move || groups::MetaTopics(s2.metadata()),
            ))
            .detach();
        }
        Err(e) => {
            return Err(format!("shard {id}: cannot open the offsets log: {e}"));
        }
    }
    let listener = match glommio::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            return Err(format!("cannot listen on {listen}: {e}"));
        }
    };
    let native_streams: Vec<String> = shard
        .metadata()
        .streams
        .keys()
        .filter(|n| shard.owner(n, 0) == id)
        .cloned()
        .collect();
    for name in native_streams {
        if let Err((_, m)) = crate::native::admin::open_stream(shard, &name).await {
            return Err(format!("shard {id}: cannot open stream {name}: {m}"));
        }
    }
    if let Some(addr) = shard.shared.config.native_listen {
        match glommio::net::TcpListener::bind(addr) {
            Ok(l) => {
                glommio::spawn_local(crate::native::server::accept_loop(shard.clone(), l)).detach();
            }
            Err(e) => {
                return Err(format!("cannot listen on {addr}: {e}"));
            }
        }
    }
    glommio::spawn_local(shard.clone().housekeeping(RETENTION_CHECK_MS)).detach();
    Ok(listener)
}

/// The online CPUs in this process's affinity mask; `None` (all online CPUs) if it cannot be
/// read.
fn allowed_cpu_set() -> Option<glommio::CpuSet> {
    let allowed = allowed_cpus()?;
    let set = glommio::CpuSet::online()
        .ok()?
        .filter(|l| allowed.contains(&l.cpu));
    (!set.is_empty()).then_some(set)
}

/// CPUs of the process's affinity mask (`sched_getaffinity`).
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect(),
        )
    }
}

fn shards_of(shard: &Shard) -> usize {
    shard.shared.config.shards.max(1)
}

/// Arrives at a barrier shared by all shards and waits (still serving jobs) for the others.
async fn barrier(counter: &std::sync::atomic::AtomicUsize, shards: usize) {
    counter.fetch_add(1, Ordering::SeqCst);
    while counter.load(Ordering::SeqCst) < shards {
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
    }
}

async fn server_until_stopped(shard: std::rc::Rc<Shard>, listener: glommio::net::TcpListener) {
    crate::kafka::server::accept_loop(shard, listener).await;
}

fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a zeroed sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` was initialised by block_stop_signals.
    unsafe {
        libc::sigwait(set, &mut sig);
    }
    sig
}
