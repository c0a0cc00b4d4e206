//! The Lua scripts. Each runs atomically in Redis, which is what the delivery
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
//!   the cursor (trimmed past it, ahead of the stream, before an event a node reported
//!   lost, or naming an entry the stream lost; a cursor a stream wrote that the store
//!   lacks is recorded as lost first, as the guard does),
//!   and one `XRANGE` page, all from one consistent moment.
//!
//! Both create the epoch with `SET NX` when it is missing (a fresh or wiped Redis), so the
//! first node to touch a new store names its epoch and every node agrees.
//!
//! Live message format (one pub/sub payload): `epoch \n id \n prev \n type \n kind \n
//! published_at \n traceparent \n data` — data last, because only it may contain line
//! breaks.

use super::cluster::Lua;

/// `less(x, y)`: stream ids `<ms>-<seq>` in numeric order (as strings they are not), and
/// `succ(id)`, the id right after `id`, for the scripts that compare ids.
macro_rules! with_id_order {
    ($body:expr) => {
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
end
local function succ(id)
  local a, b = split(id)
  return string.format('%d-%d', a, b + 1)
end",
            $body
        )
    };
}

/// The publish and read scripts begin the same way. `ARGV[1]` is either a fresh candidate
/// epoch, and `KEYS[1]` the epoch key: the candidate becomes the store's epoch if it has
/// none (`SET NX`: the first writer wins); or (Redis Cluster, where the epoch key is in
/// another slot than the channel's keys) `=<epoch>`, the epoch the node read apart, and
/// `KEYS[1]` is one of the channel's keys, only there to name the slot.
macro_rules! with_epoch {
    ($body:expr) => {
        concat!(
            r"
local epoch
if string.sub(ARGV[1], 1, 1) == '=' then
  epoch = string.sub(ARGV[1], 2)
else
  epoch = redis.call('GET', KEYS[1])
  if not epoch then
    redis.call('SET', KEYS[1], ARGV[1], 'NX')
    epoch = redis.call('GET', KEYS[1])
  end
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
local pubcmd = ARGV[8]
local minid = nil
if maxage > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  minid = string.format('%d', now - maxage)
end
local ids = {}
for i = 1, n do
  local skey, mkey, live = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
  local a = 8 + (i - 1) * 5
  local typ, kind, data, pubat, tp = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
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
  redis.call(pubcmd, live, epoch .. '\n' .. id .. '\n' .. prev .. '\n' .. typ .. '\n' .. kind .. '\n' .. pubat .. '\n' .. tp .. '\n' .. data)
  ids[i] = id
end
local all = table.concat(ids, ' ')
if fp ~= '' then
  redis.call('SET', KEYS[2], fp .. ' ' .. all, 'PX', ARGV[5])
end
return {'ok', epoch, all}
"
);

/// The read script's lost regions: the metadata's `lost` field holds `lo hi lo hi ...`,
/// sorted: after `lo` (the newest entry the stream kept below the loss, or its trim
/// marker) and before `hi` (the id right after the newest lost event a node had
/// delivered, never an event's id) the store lost events (see `GUARD`). A cursor in
/// `[lo, hi)` missed a lost event, or holds one the store no longer has: either way its
/// client is told (a gap), and continues at `hi`. `through_lost(from)` gives where a read
/// from `from` continues (past a region `from` is in), whether that passed a region (a
/// gap), and the read's upper bound (the next region's `lo`: its gap is reported when the
/// read gets there, after the entries before it).
macro_rules! with_lost_regions {
    ($body:expr) => {
        concat!(
            r"
local function regions_of(field)
  local r = {}
  if field then
    for id in string.gmatch(field, '%S+') do r[#r + 1] = id end
  end
  return r
end
local function through_lost(regions, from)
  local g, upto = 0, '+'
  for j = 1, #regions, 2 do
    local lo, hi = regions[j], regions[j + 1]
    if less(from, hi) then
      if less(from, lo) then
        upto = lo
        break
      end
      g = 1
      from = hi
    end
  end
  return from, g, upto
end",
            $body
        )
    };
}

/// `record_lost(skey, mkey, had, expire, max_regions)`: when the stream lacks `had`, an
/// event a node delivered, although nothing trimmed it, the store lost it (a replica
/// promoted without it). Then
///
/// - a lost region is recorded from the newest entry the stream kept below it to the id
///   right after it (merged with regions it overlaps): a read that passes it reports a gap
///   there, after the entries before it, so a client behind the loss, or holding the lost
///   event, is told instead of silently going on, and loses nothing the store kept;
/// - the metadata's `last` (the next event's `prev`) and the stream's last-generated id are
///   raised to the region's end: no new event gets an id a client already holds (it would
///   skip the new event as one it has), and a node whose subscriber holds a lost event
///   sees the `prev` mismatch and catches it up, finding the gap.
///
/// An id already inside a recorded region changes nothing. Returns 1 when it recorded a
/// loss, else 0. (The region's end is a fresh id only because the new primary's ids come
/// from its own clock, seconds after the loss: with a clock skewed back that far, an entry
/// written in the same millisecond could take it, and a read past the region would start
/// after that entry.) Both the guard, after a reconnect, and a read from a cursor that a
/// stream wrote record losses, whichever runs first: the gap is then found once, at the
/// region.
macro_rules! with_record_lost {
    ($body:expr) => {
        concat!(
            r"
local function record_lost(skey, mkey, had, expire, max_regions)
  local hi = succ(had)
  local m = redis.call('HMGET', mkey, 'last', 'del', 'lost')
  local last, del = m[1] or '0-0', m[2] or '0-0'
  local regions = regions_of(m[3])
  local covered = false
  for j = 1, #regions, 2 do
    if less(regions[j], had) and less(had, regions[j + 1]) then covered = true end
  end
  if not covered and less(del, had) and #redis.call('XRANGE', skey, had, had) == 0 then
    local below = redis.call('XREVRANGE', skey, '(' .. had, '-', 'COUNT', 1)
    local lo = del
    if below[1] and less(del, below[1][1]) then lo = below[1][1] end
    local out, placed = {}, false
    for j = 1, #regions, 2 do
      local a, b = regions[j], regions[j + 1]
      if not less(del, b) then
        -- trimmed past: obsolete
      elseif less(b, lo) then
        out[#out + 1] = a
        out[#out + 1] = b
      elseif less(hi, a) then
        if not placed then
          out[#out + 1] = lo
          out[#out + 1] = hi
          placed = true
        end
        out[#out + 1] = a
        out[#out + 1] = b
      else
        if less(a, lo) then lo = a end
        if less(hi, b) then hi = b end
      end
    end
    if not placed then
      out[#out + 1] = lo
      out[#out + 1] = hi
    end
    while #out > 2 * max_regions do
      local old_hi = table.remove(out, 2)
      table.remove(out, 1)
      redis.call('XTRIM', skey, 'MINID', old_hi)
      if less(del, old_hi) then
        del = old_hi
        redis.call('HSET', mkey, 'del', del)
      end
    end
    redis.call('HSET', mkey, 'lost', table.concat(out, ' '))
    if less(last, hi) then redis.call('HSET', mkey, 'last', hi) end
    if redis.call('EXISTS', skey) == 1 then
      local info = redis.call('XINFO', 'STREAM', skey)
      local g = '0-0'
      for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then g = info[j + 1] end
      end
      if less(g, hi) then redis.call('XSETID', skey, hi) end
    else
      redis.call('XADD', skey, hi, 'k', '')
      redis.call('XDEL', skey, hi)
    end
    redis.call('PEXPIRE', skey, expire)
    redis.call('PEXPIRE', mkey, expire)
    return 1
  end
  return 0
end",
            $body
        )
    };
}

/// One page of a channel's history (`KEYS`: epoch, stream, metadata; `ARGV[1]`: a
/// candidate epoch, `ARGV[2]`: `oldest`, `after` or `shown` (after an event a stream
/// wrote), `ARGV[3]`: the cursor, `ARGV[4]`: the page size, `ARGV[5]`: the keys' expiry in
/// ms, `ARGV[6]`: [`MAX_LOST_REGIONS`], `ARGV[7]`: the newest id the node saw on the
/// channel, the evidence of a loss (with `shown` at least the cursor; with `oldest` `0-0`
/// when the node saw none; unused with `after`, where the cursor is a client's word). Returns the epoch, the channel's last id, where
/// the page continues from, whether there is a gap, and the entries.
pub(crate) const READ: &str = with_epoch!(with_id_order!(with_lost_regions!(with_record_lost!(
    r"
if ARGV[2] == 'shown' then
  -- The cursor is an event a node delivered, and ARGV[7] the newest it saw: if the store
  -- lacks either although nothing trimmed it, the store lost it, and the loss is recorded
  -- here as the guard would (the guard may not have run yet): so the gap is found once,
  -- at the region, whichever of the two gets there first.
  record_lost(KEYS[2], KEYS[3], ARGV[3], ARGV[5], tonumber(ARGV[6]))
  if ARGV[7] ~= ARGV[3] then
    record_lost(KEYS[2], KEYS[3], ARGV[7], ARGV[5], tonumber(ARGV[6]))
  end
elseif ARGV[2] == 'oldest' and ARGV[7] ~= '0-0' then
  -- A fresh stream's start (or a history read from the start) on a node that delivered
  -- ARGV[7]: a store without it lost it, and the stream must not start before the loss
  -- (it would go past it silently when the new primary's events arrive).
  record_lost(KEYS[2], KEYS[3], ARGV[7], ARGV[5], tonumber(ARGV[6]))
end
local m = redis.call('HMGET', KEYS[3], 'last', 'del', 'lost')
local last = m[1] or '0-0'
local del = m[2] or '0-0'
local regions = regions_of(m[3])
local gap, g = 0, 0
local start, upto = nil, '+'
if ARGV[2] == 'oldest' then
  start, g, upto = through_lost(regions, del)
else
  local after = ARGV[3]
  if less(last, after) then
    gap = 1
    start = last
  elseif less(after, del) then
    gap = 1
    start, g, upto = through_lost(regions, del)
  else
    start, g, upto = through_lost(regions, after)
    if g == 1 then
      gap = 1
    elseif after ~= '0-0' and less(del, after) and #redis.call('XRANGE', KEYS[2], after, after) == 0 then
      -- A cursor names an entry the store does not have (lost in a failover no node has
      -- reported yet, or made up; a region's `hi` is where a read continues past it: no
      -- gap). A gap, continuing after the cursor: the client had every event before it,
      -- and the new primary's events come after it (its ids follow its clock). The read
      -- continues from the newest entry below the cursor (none lies between), so that the
      -- signal's id names an entry and a reconnect right after it is no gap again. The
      -- cursor is not recorded as a region: a client's word is not evidence of a loss
      -- (a node's is: 'shown', recorded above).
      local at_hi = false
      for j = 2, #regions, 2 do
        if regions[j] == after then at_hi = true end
      end
      if not at_hi then
        gap = 1
        local below = redis.call('XREVRANGE', KEYS[2], '(' .. after, '-', 'COUNT', 1)
        if below[1] and less(del, below[1][1]) then start = below[1][1] else start = del end
      end
    end
  end
end
local entries = {}
local count = tonumber(ARGV[4])
if count > 0 and less(start, last) then
  entries = redis.call('XRANGE', KEYS[2], '(' .. start, upto, 'COUNT', count)
end
return {epoch, last, start, gap, entries}
"
))));

/// Lost regions kept per channel; past that the oldest becomes part of the trimmed
/// history (the stream is trimmed to its end), which a cursor before it is told about
/// the same way.
pub(crate) const MAX_LOST_REGIONS: usize = 16;

/// After a reconnect (a failover, maybe), per channel this node delivered events on
/// (`KEYS[2i-1]`: the stream, `KEYS[2i]`: its metadata; `ARGV[1]`: the keys' expiry in ms;
/// `ARGV[2]`: [`MAX_LOST_REGIONS`]; `ARGV[2 + i]`: the newest id the node delivered):
/// `record_lost` for each. Returns how many channels had newly found losses.
pub(crate) const GUARD: &str = with_id_order!(with_lost_regions!(with_record_lost!(
    r"
local raised = 0
for i = 1, #KEYS / 2 do
  raised = raised + record_lost(KEYS[2 * i - 1], KEYS[2 * i], ARGV[i + 2], ARGV[1], tonumber(ARGV[2]))
end
return raised
"
)));

/// The scripts, hashed once (EVALSHA, loading them on `NOSCRIPT`).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) publish: Lua,
    pub(crate) read: Lua,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            publish: Lua::new(PUBLISH),
            read: Lua::new(READ),
        }
    }
}
