//! The invalidation stream for a cache tier in front of the store: a subscriber on the
//! invalidation channel that the scripts publish on, a heartbeat that proves the stream works
//! and detects an emptied database, and the connection events after which a cache must flush.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use fred::clients::SubscriberClient;
use sessile_core::invalidation::{
    FlushCause, Invalidation, InvalidationSink, Listening, PublishesInvalidations,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::*;

/// The listener's state: whether it told the sink it paused, and when its own heartbeat last came
/// back.
struct Stream {
    sink: InvalidationSink,
    /// Locked while the sink is called, so that a pause and a resume reach it in the order they
    /// were decided.
    paused: Mutex<bool>,
    start: Instant,
    /// Milliseconds after `start` when this listener's heartbeat last came back.
    seen: AtomicU64,
    /// Pauses so far. A heartbeat carries the count it was sent at, and only one sent since the
    /// latest pause resumes: an older one, still queued when the connection dropped, proves
    /// nothing about the new subscription.
    pauses: AtomicU64,
}

impl Stream {
    fn pause(&self, cause: FlushCause) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        // A new pause, or a connection event while paused (the subscription changed again):
        // heartbeats sent before it prove nothing. A watchdog tick while already paused changes
        // nothing, so that a heartbeat on its way still counts.
        if !*paused || cause == FlushCause::Reconnect {
            self.pauses.fetch_add(1, Ordering::AcqRel);
        }
        if !*paused {
            *paused = true;
            tracing::warn!(
                cause = cause.as_str(),
                "session cache paused: invalidations may be lost"
            );
            (self.sink)(Invalidation::Paused(cause));
        }
    }

    /// This listener's heartbeat sent when `sent_at` pauses had happened came back: if none
    /// happened since, the subscription works.
    fn heard_own_heartbeat(&self, sent_at: u64) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        if sent_at != self.pauses.load(Ordering::Acquire) {
            return;
        }
        self.seen.store(self.now(), Ordering::Relaxed);
        if *paused {
            *paused = false;
            tracing::info!("session cache resumed: the invalidation stream works");
            (self.sink)(Invalidation::Resumed);
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Handles one message of the channel.
    fn message(&self, text: &str, nonce: &str) {
        if let Some(beat) = text.strip_prefix("hb:") {
            let (from, marker) = beat.rsplit_once(':').unwrap_or((beat, "1"));
            if marker == "0" {
                tracing::warn!("session cache flushed: the database was emptied");
                (self.sink)(Invalidation::Flush(FlushCause::Flushall));
            }
            let sent_at = from
                .strip_prefix(nonce)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(sent_at) = sent_at {
                self.heard_own_heartbeat(sent_at);
            }
            return;
        }
        let mut parts = text.splitn(3, ':');
        let (Some(id), Some(version)) = (parts.next(), parts.next()) else {
            return;
        };
        let at = parts.next().and_then(|ms| ms.parse().ok());
        let Some(id) = SessionId::from_hex(id) else {
            return;
        };
        let version = match version {
            "-" => None,
            v => match v.parse() {
                Ok(v) => Some(v),
                Err(_) => return,
            },
        };
        (self.sink)(Invalidation::Changed { id, version, at });
    }
}

/// Stops the stream's tasks and closes its connection when the [`Listening`] is dropped.
struct Guard {
    tasks: Vec<JoinHandle<()>>,
    subscriber: SubscriberClient,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let subscriber = self.subscriber.clone();
            runtime.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(1), subscriber.quit()).await;
            });
        }
    }
}

impl PublishesInvalidations for RedisStore {
    /// Subscribes a connection of its own to the store's invalidation channel.
    ///
    /// The sink hears [`Invalidation::Paused`] until the listener's first heartbeat (every
    /// [`invalidation_heartbeat`](crate::RedisStoreBuilder::invalidation_heartbeat)) comes back
    /// through the channel, and again whenever one has not come back within three periods or the
    /// subscriber's connection fails; a heartbeat that finds the marker key gone (the database was
    /// emptied) is a [`FlushCause::Flushall`] for every listener; a reconnect of any pool
    /// connection (perhaps to a promoted replica without the latest writes) is a
    /// [`FlushCause::Reconnect`], and a Cluster topology change a [`FlushCause::Topology`].
    async fn listen(&self, sink: InvalidationSink) -> Result<Listening, StoreError> {
        let inner = self.inner.clone();
        let model = inner.pool.next();
        let mut perf = model.perf_config();
        // Room for bursts (a "log out everywhere" of many sessions); falling behind is a flush.
        perf.broadcast_channel_capacity = 4096;
        let subscriber = SubscriberClient::new(
            model.client_config(),
            Some(perf),
            Some(model.connection_config().clone()),
            model.client_reconnect_policy(),
        );
        let mut messages = subscriber.message_rx();
        let mut errors = subscriber.error_rx();
        let mut reconnects = subscriber.reconnect_rx();
        let connect = async {
            subscriber.init().await?;
            subscriber.subscribe(inner.keys.channel()).await
        };
        match tokio::time::timeout(inner.command_timeout.max(Duration::from_secs(1)), connect).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                stop_client(&subscriber).await;
                return Err(inner.fail(e));
            }
            Err(_) => {
                stop_client(&subscriber).await;
                return Err(StoreError::Timeout(inner.command_timeout));
            }
        }
        let stream = Arc::new(Stream {
            sink,
            paused: Mutex::new(false),
            start: Instant::now(),
            seen: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        });
        stream.pause(FlushCause::Reconnect);
        let mut nonce = String::new();
        sessile_core::push_hex(&mut nonce, WriteId::random().as_bytes());

        let mut tasks = Vec::new();
        let (s, own) = (stream.clone(), nonce.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => {
                        if let Some(text) = message.value.as_str() {
                            s.message(&text, &own);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "session cache flushed: invalidations were missed");
                        (s.sink)(Invalidation::Flush(FlushCause::Lagged));
                    }
                    Err(RecvError::Closed) => {
                        s.pause(FlushCause::Lost);
                        return;
                    }
                }
            }
        }));
        let s = stream.clone();
        tasks.push(tokio::spawn(async move {
            while errors.recv().await.is_ok() {
                s.pause(FlushCause::Reconnect);
            }
        }));
        let (s, sub) = (stream.clone(), subscriber.clone());
        tasks.push(tokio::spawn(async move {
            while reconnects.recv().await.is_ok() {
                // Paused until a heartbeat comes back through the new subscription.
                s.pause(FlushCause::Reconnect);
                if let Err(e) = sub.resubscribe_all().await {
                    tracing::warn!(error = %e, "invalidation channel not resubscribed yet");
                }
            }
        }));
        for client in inner.pool.clients() {
            let (s, mut reconnects) = (stream.clone(), client.reconnect_rx());
            tasks.push(tokio::spawn(async move {
                while reconnects.recv().await.is_ok() {
                    tracing::info!("session cache flushed: a store connection reconnected");
                    (s.sink)(Invalidation::Flush(FlushCause::Reconnect));
                }
            }));
            let (s, mut changes) = (stream.clone(), client.cluster_change_rx());
            tasks.push(tokio::spawn(async move {
                while changes.recv().await.is_ok() {
                    tracing::info!("session cache flushed: the cluster's topology changed");
                    (s.sink)(Invalidation::Flush(FlushCause::Topology));
                }
            }));
        }
        let (s, store) = (stream.clone(), inner.clone());
        tasks.push(tokio::spawn(async move {
            let period = store.heartbeat;
            let late = 3 * u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let marker = store.keys.cache_marker();
                let from = format!("{nonce}.{}", s.pauses.load(Ordering::Acquire));
                let beat = store.run(&store.scripts.heartbeat, marker, vec![Value::from(from)]);
                // A heartbeat that takes longer than a period is as good as lost.
                let _ = tokio::time::timeout(period, beat).await;
                if s.now().saturating_sub(s.seen.load(Ordering::Relaxed)) > late {
                    s.pause(FlushCause::Lost);
                }
            }
        }));
        Ok(Listening::new(Guard { tasks, subscriber }))
    }
}

async fn stop_client(client: &SubscriberClient) {
    let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> (Stream, Arc<Mutex<Vec<Invalidation>>>) {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = heard.clone();
        let stream = Stream {
            sink: Arc::new(move |e| h.lock().expect("lock").push(e)),
            paused: Mutex::new(false),
            start: Instant::now(),
            seen: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        };
        (stream, heard)
    }

    /// A heartbeat sent before the subscriber's connection dropped, read after, does not resume
    /// the cache; one sent after the drop does.
    #[test]
    fn only_a_heartbeat_sent_since_the_latest_pause_resumes() {
        let (s, heard) = stream();
        s.pause(FlushCause::Reconnect);
        s.message("hb:n.1:1", "n");
        s.pause(FlushCause::Reconnect);
        s.message("hb:n.1:1", "n");
        assert_eq!(
            *heard.lock().expect("lock"),
            [
                Invalidation::Paused(FlushCause::Reconnect),
                Invalidation::Resumed,
                Invalidation::Paused(FlushCause::Reconnect),
            ],
            "the old heartbeat resumed the cache"
        );
        // A watchdog tick while paused does not outdate a heartbeat on its way.
        s.pause(FlushCause::Lost);
        s.message("hb:n.2:1", "n");
        s.message("hb:other.2:0", "n");
        assert_eq!(
            heard.lock().expect("lock")[3..],
            [
                Invalidation::Resumed,
                Invalidation::Flush(FlushCause::Flushall)
            ]
        );
    }
}
