//! Where commands go: one primary (fixed, or found through Sentinel) over a pool, or a
//! Redis Cluster through the [`Router`]. The broker builds each script call once
//! ([`Call`]) and runs it here; what a failure means is the same for both:
//!
//! - [`Failed::NotRun`]: Redis did not run it (no connection, refused as a whole): a
//!   publish answers 503;
//! - [`Failed::MaybeRan`]: it was sent and may have run (no reply in time, a broken
//!   connection, an error the script raised after writing): a publish answers 504.
//!
//! Every failure is counted by its operation.

use std::sync::Arc;

use deadpool::managed::{Object, PoolError, TimeoutType};
use redis::Value;

use super::cluster::{Call, Lua, Request, Resend, RouteError, Routed, Router, slots};
use super::pooled;
use super::primary::{self, unavailable};
use super::pubsub::broker_error;
use crate::{BrokerError, BrokerOp};

/// How commands reach Redis.
#[derive(Debug)]
pub(crate) enum Backend {
    /// One primary, over a pool of connections.
    Single {
        pool: pooled::Pool,
        primary: Arc<primary::Primary>,
    },
    /// A Redis Cluster, routed by slot.
    Cluster(Arc<Router>),
}

/// A failed command.
#[derive(Debug)]
pub(crate) enum Failed {
    NotRun(BrokerError),
    MaybeRan(String),
}

impl Failed {
    /// For commands whose outcome does not matter to the caller (reads): unavailable.
    pub(crate) fn unavailable(self) -> BrokerError {
        match self {
            Self::NotRun(e) => e,
            Self::MaybeRan(why) => BrokerError::Unavailable(why),
        }
    }
}

/// The connection a script ran on, kept for a `WAIT` after it.
pub(crate) enum Ran {
    Pooled(Object<pooled::Manager>),
    Routed(Routed),
}

impl Ran {
    /// Runs `cmd` on the connection the script ran on.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &mut self,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match self {
            Self::Pooled(o) => cmd.query_async(&mut o.conn).await,
            Self::Routed(r) => cmd.query_async(r.conn()).await,
        }
    }

    /// A command after the script failed or timed out on it: a pooled connection is
    /// asked with `PING` before its next use (see `pooled`).
    pub(crate) fn suspect(&mut self) {
        if let Self::Pooled(o) = self {
            o.suspect();
        }
    }

    /// The primary generation it was opened under (standalone and Sentinel only).
    pub(crate) fn generation(&self) -> Option<u64> {
        match self {
            Self::Pooled(o) => Some(o.generation),
            Self::Routed(_) => None,
        }
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ran")
    }
}

/// Error codes with which Redis refuses a command as a whole. Inside a script Redis
/// raises these only before the script's first write (`OOM`, `READONLY`, `MASTERDOWN`,
/// `NOREPLICAS` are checked while nothing is dirty), so they mean "not run" there too.
const REFUSED: &[&str] = &[
    "READONLY",
    "OOM",
    "LOADING",
    "NOAUTH",
    "WRONGPASS",
    "BUSY",
    "MASTERDOWN",
    "NOREPLICAS",
    "CROSSSLOT",
];

/// Whether Redis said it did not run the command (or script) at all. Any other failure
/// after sending leaves the outcome open, because scripts are not rolled back.
///
/// An ACL refusal is the exception to "a code means the same everywhere": Redis checks
/// permissions at every call a script makes, so one raised inside a script (its message
/// names `@user_script`) may follow the script's `XADD`. Only a `NOPERM` for the command
/// itself (the script never started) is a refusal.
pub(crate) fn refused(e: &redis::RedisError) -> bool {
    let Some(code) = e.code() else {
        return false;
    };
    REFUSED.contains(&code) || (code == "NOPERM" && !e.to_string().contains("@user_script"))
}

impl Backend {
    /// Whether this is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    async fn pooled(&self, pool: &pooled::Pool) -> Result<Object<pooled::Manager>, BrokerError> {
        pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => e,
            // Every connection in use for the whole wait: overload, not an outage.
            PoolError::Timeout(TimeoutType::Wait) => BrokerError::Busy(e.to_string()),
            other => unavailable(other),
        })
    }

    /// Runs `lua` with `call` for the slot of `slot_key` (ignored on one primary).
    pub(crate) async fn script(
        &self,
        op: BrokerOp,
        timeout: std::time::Duration,
        slot_key: &str,
        lua: &Lua,
        call: &Call,
        resend: Resend,
    ) -> Result<(Value, Ran), Failed> {
        let result = match self {
            Self::Single { pool, primary } => {
                let mut conn = self.pooled(pool).await.map_err(Failed::NotRun)?;
                let mut inv = lua.script().prepare_invoke();
                for k in &call.keys {
                    inv.key(k);
                }
                for a in &call.args {
                    inv.arg(a.as_slice());
                }
                let generation = conn.generation;
                match tokio::time::timeout(timeout, inv.invoke_async::<Value>(&mut conn.conn)).await
                {
                    Ok(Ok(v)) => Ok((v, Ran::Pooled(conn))),
                    Ok(Err(e)) => {
                        primary.check(generation, &e);
                        Err(if refused(&e) {
                            Failed::NotRun(unavailable(e))
                        } else {
                            conn.suspect();
                            Failed::MaybeRan(e.to_string())
                        })
                    }
                    Err(_) => {
                        conn.suspect();
                        Err(Failed::MaybeRan("no reply from Redis in time".into()))
                    }
                }
            }
            Self::Cluster(router) => router
                .run(slots::slot(slot_key), Request::Script(lua, call), resend)
                .await
                .map(|(v, c)| (v, Ran::Routed(c)))
                .map_err(|e| match e {
                    RouteError::NotRun(why) => Failed::NotRun(unavailable(why)),
                    RouteError::Busy(why) => Failed::NotRun(BrokerError::Busy(why)),
                    RouteError::MaybeRan(why) => Failed::MaybeRan(why),
                }),
        };
        if let Err(
            Failed::MaybeRan(_)
            | Failed::NotRun(BrokerError::Unavailable(_) | BrokerError::Internal(_)),
        ) = &result
        {
            broker_error(op);
        }
        result
    }

    /// One command (idempotent) for the slot of `slot_key`, with the timeout.
    pub(crate) async fn command<T: redis::FromRedisValue>(
        &self,
        op: BrokerOp,
        timeout: std::time::Duration,
        slot_key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, BrokerError> {
        let result = match self {
            Self::Single { pool, primary } => match self.pooled(pool).await {
                Err(e) => Err(e),
                Ok(mut conn) => {
                    let generation = conn.generation;
                    match tokio::time::timeout(timeout, cmd.query_async::<T>(&mut conn.conn)).await
                    {
                        Ok(Ok(v)) => Ok(v),
                        Ok(Err(e)) => {
                            primary.check(generation, &e);
                            conn.suspect();
                            Err(unavailable(e))
                        }
                        // A slow reply is no sign that the primary moved: ending the
                        // generation on it would make every stream re-read history.
                        Err(_) => {
                            conn.suspect();
                            Err(unavailable("Redis command timed out"))
                        }
                    }
                }
            },
            Self::Cluster(router) => {
                match router
                    .run(slots::slot(slot_key), Request::Cmd(cmd), Resend::Safe)
                    .await
                {
                    Ok((v, _)) => T::from_redis_value(v).map_err(unavailable),
                    Err(e) => Err(unavailable(e)),
                }
            }
        };
        if matches!(
            result,
            Err(BrokerError::Unavailable(_) | BrokerError::Internal(_))
        ) {
            broker_error(op);
        }
        result
    }

    /// Done with the connection a publish ran on, after the `WAIT` on it answered: a
    /// connection of its own is kept for the next publish (a pooled one goes back to its
    /// pool when dropped, answered or not).
    pub(crate) fn give_back(&self, ran: Ran) {
        if let (Self::Cluster(router), Ran::Routed(Routed::Own(lease))) = (self, ran) {
            router.give_back(lease);
        }
    }

    /// Ends the connection's primary generation when `e` says the primary moved.
    pub(crate) fn check(&self, generation: Option<u64>, e: &redis::RedisError) {
        if let (Self::Single { primary, .. }, Some(g)) = (self, generation) {
            primary.check(g, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::refused;

    /// The error a reply line on the wire becomes.
    fn reply(line: &str) -> redis::RedisError {
        let v = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).unwrap();
        v.extract_error().unwrap_err()
    }

    #[test]
    fn refusals_of_the_whole_command_mean_not_run() {
        for line in [
            "NOPERM this user has no permissions to run the 'evalsha' command",
            "NOPERM this user has no permissions to access one of the keys used as arguments",
            "OOM command not allowed when used memory > 'maxmemory'. script: 1f, on @user_script:1.",
            "READONLY You can't write against a read only replica.",
            "NOAUTH Authentication required.",
            "BUSY Redis is busy running a script.",
        ] {
            assert!(refused(&reply(line)), "{line}");
        }
    }

    /// Permissions are checked at every call a script makes, after its writes too.
    #[test]
    fn acl_errors_raised_inside_a_script_leave_the_outcome_open() {
        for line in [
            "NOPERM this user has no permissions to access one of the channels script: 37, on @user_script:1.",
            "ERR The user executing the script can't publish to the channel mentioned in the command script: 37, on @user_script:1.",
            "ERR user_script:1: Script attempted to access nonexistent global variable",
        ] {
            assert!(!refused(&reply(line)), "{line}");
        }
    }
}
