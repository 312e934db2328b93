//! The Lua scripts. Each store write is one script: one round trip, atomic on the server.
//!
//! # Record layout
//!
//! A record is a hash whose expiry is its idle deadline (`PEXPIREAT`), so Redis forgets a
//! session exactly when it would have expired anyway:
//!
//! | field | what |
//! |---|---|
//! | `v` | version (compare-and-set) |
//! | `e` | idle deadline, ms since the epoch |
//! | `d` | the encoded body |
//! | `u` | user id, when there is one |
//! | `g` | the user's generation when the record was last given to that user (see below) |
//! | `h` | the write ids (8 bytes each) of the last [`HISTORY`] versions, newest last |
//! | `x` | write ids fenced off by `SETTLE` at the current version; cleared by the next write |
//!
//! A rotated-away id holds a marker instead: `m` (the new id, hex) and `w` (the rotating write's
//! id), for `sessile::store::ROTATED_MARKER_TTL_MS`. A create settled as not applied leaves a
//! tombstone holding only `x`, for as long.
//!
//! # Exactly once
//!
//! The compare-and-set scripts are sent with a single attempt, so fred never re-sends one after a
//! dropped connection. When a reply is lost, `SETTLE` answers from `h` whether the write made the
//! version it aimed at, and if the record is still at the version the write expected, puts the
//! write id in `x`, so the write is refused if it arrives later. A record remembers [`HISTORY`]
//! writes: a write followed by more than that many others before it is settled is "unknown".
//!
//! # User index and generation
//!
//! `<..>:i:<user>` is a sorted set of the user's session ids scored by their absolute deadline,
//! and `<..>:g:<user>` the user's generation. Every indexing write drops up to [`PRUNE_CHUNK`]
//! expired members (about a millisecond of server time); a write that leaves more asks the store
//! to continue with `PRUNE`, one chunk per call. A rotation within one user removes the old id.
//! "Log out everywhere" first bumps the generation, then deletes the listed sessions in batches;
//! a same-slot rotation of a session whose `g` is not the current generation fails, so no
//! session escapes the logout by rotating while the batches run.
//!
//! Return codes: `1` done, `2` done and more of the index is to be pruned, `0` version conflict
//! (or id taken), `-1` not found, `-2` rotated away, `-3` this write was fenced off by `SETTLE`.

use fred::types::scripts::Script;

/// Write ids kept per record: the outcome of a write whose reply was lost can be learned as long
/// as fewer than this many writes followed it.
pub(crate) const HISTORY: usize = 4;

/// Expired index members dropped by one script call.
pub(crate) const PRUNE_CHUNK: i64 = 1000;

/// Shared helpers, prepended to every script.
const HELPERS: &str = r#"
local function has(list, w)
  if not list then return false end
  for i = 1, #list, 8 do
    if string.sub(list, i, i + 7) == w then return true end
  end
  return false
end
local function made(h, cur, want)
  if not h then return false end
  local back = cur - want
  local n = #h / 8
  if back < 0 or back >= n then return false end
  local i = (n - 1 - back) * 8 + 1
  return string.sub(h, i, i + 7)
end
local function push(list, w, keep)
  list = (list or '') .. w
  if #list > keep * 8 then list = string.sub(list, #list - keep * 8 + 1) end
  return list
end
local function write(k, v, e, d, u, g, h)
  if u == '' then
    redis.call('HSET', k, 'v', v, 'e', e, 'd', d, 'h', h)
  else
    redis.call('HSET', k, 'v', v, 'e', e, 'd', d, 'h', h, 'u', u, 'g', g)
  end
  redis.call('PEXPIREAT', k, e)
end
local function gen(gk)
  return tonumber(redis.call('GET', gk) or '0')
end
local function prune(k)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local dead = redis.call('ZRANGEBYSCORE', k, '-inf', now, 'LIMIT', 0, PRUNE_CHUNK)
  if #dead > 0 then redis.call('ZREM', k, unpack(dead)) end
  return #dead
end
local function index(k, gk, id, a)
  redis.call('ZADD', k, a, id)
  local pruned = prune(k)
  local t = redis.call('PEXPIRETIME', k)
  if t < tonumber(a) then redis.call('PEXPIREAT', k, a) end
  local tg = redis.call('PEXPIRETIME', gk)
  if tg ~= -2 and tg < tonumber(a) then redis.call('PEXPIREAT', gk, a) end
  if pruned >= PRUNE_CHUNK then return 2 end
  return 1
end
local function marker(k, new, w, ttl)
  redis.call('DEL', k)
  redis.call('HSET', k, 'm', new, 'w', w)
  redis.call('PEXPIRE', k, ttl)
end
"#;

/// KEYS: record [, index, generation]. ARGV: version, idle deadline, body, user, id hex,
/// absolute deadline, write id.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if has(redis.call('HGET', KEYS[1], 'h'), ARGV[7]) then return 1 end
  return 0
end
local g = 0
if KEYS[2] then g = gen(KEYS[3]) end
write(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], g, ARGV[7])
if KEYS[2] then return index(KEYS[2], KEYS[3], ARGV[5], ARGV[6]) end
return 1
"#;

/// KEYS: record [, index, generation]. ARGV: expected version, new version, idle deadline, body,
/// user, id hex, absolute deadline, write id.
///
/// The index is only touched when the user changes: its expiry already covers the record's
/// absolute deadline, which only a rotation (which always indexes) moves.
const SAVE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'u', 'h', 'x', 'm', 'g')
if not f[1] then
  if f[5] then return -2 end
  return -1
end
if f[1] ~= ARGV[1] then
  if made(f[3], tonumber(f[1]), tonumber(ARGV[1]) + 1) == ARGV[8] then return 1 end
  return 0
end
if has(f[4], ARGV[8]) then return -3 end
local changed = (f[2] or '') ~= ARGV[5]
local g = f[6] or 0
if changed and KEYS[2] then g = gen(KEYS[3]) end
write(KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], g, push(f[3], ARGV[8], HISTORY))
if f[4] then redis.call('HDEL', KEYS[1], 'x') end
if ARGV[5] == '' and f[2] then redis.call('HDEL', KEYS[1], 'u', 'g') end
if changed and KEYS[2] then return index(KEYS[2], KEYS[3], ARGV[6], ARGV[7]) end
return 1
"#;

/// KEYS: old record, new record [, index, generation]. ARGV: as `SAVE`, then the marker's time to
/// live (ms) and the old id (hex).
const ROTATE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'u', 'h', 'x', 'm', 'g')
if not f[1] then
  if f[5] then
    if f[5] == ARGV[6] and has(redis.call('HGET', KEYS[2], 'h'), ARGV[8]) then return 1 end
    return -2
  end
  return -1
end
if f[1] ~= ARGV[1] then return 0 end
if has(f[4], ARGV[8]) then return -3 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local g = 0
if KEYS[3] then
  g = gen(KEYS[4])
  if f[2] == ARGV[5] and tonumber(f[6] or '0') ~= g then
    -- The user was logged out everywhere since this session was written: it is ending, and
    -- must not escape to a new id.
    redis.call('DEL', KEYS[1])
    return -1
  end
end
marker(KEYS[1], ARGV[6], ARGV[8], ARGV[9])
write(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], g, push(f[3], ARGV[8], HISTORY))
if KEYS[3] then
  if f[2] == ARGV[5] then redis.call('ZREM', KEYS[3], ARGV[10]) end
  return index(KEYS[3], KEYS[4], ARGV[6], ARGV[7])
end
return 1
"#;

/// KEYS: old record. ARGV: expected version, new id hex, marker TTL (ms), write id. The second
/// half of a rotation whose old and new ids live in different Cluster slots: replaces the record
/// with a marker, only at that version.
const DELETE_AT: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'm', 'w', 'x')
if not f[1] then
  if f[2] == ARGV[2] and f[3] == ARGV[4] then return 1 end
  if f[2] then return -2 end
  return -1
end
if f[1] ~= ARGV[1] then return 0 end
if has(f[4], ARGV[4]) then return -3 end
marker(KEYS[1], ARGV[2], ARGV[4], ARGV[3])
return 1
"#;

/// KEYS: record. ARGV: expected version, write id, tombstone TTL (ms). Settles a `create` (expected
/// version 0) or `save`: `1` applied, `0` not applied (and fenced off), `2` unknown.
const SETTLE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'h', 'x', 'm')
if not f[1] then
  if f[4] then return 2 end
  if ARGV[1] == '0' then
    redis.call('HSET', KEYS[1], 'x', push(f[3], ARGV[2], 8))
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return 0
end
local cur, want = tonumber(f[1]), tonumber(ARGV[1]) + 1
if cur < want then
  redis.call('HSET', KEYS[1], 'x', push(f[3], ARGV[2], 8))
  return 0
end
local w = made(f[2], cur, want)
if not w then return 2 end
if w == ARGV[2] then return 1 end
return 0
"#;

/// KEYS: old record [, new record]. ARGV: expected version, write id, new id hex. Settles a
/// `rotate`; the new record is only passed when it shares the old one's slot.
const SETTLE_ROTATE: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'm', 'w', 'x')
if not f[1] then
  if f[2] == ARGV[3] and f[3] == ARGV[2] then return 1 end
  if KEYS[2] and has(redis.call('HGET', KEYS[2], 'h'), ARGV[2]) then return 1 end
  return 0
end
if f[1] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'x', push(f[4], ARGV[2], 8))
end
return 0
"#;

/// KEYS: record. ARGV: idle deadline.
const TOUCH: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'm')
if not f[1] then
  if f[2] then return -2 end
  return -1
end
redis.call('HSET', KEYS[1], 'e', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: index, generation. ARGV: id hex, absolute deadline. Index upkeep when the index and the
/// record are in different Cluster slots.
const INDEX: &str = r#"
return index(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
"#;

/// KEYS: index. Drops a chunk of expired members: `2` if more remain.
const PRUNE: &str = r#"
if prune(KEYS[1]) >= PRUNE_CHUNK then return 2 end
return 1
"#;

/// KEYS: index, generation. Starts a "log out everywhere": bumps the user's generation and returns
/// it, or `-1` when the user has no indexed session.
const BUMP: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local g = redis.call('INCR', KEYS[2])
local t = redis.call('PEXPIRETIME', KEYS[1])
if t > 0 then redis.call('PEXPIREAT', KEYS[2], t) end
return g
"#;

/// KEYS: [index,] records (all in one slot). ARGV: user, generation, `1` if KEYS[1] is the index,
/// then the records' ids (hex). Deletes those records that are still the user's and older than the
/// generation, and removes from the index every member it handled; a member made at the current
/// generation (a login after the logout began) stays. Returns how many records it deleted.
const DESTROY_BATCH: &str = r#"
local first = 1
if ARGV[3] == '1' then first = 2 end
local n = 0
for i = first, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'u', 'g')
  local fresh = f[1] == ARGV[1] and tonumber(f[2] or '0') == tonumber(ARGV[2])
  if not fresh then
    if f[1] == ARGV[1] then
      redis.call('DEL', KEYS[i])
      n = n + 1
    end
    if first == 2 then redis.call('ZREM', KEYS[1], ARGV[3 + i - first + 1]) end
  end
end
return n
"#;

/// The loaded scripts.
pub(crate) struct Scripts {
    pub(crate) create: Script,
    pub(crate) save: Script,
    pub(crate) rotate: Script,
    pub(crate) delete_at: Script,
    pub(crate) settle: Script,
    pub(crate) settle_rotate: Script,
    pub(crate) touch: Script,
    pub(crate) index: Script,
    pub(crate) prune: Script,
    pub(crate) bump: Script,
    pub(crate) destroy_batch: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let script = |body: &str| {
            Script::from_lua(format!(
                "local HISTORY = {HISTORY}\nlocal PRUNE_CHUNK = {PRUNE_CHUNK}\n{HELPERS}{body}"
            ))
        };
        Self {
            create: script(CREATE),
            save: script(SAVE),
            rotate: script(ROTATE),
            delete_at: script(DELETE_AT),
            settle: script(SETTLE),
            settle_rotate: script(SETTLE_ROTATE),
            touch: script(TOUCH),
            index: script(INDEX),
            prune: script(PRUNE),
            bump: script(BUMP),
            destroy_batch: script(DESTROY_BATCH),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 11] {
        [
            &self.create,
            &self.save,
            &self.rotate,
            &self.delete_at,
            &self.settle,
            &self.settle_rotate,
            &self.touch,
            &self.index,
            &self.prune,
            &self.bump,
            &self.destroy_batch,
        ]
    }
}
