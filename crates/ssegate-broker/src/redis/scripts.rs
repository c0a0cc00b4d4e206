//! The two Lua scripts. Each runs atomically in Redis, which is what the delivery
//! guarantees rest on:
//!
//! - **publish**: per event, read the channel's last id (the new event's `prev`), `XADD`,
//!   trim by length and by age, recording the newest id that trimming removed (Redis'
//!   `max-deleted-entry-id` from `XINFO STREAM` is only advanced by `XDEL`, not by
//!   trimming, so it cannot be used for gap detection), refresh the keys' expiry, and
//!   `PUBLISH` the event. Pub/sub order therefore
//!   equals stream order, and a `2xx` means the entry is in the stream. With an
//!   idempotency fingerprint, a key already recorded returns its ids and publishes nothing.
//! - **read**: the epoch, the channel's last and newest deleted ids, the gap decision for
//!   the cursor (trimmed past it, ahead of the stream, or naming an entry the stream lost),
//!   and one `XRANGE` page, all from one consistent moment.
//!
//! Both create the epoch with `SET NX` when it is missing (a fresh or wiped Redis), so the
//! first node to touch a new store names its epoch and every node agrees.
//!
//! Live message format (one pub/sub payload): `epoch \n id \n prev \n type \n kind \n
//! published_at \n traceparent \n data` — data last, because only it may contain line
//! breaks.

use redis::Script;

/// `less(x, y)`: stream ids `<ms>-<seq>` in numeric order (as strings they are not), for
/// the scripts that compare ids.
macro_rules! with_id_order {
    ($body:literal) => {
        concat!(
            r"
local function split(id)
  local a, b = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(a), tonumber(b)
end
local function less(x, y)
  local xa, xb = split(x)
  local ya, yb = split(y)
  return xa < ya or (xa == ya and xb < yb)
end",
            $body
        )
    };
}

/// The publish and read scripts begin the same way: `KEYS[1]` is the epoch key, `ARGV[1]` a fresh candidate
/// epoch that becomes the store's epoch if it has none (`SET NX`: the first writer wins).
macro_rules! with_epoch {
    ($body:expr) => {
        concat!(
            r"
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  redis.call('SET', KEYS[1], ARGV[1], 'NX')
  epoch = redis.call('GET', KEYS[1])
end",
            $body
        )
    };
}

pub(crate) const PUBLISH: &str = with_epoch!(
    r"
local fp = ARGV[6]
if fp ~= '' then
  local done = redis.call('GET', KEYS[2])
  if done then
    -- A write, so that WAIT on this connection covers the original publish too (the
    -- replication stream is ordered): a retry is acknowledged only once it is replicated.
    local ttl = redis.call('PTTL', KEYS[2])
    if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
    return {'dup', epoch, done}
  end
end
local maxlen = ARGV[2]
local maxage = tonumber(ARGV[3])
local expire = ARGV[4]
local n = tonumber(ARGV[7])
local minid = nil
if maxage > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  minid = string.format('%d', now - maxage)
end
local ids = {}
for i = 1, n do
  local skey = KEYS[1 + 2 * i]
  local mkey = KEYS[2 + 2 * i]
  local a = 7 + (i - 1) * 6
  local live, typ, kind, data, pubat, tp = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local prev = redis.call('HGET', mkey, 'last') or '0-0'
  local fields = {'k', kind, 'p', pubat}
  if typ ~= '' then
    fields[#fields + 1] = 't'
    fields[#fields + 1] = typ
  end
  if tp ~= '' then
    fields[#fields + 1] = 'tp'
    fields[#fields + 1] = tp
  end
  fields[#fields + 1] = 'd'
  fields[#fields + 1] = data
  local id = redis.call('XADD', skey, '*', unpack(fields))
  -- Record the newest id that trimming removes: Redis' own max-deleted-entry-id only
  -- follows XDEL, not trimming, so it cannot tell a cursor that it missed something.
  local del = nil
  local excess = redis.call('XLEN', skey) - tonumber(maxlen)
  if excess > 0 then
    local old = redis.call('XRANGE', skey, '-', '+', 'COUNT', excess)
    del = old[#old][1]
    redis.call('XTRIM', skey, 'MAXLEN', '=', maxlen)
  end
  if minid then
    -- Only when the oldest entry is expired: XREVRANGE with a bound below every entry
    -- scans the whole stream, so it must not run on every publish.
    local oldest = redis.call('XRANGE', skey, '-', '+', 'COUNT', 1)
    local oms = oldest[1] and tonumber(string.match(oldest[1][1], '^(%d+)-'))
    if oms and oms < tonumber(minid) then
      local older = redis.call('XREVRANGE', skey, '(' .. minid .. '-0', '-', 'COUNT', 1)
      del = older[1][1]
      redis.call('XTRIM', skey, 'MINID', '=', minid)
    end
  end
  if del then
    redis.call('HSET', mkey, 'del', del)
  end
  redis.call('HSET', mkey, 'last', id)
  redis.call('PEXPIRE', skey, expire)
  redis.call('PEXPIRE', mkey, expire)
  redis.call('PUBLISH', live, epoch .. '\n' .. id .. '\n' .. prev .. '\n' .. typ .. '\n' .. kind .. '\n' .. pubat .. '\n' .. tp .. '\n' .. data)
  ids[i] = id
end
local all = table.concat(ids, ' ')
if fp ~= '' then
  redis.call('SET', KEYS[2], fp .. ' ' .. all, 'PX', ARGV[5])
end
return {'ok', epoch, all}
"
);

pub(crate) const READ: &str = with_epoch!(with_id_order!(
    r"
local m = redis.call('HMGET', KEYS[3], 'last', 'del')
local last = m[1] or '0-0'
local del = m[2] or '0-0'
local gap = 0
local start
if ARGV[2] == 'oldest' then
  start = del
else
  local after = ARGV[3]
  if less(last, after) then
    gap = 1
    start = last
  elseif less(after, del) then
    gap = 1
    start = del
  else
    start = after
    -- A cursor names an entry the store once had. One after the newest trimmed id that
    -- the stream does not hold was lost (a failover to a replica that lacked it): a gap,
    -- continuing from the oldest retained event as for any gap (the new primary may have
    -- written entries below the cursor since, which the client has not seen).
    if after ~= '0-0' and less(del, after) and #redis.call('XRANGE', KEYS[2], after, after) == 0 then
      gap = 1
      start = del
    end
  end
end
local entries = {}
local count = tonumber(ARGV[4])
if count > 0 and less(start, last) then
  entries = redis.call('XRANGE', KEYS[2], '(' .. start, '+', 'COUNT', count)
end
return {epoch, last, start, gap, entries}
"
));

/// After a reconnect (a failover, maybe): raise each stream's last-generated id to the
/// newest id this node delivered on it (`KEYS`: streams; `ARGV[1]`: the streams' expiry in
/// ms; `ARGV[1 + i]`: the id for `KEYS[i]`). A new primary that lacked the newest events
/// would otherwise hand those ids to new events, and a client holding one as its cursor
/// would skip the new event as one it has; now the lost id is a gap (the read script's
/// "cursor names an entry the stream lacks"). Only ever raises an id.
pub(crate) const GUARD: &str = with_id_order!(
    r"
local raised = 0
for i = 1, #KEYS do
  local id = ARGV[i + 1]
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[i])
    local g = '0-0'
    for j = 1, #info, 2 do
      if info[j] == 'last-generated-id' then g = info[j + 1] end
    end
    if less(g, id) then
      redis.call('XSETID', KEYS[i], id)
      raised = raised + 1
    end
  else
    redis.call('XADD', KEYS[i], id, 'k', '')
    redis.call('XDEL', KEYS[i], id)
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    raised = raised + 1
  end
end
return raised
"
);

/// The scripts, hashed once (EVALSHA, loading them on `NOSCRIPT`).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) publish: Script,
    pub(crate) read: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            publish: Script::new(PUBLISH),
            read: Script::new(READ),
        }
    }
}
