//! The Lua scripts. Each store write is one script: one round trip, atomic on the server.
//!
//! Record layout: a hash with `v` (version), `e` (idle deadline, ms since the epoch), `d` (the
//! encoded body) and `u` (user id, when there is one). Its expiry is `e`, set with `PEXPIREAT`, so
//! Redis forgets a session exactly when it would have expired anyway. A user index is a set of
//! session ids (hex) whose expiry is pushed out to the latest absolute deadline of its sessions:
//! no record outlives its absolute deadline, so no index entry is needed longer.
//!
//! Return codes: `1` done, `0` version conflict (or id taken), `-1` not found.
//!
//! Every write is idempotent: each carries a random write id, stored in field `w`. If fred re-sends
//! a command because a connection dropped after the server ran it, the second run finds its own
//! write id and answers `1` instead of a conflict, so a replayed `update` is never applied twice.
//! (Comparing contents instead would be wrong: two writers that start from the same version can
//! produce byte-identical records, and the second must see a conflict.)

use fred::types::scripts::Script;

/// Shared helpers, prepended to the scripts that need them.
const HELPERS: &str = r#"
local function write(k, v, e, d, u, w)
  if u == '' then
    redis.call('HSET', k, 'v', v, 'e', e, 'd', d, 'w', w)
  else
    redis.call('HSET', k, 'v', v, 'e', e, 'd', d, 'w', w, 'u', u)
  end
  redis.call('PEXPIREAT', k, e)
end
local function index(k, id, a)
  redis.call('SADD', k, id)
  local t = redis.call('PEXPIRETIME', k)
  if t < tonumber(a) then redis.call('PEXPIREAT', k, a) end
end
local function already(k, w)
  return redis.call('HGET', k, 'w') == w
end
"#;

/// KEYS: record [, index]. ARGV: version, idle deadline, body, user, id hex, absolute deadline,
/// write id.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if already(KEYS[1], ARGV[7]) then return 1 end
  return 0
end
write(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[7])
if KEYS[2] then index(KEYS[2], ARGV[5], ARGV[6]) end
return 1
"#;

/// KEYS: record [, index]. ARGV: expected version, new version, idle deadline, body, user, id hex,
/// absolute deadline, write id.
///
/// The index is only touched when the user changes: its expiry already covers the record's
/// absolute deadline, which only a rotation (which always indexes) moves. So a save is four
/// server calls: two `HGET`s, `HSET`, `PEXPIREAT`. (Not one `HMGET`: the benchmark counts
/// clients' round trips from `INFO commandstats`, where a script's `HMGET` would look like a load.)
const SAVE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then return -1 end
if cur ~= ARGV[1] then
  if already(KEYS[1], ARGV[8]) then return 1 end
  return 0
end
local user = redis.call('HGET', KEYS[1], 'u')
write(KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[8])
if ARGV[5] == '' and user then redis.call('HDEL', KEYS[1], 'u') end
if KEYS[2] and user ~= ARGV[5] then index(KEYS[2], ARGV[6], ARGV[7]) end
return 1
"#;

/// KEYS: old record, new record [, index]. ARGV: as `SAVE`.
const ROTATE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then
  if already(KEYS[2], ARGV[8]) then return 1 end
  return -1
end
if cur ~= ARGV[1] then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
write(KEYS[2], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[8])
if KEYS[3] then index(KEYS[3], ARGV[6], ARGV[7]) end
return 1
"#;

/// KEYS: record. ARGV: expected version, new id hex, marker TTL (ms). Deletes the record only at that version and
/// leaves a short-lived marker naming the new id: the second half of a rotation whose old and new ids
/// live in different Cluster slots. The marker has no `v`, so it loads, saves and touches as
/// missing.
const DELETE_AT: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'v')
if not cur then
  if redis.call('HGET', KEYS[1], 'm') == ARGV[2] then return 1 end
  return -1
end
if cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'm', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// KEYS: record. ARGV: idle deadline.
const TOUCH: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'v') == 0 then return -1 end
redis.call('HSET', KEYS[1], 'e', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: index. ARGV: id hex, absolute deadline. Index upkeep when the index and the record are
/// in different Cluster slots.
const INDEX: &str = r#"
index(KEYS[1], ARGV[1], ARGV[2])
return 1
"#;

/// KEYS: records (all in one slot). ARGV: user. Deletes those that still belong to the user.
const DESTROY_IF_USER: &str = r#"
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('HGET', k, 'u') == ARGV[1] then
    redis.call('DEL', k)
    n = n + 1
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
    pub(crate) touch: Script,
    pub(crate) index: Script,
    pub(crate) destroy_if_user: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let with_helpers = |body: &str| Script::from_lua(format!("{HELPERS}{body}"));
        Self {
            create: with_helpers(CREATE),
            save: with_helpers(SAVE),
            rotate: with_helpers(ROTATE),
            delete_at: Script::from_lua(DELETE_AT),
            touch: Script::from_lua(TOUCH),
            index: with_helpers(INDEX),
            destroy_if_user: Script::from_lua(DESTROY_IF_USER),
        }
    }

    pub(crate) fn all(&self) -> [&Script; 7] {
        [
            &self.create,
            &self.save,
            &self.rotate,
            &self.delete_at,
            &self.touch,
            &self.index,
            &self.destroy_if_user,
        ]
    }
}
