//! Where the node table comes from at run time: a file, or a Redis key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{
    ClientLike as _, EventInterface as _, KeysInterface as _, PubsubInterface as _,
};
use sessile_affinity::NodeTable;

use crate::control::Control;

/// Applies the table in `text` if it parses; a bad table is logged, counted, and returned as the
/// error, and the old one stays. `source` labels the log and the metric.
pub fn apply(
    control: &Control,
    text: &str,
    source: &'static str,
) -> Result<(), sessile_affinity::TableError> {
    match NodeTable::parse(text) {
        Ok(table) => {
            let nodes = table.nodes().len();
            if table != control.configured() {
                tracing::info!(source, nodes, "node table changed");
                metrics::counter!("sessile_edge_table_updates_total", "source" => source, "outcome" => "applied")
                    .increment(1);
                control.configure(table);
            }
            Ok(())
        }
        Err(e) => {
            tracing::warn!(source, error = %e, "node table refused; the previous one stays");
            metrics::counter!("sessile_edge_table_updates_total", "source" => source, "outcome" => "refused")
                .increment(1);
            Err(e)
        }
    }
}

/// Reads the table in `path` every `period` and applies it when it changed. Stops when the
/// handle is aborted.
pub fn watch_file(
    path: PathBuf,
    control: Arc<Control>,
    period: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<String> = None;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match tokio::fs::read_to_string(&path).await {
                Ok(text) if last.as_deref() != Some(&text) => {
                    let _ = apply(&control, &text, "file");
                    last = Some(text);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "node table unreadable")
                }
            }
        }
    })
}

/// Keeps the table in the Redis string `key` applied: read at start, again whenever a message
/// is published on the channel named `key` (the announcement: `SET key ...` then
/// `PUBLISH key changed`), after the subscriber reconnects, and every `resync` in case a message
/// was missed. Fails if Redis cannot be reached at start.
pub async fn watch_redis(
    url: &str,
    key: String,
    control: Arc<Control>,
    resync: Duration,
) -> Result<tokio::task::JoinHandle<()>, fred::error::Error> {
    let config = fred::types::config::Config::from_url(url)?;
    let client = fred::types::Builder::from_config(config.clone()).build()?;
    let subscriber = fred::types::Builder::from_config(config).build_subscriber_client()?;
    client.init().await?;
    subscriber.init().await?;
    let _resubscribe = subscriber.manage_subscriptions();
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    subscriber.subscribe(key.as_str()).await?;
    read(&client, &key, &control).await;
    Ok(tokio::spawn(async move {
        let _keep: (Client, SubscriberClient) = (client.clone(), subscriber);
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = messages.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = m {
                        return;
                    }
                }
                r = reconnects.recv() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            read(&client, &key, &control).await;
        }
    }))
}

async fn read(client: &Client, key: &str, control: &Control) {
    match client.get::<Option<String>, _>(key).await {
        Ok(Some(text)) => {
            let _ = apply(control, &text, "redis");
        }
        Ok(None) => tracing::warn!(key, "node table key missing; the previous table stays"),
        Err(e) => tracing::warn!(key, error = %e, "node table not read"),
    }
}
