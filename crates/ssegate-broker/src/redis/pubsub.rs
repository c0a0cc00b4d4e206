//! The node's one pub/sub connection.
//!
//! The hub tells this task when a channel gains its first local subscriber or loses its
//! last one ([`Observer`]); the task SUBSCRIBEs / UNSUBSCRIBEs accordingly. Every message
//! is decoded once and its `Arc` handed to the hub.
//!
//! Nothing here has to be perfectly timed, because live delivery checks itself (each event
//! carries its channel's previous id, and a stream that sees a hole reads history): after
//! a SUBSCRIBE is confirmed the channel's streams are told to re-read history from their
//! cursors (anything published before the subscription was active comes from there), and
//! after a reconnect every stream on the node is. A lost connection (Redis restart,
//! `CLIENT KILL TYPE pubsub`, network) is retried with jittered exponential backoff.

use std::time::Duration;

use futures_util::StreamExt;
use ssegate_core::ChannelName;
use tokio::sync::mpsc;

use super::codec;
use super::keys::Keys;
use crate::hub::{Hub, HubObserver};

#[derive(Debug)]
pub(crate) enum Cmd {
    Subscribe(ChannelName),
    Unsubscribe(ChannelName),
}

/// Feeds hub subscription changes to the pub/sub task.
#[derive(Debug)]
pub(crate) struct Observer {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl Observer {
    pub(crate) fn new(tx: mpsc::UnboundedSender<Cmd>) -> Self {
        Self { tx }
    }
}

impl HubObserver for Observer {
    fn first_subscriber(&self, channel: &ChannelName) {
        let _ = self.tx.send(Cmd::Subscribe(channel.clone()));
    }

    fn last_unsubscribed(&self, channel: &ChannelName) {
        let _ = self.tx.send(Cmd::Unsubscribe(channel.clone()));
    }
}

/// Stops the task when the broker is dropped.
#[derive(Debug)]
pub(crate) struct Handle(tokio::task::JoinHandle<()>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub(crate) fn spawn(
    client: redis::Client,
    hub: Hub,
    keys: Keys,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    timeout: Duration,
) -> Handle {
    use tracing::Instrument;
    Handle(tokio::spawn(
        run(client, hub, keys, cmds, timeout).in_current_span(),
    ))
}

fn jittered(d: Duration) -> Duration {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(ms / 2 + fastrand::u64(0..=ms / 2))
}

async fn run(
    client: redis::Client,
    hub: Hub,
    keys: Keys,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    timeout: Duration,
) {
    let mut backoff = BACKOFF_MIN;
    let mut connected_before = false;
    loop {
        let conn = match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "pub/sub connection failed");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(_) => {
                tracing::warn!(retry_in = ?backoff, "pub/sub connection timed out");
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (mut sink, mut stream) = conn.split();
        let wanted: Vec<String> = hub.channels().iter().map(|c| keys.live(c)).collect();
        if !wanted.is_empty() {
            if let Err(e) = tokio::time::timeout(timeout, sink.subscribe(&wanted)).await {
                tracing::warn!(error = %e, "re-subscribing failed; reconnecting");
                continue;
            }
        }
        if connected_before {
            tracing::info!(
                channels = wanted.len(),
                "pub/sub reconnected; catching streams up"
            );
        }
        // Whatever was published while we were not subscribed is in the streams.
        hub.resync_all();
        connected_before = true;
        backoff = BACKOFF_MIN;

        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        broker_error("pubsub");
                        tracing::warn!("pub/sub connection lost; reconnecting");
                        break;
                    };
                    deliver(&hub, &keys, msg.get_channel_name(), msg.get_payload_bytes());
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    let ok = match cmd {
                        Cmd::Subscribe(ch) => {
                            let res = tokio::time::timeout(timeout, sink.subscribe(keys.live(&ch))).await;
                            let ok = matches!(res, Ok(Ok(())));
                            if ok {
                                // Events published before the subscription was active.
                                hub.resync(&ch);
                            }
                            ok
                        }
                        Cmd::Unsubscribe(ch) => {
                            let res = tokio::time::timeout(timeout, sink.unsubscribe(keys.live(&ch))).await;
                            matches!(res, Ok(Ok(())))
                        }
                    };
                    if !ok {
                        tracing::warn!("pub/sub (un)subscribe failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

pub(crate) fn broker_error(op: &'static str) {
    metrics::counter!(ssegate_core::metric_names::BROKER_ERRORS, "op" => op).increment(1);
}

fn deliver(hub: &Hub, keys: &Keys, live: &str, payload: &[u8]) {
    let Some(channel) = keys.channel_of_live(live) else {
        return;
    };
    match codec::live_message(channel.clone(), payload) {
        Ok(event) => {
            crate::trace::delivered(&event, hub.subscriber_count(&event.channel));
            hub.send(std::sync::Arc::new(event));
        }
        Err(e) => {
            // Never guess: the streams read this channel's history instead.
            tracing::warn!(error = %e, %channel, "undecodable live message");
            hub.resync(&channel);
        }
    }
}
