//! The Lua scripts that keep a session record and its indexes in step. Every key of the
//! session store carries the hash tag `{aip}`, so in a Redis Cluster they share one slot
//! and each script runs atomically on one master (see `keys`).

use std::sync::LazyLock;

use redis::Script;

/// Stores a record and updates its indexes.
/// KEYS: record, meta. ARGV: session_id, record JSON, created (µs), task_name,
/// requester ('' for none), executor, finished (µs, '' while live), node, reason ('' none),
/// '1' for the first record of a new run of the session (it replaces an ended record of
/// its id, protocol.md §4.5) or '', the writing node's incarnation ('0': unchecked).
/// Returns 1 when written, else the rule that refused it, checked here, atomically with
/// the write, whichever node writes:
/// - -1: the stored session has ended (an ended session is final) and this is not a new
///   run of it;
/// - -2: the writing node is marked lost (`{aip}:lost:<node>`), or the write comes from
///   an earlier incarnation of it (`{aip}:epoch:<node>` has moved on): a fenced or
///   replaced node's writes are refused, not merely avoided;
/// - -3: a new record whose id the node that asked for it voided (`{aip}:void:<id>`:
///   it gave up on its open and answered that the session was not opened).
pub static UPSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = '{aip}:'
local sid = ARGV[1]
if redis.call('EXISTS', p..'lost:'..ARGV[8]) == 1 then return -2 end
if ARGV[11] ~= '0' then
  local e = redis.call('GET', p..'epoch:'..ARGV[8])
  if not e then redis.call('SET', p..'epoch:'..ARGV[8], ARGV[11])
  elseif e ~= ARGV[11] then return -2 end
end
if ARGV[10] ~= '1' and redis.call('ZSCORE', p..'finished', sid) then return -1 end
local old = redis.call('HMGET', KEYS[2], 't', 'r', 'e', 'n', 'x')
if not old[1] and redis.call('EXISTS', p..'void:'..sid) == 1 then return -3 end
if old[1] and old[1] ~= ARGV[4] then redis.call('ZREM', p..'t:'..old[1], sid) end
if old[2] and old[2] ~= '' and old[2] ~= ARGV[5] then redis.call('ZREM', p..'c:'..old[2], sid) end
if old[3] and old[3] ~= ARGV[6] then redis.call('ZREM', p..'c:'..old[3], sid) end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 't', ARGV[4], 'r', ARGV[5], 'e', ARGV[6], 'n', ARGV[8], 'x', ARGV[9])
redis.call('ZADD', p..'created', ARGV[3], sid)
redis.call('ZADD', p..'t:'..ARGV[4], ARGV[3], sid)
if ARGV[5] ~= '' then redis.call('ZADD', p..'c:'..ARGV[5], ARGV[3], sid) end
redis.call('ZADD', p..'c:'..ARGV[6], ARGV[3], sid)
if ARGV[7] == '' then
  redis.call('HSET', p..'live', sid, ARGV[8])
else
  redis.call('HDEL', p..'live', sid)
  redis.call('ZADD', p..'finished', ARGV[7], sid)
end
return 1
"#,
    )
});

/// The asking node gives up on a session it asked another node to open: if the session
/// is stored, it stands (returns 1); if not, its id is voided for a minute (returns 0),
/// so that the owner's late write of it is refused ([`UPSERT`] -3) and the session never
/// runs. KEYS: record. ARGV: session_id.
pub static VOID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
redis.call('SET', '{aip}:void:'..ARGV[1], '1', 'PX', 60000)
return 0
"#,
    )
});

/// Replaces a live record by its failed state, only if it is still live and still
/// `node`'s. KEYS: record, meta. ARGV: session_id, node, failed record JSON, finished
/// (µs), reason. Returns 1 when replaced.
pub static FAIL_IF_LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = '{aip}:'
local sid = ARGV[1]
if redis.call('HGET', p..'live', sid) ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'x', ARGV[5])
redis.call('HDEL', p..'live', sid)
redis.call('ZADD', p..'finished', ARGV[4], sid)
return 1
"#,
    )
});

/// Deletes records and their index entries. KEYS: any key of the slot (routing).
/// ARGV: mode ('ids', then session ids; 'older', cutoff µs; 'beyond', max_results).
/// Returns how many records were deleted. Live records are never purged ('older' and
/// 'beyond' only look at ended ones).
pub static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = '{aip}:'
local function del(sid)
  local m = redis.call('HMGET', p..'m:'..sid, 't', 'r', 'e')
  if m[1] then redis.call('ZREM', p..'t:'..m[1], sid) end
  if m[2] and m[2] ~= '' then redis.call('ZREM', p..'c:'..m[2], sid) end
  if m[3] then redis.call('ZREM', p..'c:'..m[3], sid) end
  redis.call('ZREM', p..'created', sid)
  redis.call('ZREM', p..'finished', sid)
  redis.call('HDEL', p..'live', sid)
  return redis.call('DEL', p..'s:'..sid, p..'m:'..sid) > 0 and 1 or 0
end
local n = 0
local ids
if ARGV[1] == 'ids' then
  ids = {}
  for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
elseif ARGV[1] == 'older' then
  ids = redis.call('ZRANGEBYSCORE', p..'finished', '-inf', '(' .. ARGV[2], 'LIMIT', 0, 1000)
else
  local extra = redis.call('ZCARD', p..'finished') - tonumber(ARGV[2])
  if extra <= 0 then return 0 end
  if extra > 1000 then extra = 1000 end
  ids = redis.call('ZRANGE', p..'finished', 0, extra - 1)
end
for _, sid in ipairs(ids) do n = n + del(sid) end
return n
"#,
    )
});
