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
//!
//! A rotated-away id holds a marker instead: `m` (the new id, hex) and `w` (the rotating write's
//! id), for `sessile_core::store::ROTATED_MARKER_TTL_MS`.
//!
//! # Exactly once
//!
//! Every write carries a write id, and a write that lands sets `<..>{<partition>}:w:<write id hex>`
//! to `1` in the record's slot, for [`WRITE_ID_TTL_MS`]. Each compare-and-set script first reads
//! that key: `1` means this very write already ran (a re-sent command: answer "done" without
//! running it again), `0` means `SETTLE` fenced it off (answer "fenced"). When a reply is lost,
//! `SETTLE` reads the key: `1` is "applied"; otherwise it sets it to `0` and answers "not
//! applied", and the write can never land after that. fred re-sends a command after a reconnect
//! even when told to try once (its retry path resets the attempt count), so recognising a re-send
//! cannot be left to the client; with the key it is exact however many writes came between.
//!
//! # User index and generation
//!
//! `<..>:i:<user>` is a sorted set of the user's session ids scored by their absolute deadline,
//! and `<..>:g:<user>` the user's generation. Every indexing write drops up to [`PRUNE_CHUNK`]
//! expired members (about a millisecond of server time); a write that leaves more asks the store
//! to continue with `PRUNE`, one chunk per call. A rotation within one user, and a logout, remove
//! the old id.
//! "Log out everywhere" first bumps the generation, then deletes the listed sessions in batches;
//! a same-slot rotation of a session whose `g` is not the current generation fails, so no
//! session escapes the logout by rotating while the batches run.
//!
//! # Invalidations
//!
//! Every script that changes a record's data or removes it publishes `<id hex>:<new version>:<ms>` (or
//! `<id hex>:-:<ms>` when it is gone; `<ms>` is Redis's clock) on the store's invalidation channel, `<prefix>:[<tenant>:]inv`,
//! inside the script, so it is sent exactly when the write is applied, and by every sessile
//! instance whether or not it caches. `TOUCH` does not: a cached copy with an earlier idle deadline
//! only expires early. Classic `PUBLISH` reaches subscribers on every node of a Cluster.
//!
//! Return codes: `1` done (now, or by an earlier run of the same write), `2` done and more of the
//! index is to be pruned, `0` version conflict (or id taken), `-1` not found, `-2` rotated away,
//! `-3` this write was fenced off by `SETTLE`.

use fred::types::scripts::Script;

/// How long a write's id key lives: far longer than fred's command timeout and reconnect delays
/// (a re-send), and than the layer's settle after a lost reply.
pub(crate) const WRITE_ID_TTL_MS: u64 = 60_000;

/// Expired index members dropped by one script call.
pub(crate) const PRUNE_CHUNK: i64 = 1000;

/// Shared helpers, prepended to every script.
const HELPERS: &str = r#"
local function seen(wk)
  local st = redis.call('GET', wk)
  if st == '1' then return 1 end
  if st == '0' then return -3 end
  return nil
end
-- A record's fields v, u, m, g when it is at version `expected`; otherwise nil and the reply:
-- -2 rotated away, -1 not found, 0 at another version.
local function current(k, expected)
  local f = redis.call('HMGET', k, 'v', 'u', 'm', 'g')
  if not f[1] then
    if f[3] then return nil, -2 end
    return nil, -1
  end
  if f[1] ~= expected then return nil, 0 end
  return f
end
local function landed(wk)
  redis.call('SET', wk, '1', 'PX', WRITE_ID_TTL_MS)
end
local function write(k, v, e, d, u, g)
  if u == '' then
    redis.call('HSET', k, 'v', v, 'e', e, 'd', d)
  else
    redis.call('HSET', k, 'v', v, 'e', e, 'd', d, 'u', u, 'g', g)
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
-- Tells the caches in front of Redis that record `k` changed to version `v` ('-': gone), and
-- when (ms on Redis's clock, for the invalidation delay).
local function published(k, v)
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('PUBLISH', CHANNEL, string.sub(k, -32) .. ':' .. v .. ':' .. ms)
end
local function marker(k, new, w, ttl)
  redis.call('DEL', k)
  redis.call('HSET', k, 'm', new, 'w', w)
  redis.call('PEXPIRE', k, ttl)
end
"#;

/// KEYS: record, write id [, index, generation]. ARGV: version, idle deadline, body, user, id
/// hex, absolute deadline.
const CREATE: &str = r#"
local done = seen(KEYS[2])
if done then return done end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local g = 0
if KEYS[3] then g = gen(KEYS[4]) end
write(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], g)
landed(KEYS[2])
if KEYS[3] then return index(KEYS[3], KEYS[4], ARGV[5], ARGV[6]) end
return 1
"#;

/// KEYS: record, write id [, index, generation]. ARGV: expected version, new version, idle
/// deadline, body, user, id hex, absolute deadline.
///
/// The index is only touched when the user changes: its expiry already covers the record's
/// absolute deadline, which only a rotation (which always indexes) moves.
const SAVE: &str = r#"
local done = seen(KEYS[2])
if done then return done end
local f, code = current(KEYS[1], ARGV[1])
if not f then return code end
local changed = (f[2] or '') ~= ARGV[5]
local g = f[4] or 0
if changed then
  -- A new user: its generation, or none when its index lives in another slot (then the record
  -- is never taken for one made after a log-out-everywhere began).
  g = 0
  if KEYS[3] then g = gen(KEYS[4]) end
end
write(KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], g)
landed(KEYS[2])
if ARGV[5] == '' and f[2] then redis.call('HDEL', KEYS[1], 'u', 'g') end
published(KEYS[1], ARGV[2])
if changed and KEYS[3] then return index(KEYS[3], KEYS[4], ARGV[6], ARGV[7]) end
return 1
"#;

/// KEYS: old record, new record, write id [, index, generation]. ARGV: as `SAVE`, then the
/// marker's time to live (ms), the old id (hex) and the write id.
const ROTATE: &str = r#"
local done = seen(KEYS[3])
if done then return done end
local f, code = current(KEYS[1], ARGV[1])
if not f then return code end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local g = 0
if KEYS[4] then
  g = gen(KEYS[5])
  if f[2] == ARGV[5] and tonumber(f[4] or '0') ~= g then
    -- The user was logged out everywhere since this session was written: it is ending, and
    -- must not escape to a new id.
    redis.call('DEL', KEYS[1])
    published(KEYS[1], '-')
    return -1
  end
end
marker(KEYS[1], ARGV[6], ARGV[10], ARGV[8])
published(KEYS[1], '-')
write(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], g)
landed(KEYS[3])
if KEYS[4] then
  if f[2] == ARGV[5] then redis.call('ZREM', KEYS[4], ARGV[9]) end
  return index(KEYS[4], KEYS[5], ARGV[6], ARGV[7])
end
return 1
"#;

/// KEYS: old record, write id. ARGV: expected version, new id hex, marker TTL (ms), write id
/// (hex). The second half of a rotation whose old and new ids live in different Cluster slots:
/// replaces the record with a marker, only at that version.
const DELETE_AT: &str = r#"
local done = seen(KEYS[2])
if done then return done end
local f, code = current(KEYS[1], ARGV[1])
if not f then return code end
marker(KEYS[1], ARGV[2], ARGV[4], ARGV[3])
landed(KEYS[2])
published(KEYS[1], '-')
return 1
"#;

/// KEYS: write id. Settles a write whose reply was lost: `1` applied; otherwise fences it off and
/// answers `0`, not applied.
const SETTLE: &str = r#"
local done = seen(KEYS[1])
if done == 1 then return 1 end
redis.call('SET', KEYS[1], '0', 'PX', WRITE_ID_TTL_MS)
return 0
"#;

/// KEYS: record. Deletes it and answers its user key (empty without one); a rotated-away id is
/// left alone and answers `-2`.
const DESTROY: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'v', 'm', 'u')
if not f[1] and f[2] then return -2 end
if redis.call('DEL', KEYS[1]) == 1 then published(KEYS[1], '-') end
return f[3] or ''
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
      published(KEYS[i], '-')
      n = n + 1
    end
    if first == 2 then redis.call('ZREM', KEYS[1], ARGV[3 + i - first + 1]) end
  end
end
return n
"#;

/// KEYS: the cache marker. ARGV: the listener's nonce. The invalidation stream's heartbeat: sets
/// the marker if it is missing and publishes `hb:<nonce>:<1 if it was there, else 0>`. A missing
/// marker means the database was emptied (or this is its first heartbeat): every listener then
/// drops its whole cache.
const HEARTBEAT: &str = r#"
local e = redis.call('EXISTS', KEYS[1])
if e == 0 then redis.call('SET', KEYS[1], '1', 'EX', 86400) end
redis.call('PUBLISH', CHANNEL, 'hb:' .. ARGV[1] .. ':' .. e)
return e
"#;

/// The loaded scripts.
pub(crate) struct Scripts {
    pub(crate) create: Script,
    pub(crate) save: Script,
    pub(crate) rotate: Script,
    pub(crate) delete_at: Script,
    pub(crate) settle: Script,
    pub(crate) touch: Script,
    pub(crate) destroy: Script,
    pub(crate) index: Script,
    pub(crate) prune: Script,
    pub(crate) bump: Script,
    pub(crate) destroy_batch: Script,
    pub(crate) heartbeat: Script,
}

impl Scripts {
    /// The scripts, publishing invalidations on `channel`.
    pub(crate) fn new(channel: &str) -> Self {
        // The channel as a Lua string of decimal escapes: any byte is safe in it.
        let mut lua_channel = String::from("'");
        for b in channel.bytes() {
            lua_channel.push_str(&format!("\\{b}"));
        }
        lua_channel.push('\'');
        let script = |body: &str| {
            Script::from_lua(format!(
                "local WRITE_ID_TTL_MS = {WRITE_ID_TTL_MS}\nlocal PRUNE_CHUNK = {PRUNE_CHUNK}\n\
                 local CHANNEL = {lua_channel}\n{HELPERS}{body}"
            ))
        };
        Self {
            create: script(CREATE),
            save: script(SAVE),
            rotate: script(ROTATE),
            delete_at: script(DELETE_AT),
            settle: script(SETTLE),
            touch: script(TOUCH),
            destroy: script(DESTROY),
            index: script(INDEX),
            prune: script(PRUNE),
            bump: script(BUMP),
            destroy_batch: script(DESTROY_BATCH),
            heartbeat: script(HEARTBEAT),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 12] {
        [
            &self.create,
            &self.save,
            &self.rotate,
            &self.delete_at,
            &self.settle,
            &self.touch,
            &self.destroy,
            &self.index,
            &self.prune,
            &self.bump,
            &self.destroy_batch,
            &self.heartbeat,
        ]
    }
}
