//! Where a routed command goes, and when it goes again.
//!
//! # Routing rule
//!
//! **A command is sent again only when Redis said it did not run it.** Every command names
//! the slot it is for (every key of a script is in one slot) and goes to the primary the
//! slot map names, over one multiplexed connection per primary. Then:
//!
//! - `MOVED`: the slot has a new owner; the map is corrected (and refreshed) and the
//!   command goes there. `ASK`: the slot is migrating; the command goes once to the
//!   importing node, after `ASKING`, as a full `EVAL` (that node may not have the script).
//! - `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `LOADING`, `READONLY` (a failover or a
//!   migration in progress): the map is refreshed and the command waits a little and goes
//!   again; `NOSCRIPT` (a promoted replica, a restarted node): the script is loaded there.
//! - No connection could be opened: nothing was sent; the map is refreshed and the
//!   command goes again.
//! - A connection broken after sending, or no reply in time: the command may have run.
//!   A command that must not run twice ([`Resend::Never`]: a publish) is answered "outcome
//!   unknown"; others go again (their writes are idempotent).
//!
//! All of it within one deadline per command (`SSEGATE_REDIS_TIMEOUT`). Redis-rs's own
//! cluster client is not used for commands because it sends a command again after a
//! broken connection, which would publish an event twice.

use redis::Value;
use redis::aio::MultiplexedConnection;
use std::time::Duration;
use tokio::time::Instant;

use super::{Lease, Request, Resend, RouteError, Routed, Router, exec, within};

/// The pause before a command goes again after `TRYAGAIN` and the like (doubling).
const RETRY_PAUSE: Duration = Duration::from_millis(25);

fn is_code(e: &redis::RedisError, codes: &[&str]) -> bool {
    e.code().is_some_and(|c| codes.contains(&c))
}

impl Router {
    /// Runs `req` on the primary of `slot` (see the routing rule); returns the reply and
    /// the connection it ran on (for a `WAIT` after a publish). Everything it waits for
    /// (a slot map refresh, a connection, a script load) is bounded by one deadline.
    pub(crate) async fn run(
        &self,
        slot: u16,
        req: Request<'_>,
        resend: Resend,
    ) -> Result<(Value, Routed), RouteError> {
        let deadline = Instant::now() + self.timeout;
        // A publish followed by `WAIT` runs on a connection of its own (see `lease`).
        let mut own = match &self.leases {
            Some(leases) if resend == Resend::Never => Some((
                leases,
                within(deadline, leases.permit()).await.map_err(|_| {
                    RouteError::Busy("every Redis publish connection is in use".into())
                })?,
            )),
            _ => None,
        };
        let mut ask: Option<String> = None;
        let mut pause = RETRY_PAUSE;
        let mut why = String::new();
        for _ in 0..32 {
            if Instant::now() >= deadline {
                break;
            }
            let addr = match ask.clone() {
                Some(a) => a,
                None => match within(deadline, self.owner(slot)).await.and_then(|r| r) {
                    Ok(a) => a,
                    Err(e) => {
                        why = e;
                        tokio::time::sleep(
                            pause.min(deadline.saturating_duration_since(Instant::now())),
                        )
                        .await;
                        pause *= 2;
                        continue;
                    }
                },
            };
            let got = match &own {
                // A publish's own connection: not the shared one, which stays when it breaks.
                Some((leases, _)) => match leases.take(&addr) {
                    Some(c) => Ok((c, None)),
                    None => within(deadline, self.open(&addr))
                        .await
                        .and_then(|r| r)
                        .map(|c| (c, None)),
                },
                None => within(deadline, self.conn(&addr))
                    .await
                    .and_then(|r| r)
                    .map(|(c, g)| (c, Some(g))),
            };
            let (mut conn, generation) = match got {
                Ok(c) => c,
                Err(e) => {
                    // Nothing was sent: a dead primary; its replica takes over soon.
                    why = e;
                    ask = None;
                    let _ = within(deadline, self.refresh()).await;
                    tokio::time::sleep(
                        pause.min(deadline.saturating_duration_since(Instant::now())),
                    )
                    .await;
                    pause *= 2;
                    continue;
                }
            };
            let asking = ask.take().is_some();
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = tokio::time::timeout(left, Self::send(&mut conn, req, asking)).await;
            let e = match reply {
                Ok(Ok(v)) => {
                    let routed = match own.take() {
                        Some((_, permit)) => Routed::Own(Lease {
                            addr,
                            conn,
                            _permit: permit,
                        }),
                        None => Routed::Shared(conn),
                    };
                    return Ok((v, routed));
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(RouteError::MaybeRan(format!(
                        "no reply from {addr} in time"
                    )));
                }
            };
            let broken = e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error();
            if let (Some((leases, _)), false) = (&own, broken) {
                leases.put(&addr, conn.clone());
            }
            if let Some((to, s)) = e.redirect_node() {
                let to = to.to_owned();
                if is_code(&e, &["ASK"]) {
                    ask = Some(to);
                } else {
                    self.moved(s, &to);
                    let _ = within(deadline, self.refresh()).await;
                }
                why = e.to_string();
                continue;
            }
            if is_code(&e, &["NOSCRIPT"]) {
                if let Request::Script(lua, _) = req {
                    let load = redis::cmd("SCRIPT").arg("LOAD").arg(lua.code).to_owned();
                    let _ = within(deadline, load.query_async::<Value>(&mut conn)).await;
                }
                why = e.to_string();
                continue;
            }
            if is_code(
                &e,
                &[
                    "TRYAGAIN",
                    "CLUSTERDOWN",
                    "MASTERDOWN",
                    "LOADING",
                    "READONLY",
                ],
            ) {
                why = e.to_string();
                let _ = within(deadline, self.refresh()).await;
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause *= 2;
                continue;
            }
            if broken {
                if let Some(generation) = generation {
                    self.forget(&addr, generation);
                }
                let _ = within(deadline, self.refresh()).await;
                if resend == Resend::Never {
                    return Err(RouteError::MaybeRan(format!("{addr}: {e}")));
                }
                why = e.to_string();
                continue;
            }
            // Any other error reply: refused as a whole, or raised by a script that may
            // have written before it (scripts are not rolled back).
            let refused = exec::refused(&e);
            return Err(if refused || matches!(req, Request::Cmd(_)) {
                RouteError::NotRun(e.to_string())
            } else {
                RouteError::MaybeRan(e.to_string())
            });
        }
        Err(RouteError::NotRun(format!(
            "Redis Cluster did not run the command in time: {why}"
        )))
    }

    async fn send(
        conn: &mut MultiplexedConnection,
        req: Request<'_>,
        asking: bool,
    ) -> redis::RedisResult<Value> {
        match (req, asking) {
            (Request::Cmd(cmd), false) => cmd.query_async(conn).await,
            (Request::Script(lua, call), false) => {
                call.command("EVALSHA", lua.script().get_hash())
                    .query_async(conn)
                    .await
            }
            (req, true) => {
                let cmd = match req {
                    Request::Cmd(cmd) => cmd.clone(),
                    Request::Script(lua, call) => call.command("EVAL", lua.code),
                };
                let (_, v): (Value, Value) = redis::pipe()
                    .cmd("ASKING")
                    .add_command(cmd)
                    .query_async(conn)
                    .await?;
                Ok(v)
            }
        }
    }
}
