//! What the router carries: a script and its call, a plain command, whether it may be
//! sent again, and why it failed; and the grouping of a batch by slot.

use std::collections::HashMap;

use super::slots;

/// Whether a command may be sent again after it may have run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resend {
    /// Its writes are idempotent (reads, the guard, the epoch's `SET NX`).
    Safe,
    /// It must run at most once (a publish).
    Never,
}

/// A Lua script, as text and hash.
#[derive(Debug)]
pub(crate) struct Lua {
    pub(super) code: &'static str,
    script: redis::Script,
}

impl Lua {
    pub(crate) fn new(code: &'static str) -> Self {
        Self {
            code,
            script: redis::Script::new(code),
        }
    }

    pub(crate) fn script(&self) -> &redis::Script {
        &self.script
    }
}

/// One call of a script: its keys and arguments.
#[derive(Debug, Default)]
pub(crate) struct Call {
    pub(crate) keys: Vec<String>,
    pub(crate) args: Vec<Vec<u8>>,
}

impl Call {
    pub(crate) fn key(&mut self, k: String) -> &mut Self {
        self.keys.push(k);
        self
    }

    pub(crate) fn arg(&mut self, a: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(a.to_redis_args());
        self
    }

    pub(super) fn command(&self, name: &str, body: &str) -> redis::Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(body).arg(self.keys.len()).arg(&self.keys);
        for a in &self.args {
            cmd.arg(a.as_slice());
        }
        cmd
    }
}

/// What goes to the slot's primary.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Request<'a> {
    Cmd(&'a redis::Cmd),
    Script(&'a Lua, &'a Call),
}

/// Why a routed command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RouteError {
    /// Nothing ran: no connection, or Redis refused it until the deadline.
    #[error("{0}")]
    NotRun(String),
    /// Nothing ran: every publish connection was in use until the deadline.
    #[error("{0}")]
    Busy(String),
    /// It may have run (a broken connection after sending, no reply in time, or an error
    /// the script raised after writing: scripts are not rolled back).
    #[error("{0}")]
    MaybeRan(String),
}

/// Groups items by the slot of the key `key_of` gives, keeping their order within a slot;
/// the groups in order of first appearance.
pub(crate) fn by_slot<T>(
    items: impl IntoIterator<Item = T>,
    key_of: impl Fn(&T) -> String,
) -> Vec<(u16, Vec<T>)> {
    let mut groups: Vec<(u16, Vec<T>)> = Vec::new();
    let mut index: HashMap<u16, usize> = HashMap::new();
    for item in items {
        let s = slots::slot(&key_of(&item));
        let i = *index.entry(s).or_insert_with(|| {
            groups.push((s, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(item);
    }
    groups
}
