//! Publishing: the publish script's call, and what its answer means.
//!
//! On one primary a request is one script, whatever its channels. On a Redis Cluster a
//! script may only touch one slot, so a batch is split by slot (events keep their order
//! within a slot, and per channel, which is all the order the API promises) and each
//! part is one script, run concurrently. A part's `Idempotency-Key` record lives in the
//! slot of its first channel and holds the whole batch's fingerprint, so a retry of the
//! same batch finds each part that was written and writes only the others. What a part
//! failing means for the request (docs/api.md, "Batches on Redis Cluster"):
//!
//! - every part refused before it ran: `503`, nothing published;
//! - anything else short of all parts written: `504 publish_outcome_unknown`, with the
//!   ids of the events known to be written (`null` for the others): a retry with the same
//!   `Idempotency-Key` is safe;
//! - an `Idempotency-Key` that named another batch: `422` when no part was written, else
//!   the `504` above.

use redis::Value;
use ssegate_core::{EntryId, Epoch, NewEvent};

use super::cluster::{Call, Resend, by_slot};
use super::codec::{self, BadReply};
use super::exec::{Failed, Ran};
use super::{RedisBroker, bad, ms, stream_ttl_ms};
use crate::clock::Clock;
use crate::error::BrokerOp;
use crate::fingerprint::fingerprint;
use crate::{BrokerError, KnownIds, Published};

/// How one part (one script) ended.
enum Part {
    Done(Published),
    Failed(BrokerError),
}

pub(super) async fn publish(
    b: &RedisBroker,
    events: Vec<NewEvent>,
    idempotency_key: Option<&str>,
) -> Result<Published, BrokerError> {
    use crate::Broker;
    if events.is_empty() {
        return Ok(Published {
            epoch: b.epoch().await?,
            ids: Vec::new(),
        });
    }
    let fp = idempotency_key
        .map(|_| fingerprint(&events))
        .unwrap_or_default();
    let keys = &b.inner.keys;
    let groups: Vec<(u16, Vec<usize>)> = if b.inner.backend.is_cluster() {
        by_slot(0..events.len(), |&i| keys.stream(&events[i].channel))
    } else {
        vec![(0, (0..events.len()).collect())]
    };
    if let [(_, all)] = groups.as_slice() {
        return match part(b, &events, all, idempotency_key, &fp).await {
            Part::Done(p) => Ok(p),
            Part::Failed(e) => Err(e),
        };
    }
    let parts = futures_util::future::join_all(
        groups
            .iter()
            .map(|(_, idx)| part(b, &events, idx, idempotency_key, &fp)),
    )
    .await;
    let mut ids: Vec<Option<EntryId>> = vec![None; events.len()];
    let mut epoch = None;
    let (mut written, mut refused, mut conflict, mut why) = (false, true, false, String::new());
    // A part whose outcome is unknown may be in its stream: the batch is then never
    // answered "not published" (422), even if another part's key conflicted.
    let mut maybe = false;
    for ((_, idx), part) in groups.iter().zip(parts) {
        match part {
            Part::Done(p) => {
                written = true;
                refused = false;
                epoch = Some(p.epoch);
                for (&i, id) in idx.iter().zip(p.ids) {
                    ids[i] = Some(id);
                }
            }
            Part::Failed(BrokerError::IdempotencyConflict) => {
                conflict = true;
                refused = false;
            }
            Part::Failed(BrokerError::OutcomeUnknown { known, reason }) => {
                refused = false;
                maybe = true;
                why = reason;
                if let Some(k) = known {
                    epoch = Some(k.epoch);
                    for (&i, id) in idx.iter().zip(k.ids) {
                        ids[i] = id;
                    }
                }
            }
            Part::Failed(e) => why = e.to_string(),
        }
    }
    match (ids.iter().all(Option::is_some), epoch) {
        (true, Some(epoch)) => Ok(Published {
            epoch,
            ids: ids.into_iter().flatten().collect(),
        }),
        _ if conflict && !written && !maybe => Err(BrokerError::IdempotencyConflict),
        _ if refused => Err(BrokerError::Unavailable(why)),
        (_, epoch) => Err(BrokerError::OutcomeUnknown {
            known: epoch.map(|epoch| KnownIds { epoch, ids }),
            reason: format!("a batch over several slots was written in part: {why}"),
        }),
    }
}

/// One script for the events at `idx` (all in one slot on a cluster).
async fn part(
    b: &RedisBroker,
    events: &[NewEvent],
    idx: &[usize],
    idempotency_key: Option<&str>,
    fp: &str,
) -> Part {
    match run(b, events, idx, idempotency_key, fp).await {
        Ok(p) => Part::Done(p),
        Err(e) => Part::Failed(e),
    }
}

async fn run(
    b: &RedisBroker,
    events: &[NewEvent],
    idx: &[usize],
    idempotency_key: Option<&str>,
    fp: &str,
) -> Result<Published, BrokerError> {
    let inner = &b.inner;
    let (keys, history) = (&inner.keys, &inner.history);
    let first = &events[idx[0]].channel;
    let cluster = inner.backend.is_cluster();
    let mut call = Call::default();
    b.epoch_head(&mut call, keys.meta(first)).await?;
    match idempotency_key {
        Some(k) => call.key(keys.idempotency(first, k)),
        None if cluster => call.key(keys.meta(first)),
        None => call.key(keys.epoch()),
    };
    // Keys outlive their events by one more max age: the ids they keep tell a returning
    // cursor whether it missed anything.
    call.arg(history.max_len)
        .arg(ms(history.max_age))
        .arg(stream_ttl_ms(history))
        .arg(ms(history.idempotency_ttl).max(1))
        .arg(fp)
        .arg(idx.len())
        .arg(if cluster { "SPUBLISH" } else { "PUBLISH" });
    let now = inner.clock.now_ms();
    for &i in idx {
        let e = &events[i];
        call.key(keys.stream(&e.channel))
            .key(keys.meta(&e.channel))
            .key(keys.live(&e.channel));
        call.arg(e.event_type.as_ref().map_or("", |t| t.as_str()))
            .arg(e.data.kind().tag())
            .arg(e.data.as_str())
            .arg(now)
            .arg(e.trace.as_deref().unwrap_or(""));
    }
    // Until the script is sent, a failure means "not published" (503); from then on, one
    // that leaves the outcome open is said so (504, see `OutcomeUnknown`).
    let (reply, ran) = inner
        .backend
        .script(
            BrokerOp::Publish,
            inner.config.timeout,
            &keys.stream(first),
            &inner.scripts.publish,
            &call,
            Resend::Never,
        )
        .await
        .map_err(|f| match f {
            Failed::NotRun(e) => e,
            Failed::MaybeRan(why) => BrokerError::OutcomeUnknown {
                known: None,
                reason: why,
            },
        })?;
    let published = published(b, &reply, fp).map_err(|e| match e {
        BrokerError::IdempotencyConflict => e,
        other => BrokerError::OutcomeUnknown {
            known: None,
            reason: other.to_string(),
        },
    })?;
    wait_replicas(b, ran, published).await
}

/// The ids from the publish script's reply.
fn published(b: &RedisBroker, reply: &Value, fp: &str) -> Result<Published, BrokerError> {
    let parts = codec::array(reply).map_err(bad)?;
    let [status, epoch, rest] = parts else {
        return Err(bad(BadReply("publish reply")));
    };
    let epoch: Epoch = codec::epoch(codec::text(epoch).map_err(bad)?).map_err(bad)?;
    if !b.inner.backend.is_cluster() {
        b.remember_epoch(epoch);
    }
    let mut words = codec::text(rest).map_err(bad)?.split(' ');
    if codec::text(status).map_err(bad)? == "dup" && words.next() != Some(fp) {
        return Err(BrokerError::IdempotencyConflict);
    }
    let ids = words
        .map(|w| codec::entry_id(w).map_err(bad))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Published { epoch, ids })
}

/// `WAIT` on the publishing connection for `min_replicas`; fewer in time is an unknown
/// outcome (the primary has the events, a failover may lose them).
async fn wait_replicas(
    b: &RedisBroker,
    mut ran: Ran,
    published: Published,
) -> Result<Published, BrokerError> {
    let config = &b.inner.config;
    let want = config.min_replicas;
    if want == 0 {
        return Ok(published);
    }
    let wait = redis::cmd("WAIT")
        .arg(want)
        .arg(ms(config.replica_timeout).max(1))
        .to_owned();
    let generation = ran.generation();
    let acked = tokio::time::timeout(
        config.replica_timeout + config.timeout,
        ran.query::<i64>(&wait),
    )
    .await;
    match &acked {
        Ok(Ok(_)) => b.inner.backend.give_back(ran),
        _ => ran.suspect(),
    }
    let why = match acked {
        Ok(Ok(n)) if n >= i64::from(want) => return Ok(published),
        Ok(Ok(n)) => format!(
            "{n} of {want} replicas confirmed within {:?}",
            config.replica_timeout
        ),
        Ok(Err(e)) => {
            b.inner.backend.check(generation, &e);
            format!("WAIT failed: {e}")
        }
        Err(_) => "WAIT timed out".to_owned(),
    };
    metrics::counter!(ssegate_core::metric_names::PUBLISH_REPLICA_TIMEOUTS).increment(1);
    Err(BrokerError::OutcomeUnknown {
        known: Some(published.into()),
        reason: why,
    })
}
