//! The Lua scripts. Each store write is one script: one round trip, atomic on the server.
//!
//! # Record layout
//!
//! A record is one string whose expiry is its idle deadline (`PXAT`), so Redis forgets a session
//! exactly when it would have expired anyway. A fixed header comes first, so that a script reads
//! what it compares with one `GETRANGE` and writes the record with one `SET`:
//!
//! | bytes | what |
//! |---|---|
//! | 1 | `R` |
//! | 8 | version, big-endian (compare-and-set compares these bytes) |
//! | 8 | idle deadline, ms since the epoch, big-endian (`touch` rewrites it with `SETRANGE`) |
//! | 8 | the user's generation when the record was last given to that user (see below) |
//! | 2 | length of the user key, big-endian |
//! | n | the user key (`<tenant>:<user>`), empty without a user |
//! | rest | the encoded body |
//!
//! A rotated-away id holds a marker instead, `M`, the new id (hex) and the rotating write's id
//! (hex), for `sessile_core::store::ROTATED_MARKER_TTL_MS`.
//!
//! # Exactly once
//!
//! Every write carries a write id, and a write that lands leaves `<..>{<partition>}:w:<write id
//! hex>` set to `1` in the record's slot, for [`WRITE_ID_TTL_MS`]. Each compare-and-set script
//! first reads what it will compare (a read cannot leave a half-run script behind), then claims
//! the key with `SET NX GET`: `1` already there means this very write already ran (a re-sent
//! command: answer "done" without running it again), `0` means `SETTLE` fenced it off (answer
//! "fenced"). A write that claims the key and then does not land (a version conflict, a missing
//! record) deletes it again, so a re-send finds the same answer. When a reply is lost, `SETTLE`
//! reads the key: `1` is "applied"; otherwise it sets it to `0` and answers "not applied", and the
//! write can never land after that. The store asks fred for one attempt per compare-and-set
//! script, but recognising a copy is not left to the client: with the key it is exact however
//! many writes came between, whoever sent the copy.
//!
//! # User index and generation
//!
//! `<..>:i:<user>` is a sorted set of the user's session ids scored by their absolute deadline,
//! and `<..>:g:<user>` the user's generation. Every indexing write drops up to [`PRUNE_CHUNK`]
//! expired members (about a millisecond of server time); a write that leaves more asks the store
//! to continue with `PRUNE`, one chunk per call. A rotation within one user, and a logout, remove
//! the old id.
//! "Log out everywhere" first bumps the generation, then deletes the listed sessions in batches;
//! a same-slot rotation of a session whose generation is not the current one fails, so no
//! session escapes the logout by rotating while the batches run.
//!
//! # Invalidations
//!
//! Every script that changes a record's data or removes it publishes `<id hex>:<new version>:<ms>`
//! (or `<id hex>:-:<ms>` when it is gone; `<ms>` is the writer's clock when it sent the write) on
//! the store's invalidation channel, `<prefix>:[<tenant>:]inv`, inside the script, so it is sent
//! exactly when the write is applied, and by every sessile instance whether or not it caches. The
//! writer builds the message, so the script only sends it. `TOUCH` does not publish: a cached
//! copy with an earlier idle deadline only expires early. Classic `PUBLISH` reaches subscribers on
//! every node of a Cluster.
//!
//! Return codes: `1` done (now, or by an earlier run of the same write), `2` done and more of the
//! index is to be pruned, `3` nothing done: send the user's keys, `0` version conflict (or id
//! taken), `-1` not found, `-2` rotated away, `-3` this write was fenced off by `SETTLE`, `-4`
//! what the key holds is not a record or a marker (answered before anything is written).
//!
//! An error Redis raises inside a script after the write id was claimed (a user's index key of
//! another type, say) leaves the write applied and its id claimed: the store reports it as
//! unavailable, so the layer settles it and learns "applied".

use fred::types::scripts::Script;

/// How long a write's id key lives: far longer than fred's command timeout and reconnect delays
/// (a re-send), and than the layer's settle after a lost reply.
pub(crate) const WRITE_ID_TTL_MS: u64 = 60_000;

/// Expired index members dropped by one script call.
pub(crate) const PRUNE_CHUNK: i64 = 1000;

/// Shared helpers, prepended to every script.
const HELPERS: &str = r#"
local ZERO = '\0\0\0\0\0\0\0\0'
-- The first bytes of record `k`: the header and, for a user key of up to 255 bytes, the user;
-- false when the key holds something else than a string (read without raising an error, so that
-- a script can answer "corrupt" before it writes anything).
local function head(k)
  local h = redis.pcall('GETRANGE', k, 0, 281)
  if type(h) ~= 'string' then return false end
  return h
end
-- What `h` (from `head`) is: 'R' a record (its header whole), 'M' a marker, '' nothing, or
-- false for anything else.
local function kind(h)
  if h == '' then return '' end
  if not h then return false end
  local t = string.sub(h, 1, 1)
  if t == 'M' or (t == 'R' and #h >= 27) then return t end
  return false
end
-- Why a record with header `h` cannot be written at version `expected` (-1 not found, -2 rotated
-- away, -4 unreadable, 0 at another version), or nil when it can.
local function refused(h, expected)
  local t = kind(h)
  if t == '' then return -1 end
  if t == 'M' then return -2 end
  if not t then return -4 end
  if string.sub(h, 2, 9) ~= expected then return 0 end
  return nil
end
local function user(k, h)
  local n = string.byte(h, 26) * 256 + string.byte(h, 27)
  if n == 0 then return '' end
  if 27 + n <= #h then return string.sub(h, 28, 27 + n) end
  return redis.call('GETRANGE', k, 27, 26 + n)
end
local function generation(h)
  return string.sub(h, 18, 25)
end
local function gen(gk)
  return struct.pack('>I8', tonumber(redis.call('GET', gk) or '0'))
end
-- Claims the write's id key: nil when the write is new, else the reply (1 it already ran, -3 it
-- was fenced off).
local function claim(wk)
  local st = redis.call('SET', wk, '1', 'NX', 'GET', 'PX', WRITE_ID_TTL_MS)
  if st == '1' then return 1 end
  if st == '0' then return -3 end
  return nil
end
-- A claimed write that does not land: the claim goes, and a re-send finds the same answer.
local function release(wk, code)
  redis.call('DEL', wk)
  return code
end
local function store(k, h, g, tail, e)
  redis.call('SET', k, h .. g .. tail, 'PXAT', e)
end
local function prune(k)
  -- By Redis's clock, which also expires the records: a member goes when its record does.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local dead = redis.call('ZRANGEBYSCORE', k, '-inf', now, 'LIMIT', 0, PRUNE_CHUNK)
  if #dead > 0 then redis.call('ZREM', k, unpack(dead)) end
  return #dead
end
-- Adds session `id` (absolute deadline `a`) to index `k`, drops expired members and keeps the
-- index and the generation `gk` alive until `a` at least.
local function index(k, gk, id, a)
  redis.call('ZADD', k, a, id)
  local pruned = 0
  if redis.call('PEXPIREAT', k, a, 'NX') == 0 then
    -- The index was there already: it may hold expired members, and may expire sooner.
    pruned = prune(k)
    redis.call('PEXPIREAT', k, a, 'GT')
  end
  redis.call('PEXPIREAT', gk, a, 'GT')
  if pruned >= PRUNE_CHUNK then return 2 end
  return 1
end
-- Tells the caches in front of Redis that a record changed or went (the writer built the message).
local function published(msg)
  redis.call('PUBLISH', CHANNEL, msg)
end
"#;

/// KEYS: record, write id [, index, generation]. ARGV: record head (`R`, version, idle deadline),
/// record tail (user length, user, body), expiry (ms), user, id hex, absolute deadline.
///
/// Every script reads what it compares before it claims the write id, so a read that fails (a key
/// of another type) leaves no claim behind.
const CREATE: &str = r#"
local g = ZERO
if KEYS[3] then g = gen(KEYS[4]) end
local done = claim(KEYS[2])
if done then return done end
if not redis.call('SET', KEYS[1], ARGV[1] .. g .. ARGV[2], 'NX', 'PXAT', ARGV[3]) then
  return release(KEYS[2], 0)
end
if KEYS[3] then return index(KEYS[3], KEYS[4], ARGV[5], ARGV[6]) end
return 1
"#;

/// KEYS: record, write id [, index, generation]. ARGV: expected version (8 bytes), then as
/// `CREATE`, then the invalidation message, then `1` if the user's keys live in another slot.
///
/// The index is only touched when the user changes: its expiry already covers the record's
/// absolute deadline, which only a rotation (which always indexes) moves. So the user's keys are
/// sent only when the user changes: a save without them that finds a new user answers `3` before
/// it writes anything, and is sent again with them.
const SAVE: &str = r#"
local h = head(KEYS[1])
local code = refused(h, ARGV[1])
local changed, g = false, ZERO
if not code then
  changed = user(KEYS[1], h) ~= ARGV[5]
  if changed and ARGV[5] ~= '' and not KEYS[3] and ARGV[9] ~= '1' then return 3 end
  g = generation(h)
  if changed then
    -- A new user: its generation, or none when its index lives in another slot (then the record
    -- is never taken for one made after a log-out-everywhere began).
    g = ZERO
    if KEYS[3] then g = gen(KEYS[4]) end
  end
end
local done = claim(KEYS[2])
if done then return done end
if code then return release(KEYS[2], code) end
store(KEYS[1], ARGV[2], g, ARGV[3], ARGV[4])
published(ARGV[8])
if changed and KEYS[3] then return index(KEYS[3], KEYS[4], ARGV[6], ARGV[7]) end
return 1
"#;

/// KEYS: old record, new record, write id [, index, generation]. ARGV: as `SAVE` (its message
/// says the old id is gone), then the marker's time to live (ms), the old id (hex) and the marker.
const ROTATE: &str = r#"
local h = head(KEYS[1])
local code = refused(h, ARGV[1])
local taken = redis.call('EXISTS', KEYS[2])
local was, g = nil, ZERO
if not code then
  was = user(KEYS[1], h)
  if KEYS[4] then g = gen(KEYS[5]) end
end
local done = claim(KEYS[3])
if done then return done end
if code then return release(KEYS[3], code) end
if taken == 1 then return release(KEYS[3], 0) end
if KEYS[4] and was == ARGV[5] and generation(h) ~= g then
  -- The user was logged out everywhere since this session was written: it is ending, and must
  -- not escape to a new id.
  redis.call('DEL', KEYS[1])
  published(ARGV[8])
  return release(KEYS[3], -1)
end
redis.call('SET', KEYS[1], ARGV[11], 'PX', ARGV[9])
published(ARGV[8])
store(KEYS[2], ARGV[2], g, ARGV[3], ARGV[4])
if KEYS[4] then
  if was == ARGV[5] then redis.call('ZREM', KEYS[4], ARGV[10]) end
  return index(KEYS[4], KEYS[5], ARGV[6], ARGV[7])
end
return 1
"#;

/// KEYS: old record, write id. ARGV: expected version (8 bytes), marker TTL (ms), the marker, the
/// invalidation message. The second half of a rotation whose old and new ids live in different
/// Cluster slots: replaces the record with a marker, only at that version.
const DELETE_AT: &str = r#"
local code = refused(head(KEYS[1]), ARGV[1])
local done = claim(KEYS[2])
if done then return done end
if code then return release(KEYS[2], code) end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
published(ARGV[4])
return 1
"#;

/// KEYS: write id. Settles a write whose reply was lost: `1` applied; otherwise fences it off and
/// answers `0`, not applied.
const SETTLE: &str = r#"
if redis.call('GET', KEYS[1]) == '1' then return 1 end
redis.call('SET', KEYS[1], '0', 'PX', WRITE_ID_TTL_MS)
return 0
"#;

/// KEYS: record. ARGV: the invalidation message. Deletes it and answers its user key (empty
/// without one, or when the record cannot be read: it is deleted all the same); a rotated-away
/// id is left alone and answers `-2`.
const DESTROY: &str = r#"
local h = head(KEYS[1])
local t = kind(h)
if t == '' then return '' end
if t == 'M' then return -2 end
local u = ''
if t == 'R' then u = user(KEYS[1], h) end
redis.call('DEL', KEYS[1])
published(ARGV[1])
return u
"#;

/// KEYS: record. ARGV: idle deadline (8 bytes), the same in ms.
const TOUCH: &str = r#"
local t = kind(head(KEYS[1]))
if t == '' then return -1 end
if t == 'M' then return -2 end
if not t then return -4 end
redis.call('SETRANGE', KEYS[1], 9, ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
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

/// KEYS: [index,] records (all in one slot). ARGV: user, generation (8 bytes), `1` if KEYS[1] is
/// the index, the writer's clock (ms, for the invalidations), then the records' ids (hex). Deletes
/// those records that are still the user's and older than the generation, and removes from the
/// index every member it handled; a member made at the current generation (a login after the
/// logout began) stays. Returns how many records it deleted.
const DESTROY_BATCH: &str = r#"
local first = 1
if ARGV[3] == '1' then first = 2 end
local n = 0
for i = first, #KEYS do
  local h = head(KEYS[i])
  -- A record that cannot be read is no one's: it is left to expire, and does not stop the rest.
  local mine = kind(h) == 'R' and user(KEYS[i], h) == ARGV[1]
  if not (mine and generation(h) == ARGV[2]) then
    if mine then
      redis.call('DEL', KEYS[i])
      published(string.sub(KEYS[i], -32) .. ':-:' .. ARGV[4])
      n = n + 1
    end
    if first == 2 then redis.call('ZREM', KEYS[1], ARGV[4 + i - first + 1]) end
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
