//! Stream and consumer administration. Stream creation, update and deletion change metadata
//! on the metadata home (shard 0) — a file stream and its topic are added in one metadata
//! change — then the owner shard opens or drops the stream; everything else runs on the
//! stream's owner shard.

use std::collections::BTreeMap;
use std::rc::Rc;

use sluice_core::native::{status, AdminRequest, AdminResponse, Storage, StreamConfig};
use sluice_storage::wall_clock_ms;

use super::streams::{Refusal, StreamHome};
use crate::broker::metadata::{StreamMeta, TopicMeta};
use crate::broker::shard::Shard;

fn not_found(name: &str) -> Refusal {
    (status::NOT_FOUND, format!("stream {name} not found"))
}

/// Runs `f` with the stream's home on its owner shard.
async fn on_stream<T, F>(shard: &Rc<Shard>, name: &str, f: F) -> Result<T, Refusal>
where
    T: Send + 'static,
    F: FnOnce(Rc<Shard>, Rc<StreamHome>) -> crate::broker::shard::LocalFuture<Result<T, Refusal>>
        + Send
        + 'static,
{
    if !shard.metadata().streams.contains_key(name) {
        return Err(not_found(name));
    }
    let n = name.to_string();
    shard
        .submit_to(shard.owner(name, 0), move |s| {
            Box::pin(async move {
                let Some(home) = s.native.stream(&n) else {
                    return Err(not_found(&n));
                };
                f(s.clone(), home).await
            })
        })
        .await
}

pub async fn handle(shard: &Rc<Shard>, req: AdminRequest) -> Result<AdminResponse, Refusal> {
    match req {
        AdminRequest::StreamAdd(config) => add_stream(shard, config).await,
        AdminRequest::StreamUpdate(config) => update_stream(shard, config).await,
        AdminRequest::StreamInfo {
            name,
            subjects_filter,
        } => {
            on_stream(shard, &name, move |_, h| {
                Box::pin(async move { Ok(AdminResponse::Stream(h.info(&subjects_filter))) })
            })
            .await
        }
        AdminRequest::StreamList => {
            let names: Vec<String> = shard.metadata().streams.keys().cloned().collect();
            let mut out = Vec::new();
            for n in names {
                if let Ok(AdminResponse::Stream(i)) = on_stream(shard, &n, |_, h| {
                    Box::pin(async move { Ok(AdminResponse::Stream(h.info(""))) })
                })
                .await
                {
                    out.push(i);
                }
            }
            Ok(AdminResponse::Streams(out))
        }
        AdminRequest::StreamDelete(name) => delete_stream(shard, name).await,
        AdminRequest::StreamPurge { name, request } => {
            on_stream(shard, &name, move |_, h| {
                Box::pin(async move { Ok(AdminResponse::Purged(h.purge(&request))) })
            })
            .await
        }
        AdminRequest::StreamGet {
            name,
            seq,
            last_by_subject,
        } => {
            on_stream(shard, &name, move |_, h| {
                Box::pin(async move { h.get(seq, &last_by_subject).await.map(AdminResponse::Msg) })
            })
            .await
        }
        AdminRequest::ConsumerAdd { stream, config } => {
            if !config.dead_letter_stream.is_empty()
                && !shard
                    .metadata()
                    .streams
                    .contains_key(&config.dead_letter_stream)
            {
                return Err((
                    status::BAD_REQUEST,
                    format!(
                        "dead-letter stream {} does not exist",
                        config.dead_letter_stream
                    ),
                ));
            }
            if config.dead_letter_stream == stream {
                return Err((
                    status::BAD_REQUEST,
                    "a stream cannot be its own dead-letter stream".into(),
                ));
            }
            on_stream(shard, &stream, move |s, h| {
                Box::pin(async move { h.add_consumer(&s, config).map(AdminResponse::Consumer) })
            })
            .await
        }
        AdminRequest::ConsumerInfo { stream, name } => {
            on_stream(shard, &stream, move |_, h| {
                Box::pin(async move { h.consumer_info(&name).map(AdminResponse::Consumer) })
            })
            .await
        }
        AdminRequest::ConsumerList(stream) => {
            on_stream(shard, &stream, move |_, h| {
                Box::pin(async move { Ok(AdminResponse::Consumers(h.consumer_infos())) })
            })
            .await
        }
        AdminRequest::ConsumerDelete { stream, name } => {
            on_stream(shard, &stream, move |_, h| {
                Box::pin(async move { h.delete_consumer(&name).map(|_| AdminResponse::Deleted) })
            })
            .await
        }
    }
}

/// The stream's topic keeps everything: the stream's own limits decide what goes.
fn stream_topic_configs() -> BTreeMap<String, String> {
    [
        ("retention.ms".to_string(), "-1".to_string()),
        ("retention.bytes".to_string(), "-1".to_string()),
    ]
    .into()
}

async fn add_stream(shard: &Rc<Shard>, config: StreamConfig) -> Result<AdminResponse, Refusal> {
    sluice_core::stream::validate_config(&config).map_err(|m| (status::BAD_REQUEST, m))?;
    let name = config.name.clone();
    let created = shard
        .submit_to(0, move |home| {
            Box::pin(async move {
                let mut meta = (*home.metadata()).clone();
                if let Some(existing) = meta.streams.get(&config.name) {
                    if existing.config == config {
                        return Ok(false);
                    }
                    return Err((
                        status::CONFLICT,
                        format!(
                            "stream {} already exists with a different configuration",
                            config.name
                        ),
                    ));
                }
                if meta.topics.contains_key(&config.name) {
                    return Err((
                        status::CONFLICT,
                        format!("a Kafka topic named {} already exists", config.name),
                    ));
                }
                check_overlap(&meta.streams, &config)?;
                if config.storage == Storage::File {
                    meta.topics.insert(
                        config.name.clone(),
                        TopicMeta {
                            id: uuid::Uuid::new_v4(),
                            partitions: 1,
                            configs: stream_topic_configs(),
                        },
                    );
                }
                meta.streams.insert(
                    config.name.clone(),
                    StreamMeta {
                        config: config.clone(),
                        created_ms: wall_clock_ms() as i64,
                    },
                );
                home.publish_metadata(meta)
                    .map_err(|e| (status::INTERNAL, format!("cannot persist metadata: {e}")))?;
                Ok(true)
            })
        })
        .await?;
    let _ = created;
    open_on_owner(shard, &name).await
}

fn check_overlap(
    streams: &BTreeMap<String, StreamMeta>,
    config: &StreamConfig,
) -> Result<(), Refusal> {
    for (name, s) in streams {
        if *name == config.name {
            continue;
        }
        for a in &s.config.subjects {
            for b in &config.subjects {
                if sluice_core::subject::overlaps(a, b) {
                    return Err((
                        status::BAD_REQUEST,
                        format!("subjects overlap with stream {name} ('{a}' and '{b}')"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Opens the stream on its owner shard (if not open yet) and returns its info.
async fn open_on_owner(shard: &Rc<Shard>, name: &str) -> Result<AdminResponse, Refusal> {
    let n = name.to_string();
    shard
        .submit_to(shard.owner(name, 0), move |s| {
            Box::pin(async move {
                open_stream(&s, &n).await?;
                let home = s.native.stream(&n).ok_or_else(|| not_found(&n))?;
                Ok(AdminResponse::Stream(home.info("")))
            })
        })
        .await
}

/// Opens a stream this shard owns (at startup or after creation).
pub async fn open_stream(shard: &Rc<Shard>, name: &str) -> Result<(), Refusal> {
    if shard.native.stream(name).is_some() {
        return Ok(());
    }
    let meta = shard.metadata();
    let sm = meta.streams.get(name).ok_or_else(|| not_found(name))?;
    let home = Rc::new(
        StreamHome::open(shard, sm)
            .await
            .map_err(|m| (status::INTERNAL, m))?,
    );
    shard
        .native
        .streams
        .borrow_mut()
        .insert(name.to_string(), home.clone());
    home.start_push_all(shard);
    Ok(())
}

async fn update_stream(shard: &Rc<Shard>, config: StreamConfig) -> Result<AdminResponse, Refusal> {
    sluice_core::stream::validate_config(&config).map_err(|m| (status::BAD_REQUEST, m))?;
    let name = config.name.clone();
    let c = config.clone();
    shard
        .submit_to(0, move |home| {
            Box::pin(async move {
                let mut meta = (*home.metadata()).clone();
                let Some(existing) = meta.streams.get_mut(&c.name) else {
                    return Err(not_found(&c.name));
                };
                if existing.config.storage != c.storage || existing.config.retention != c.retention
                {
                    return Err((
                        status::BAD_REQUEST,
                        "storage and retention cannot change after creation".into(),
                    ));
                }
                existing.config = c.clone();
                check_overlap(&meta.streams, &c)?;
                home.publish_metadata(meta)
                    .map_err(|e| (status::INTERNAL, format!("cannot persist metadata: {e}")))
            })
        })
        .await?;
    on_stream(shard, &name, move |_, h| {
        Box::pin(async move {
            h.state.borrow_mut().config = config;
            h.changed.notify_all();
            Ok(AdminResponse::Stream(h.info("")))
        })
    })
    .await
}

async fn delete_stream(shard: &Rc<Shard>, name: String) -> Result<AdminResponse, Refusal> {
    let n = name.clone();
    let file = shard
        .submit_to(0, move |home| {
            Box::pin(async move {
                let mut meta = (*home.metadata()).clone();
                let Some(s) = meta.streams.remove(&n) else {
                    return Err(not_found(&n));
                };
                let file = s.config.storage == Storage::File;
                if file {
                    meta.topics.remove(&n);
                }
                home.publish_metadata(meta)
                    .map_err(|e| (status::INTERNAL, format!("cannot persist metadata: {e}")))?;
                Ok(file)
            })
        })
        .await?;
    shard
        .submit_to(shard.owner(&name, 0), move |s| {
            Box::pin(async move {
                if let Some(home) = s.native.streams.borrow_mut().remove(&name) {
                    home.changed.notify_all();
                    home.remove_files();
                }
                if file {
                    s.drop_partition(&name, 0).await;
                }
            })
        })
        .await;
    Ok(AdminResponse::Deleted)
}
