"""Every Lua script the Redis arbiter runs, as constants (DESIGN.md section 6).

Each script is registered once per client by :class:`cluster.state.redis_state.RedisState`
(``register_script``) and called by SHA; redis-py's ``AsyncScript`` loads it again on
NOSCRIPT, since the script cache "is always volatile" (a restart or a failover flushes it).

Rules every script keeps (STYLE.md, wave 2 anchors 1-3):

- every key it touches arrives in ``KEYS``, all under one bot's ``tc:{<bot_id>}:`` prefix;
- "now" is Redis's own clock (``TIME``), never the caller's, so hosts with skewed clocks
  agree; Redis 7 replicates a script's effects, so reading ``TIME`` before a write is safe;
- a script that writes on behalf of a lease holder compares the whole lease value
  ``"<holder>|<token>"`` inside the script and returns a code; Python maps a mismatch to
  ``LeaseLostError`` / ``GrantOutcome.LEASE_LOST``, never a silent write;
- the text is fixed at import time (two shared snippets are joined into the constants
  once), never generated per call: every distinct text is a new entry in the script cache.

Numbers cross the boundary as integers: Lua numbers are doubles, exact for millisecond
timestamps (13 digits), and Redis truncates them to integer replies.
"""

from __future__ import annotations

# Redis's clock in milliseconds, as a local `now`.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# The budget hash as (remaining, total, reset_at_ms, rolled), or nil when absent or
# incomplete. A window whose reset time has passed rolls over: remaining = total and
# reset_at moves on by whole days until it is in the future (Discord's daily
# session_start_limit, Get Gateway Bot).
_READ_BUDGET_FN = """
local function read_budget(key, now)
  local v = redis.call('HMGET', key, 'remaining', 'total', 'reset_at_ms')
  local remaining, total, reset_at = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if not (remaining and total and reset_at) then
    return nil
  end
  local rolled = false
  if now >= reset_at then
    reset_at = reset_at + (math.floor((now - reset_at) / 86400000) + 1) * 86400000
    remaining = total
    rolled = true
  end
  return remaining, total, reset_at, rolled
end
"""

# KEYS[1] - layout hash (fields shards, max_concurrency, and resharded_from once a
#           reshard switched: the count it replaced)
# ARGV[1] - shards this host computed
# ARGV[2] - max_concurrency this host computed
# return {shards, max_concurrency, resharded_from (0: none)} as stored after the call:
#        ours when the hash was absent (or incomplete) and has just been written,
#        otherwise the one another host wrote first (the caller compares: it runs a
#        resharded layout when it asked for the count that layout replaced, and refuses
#        any other mismatch)
CLAIM_LAYOUT = """
local v = redis.call('HMGET', KEYS[1], 'shards', 'max_concurrency', 'resharded_from')
local shards, max_concurrency = tonumber(v[1]), tonumber(v[2])
if shards and max_concurrency then
  return {shards, max_concurrency, tonumber(v[3]) or 0}
end
redis.call('HSET', KEYS[1], 'shards', ARGV[1], 'max_concurrency', ARGV[2])
return {tonumber(ARGV[1]), tonumber(ARGV[2]), 0}
"""

# KEYS[1] - lease key, value "<holder>|<token>"
# KEYS[2] - the range's fencing counter
# KEYS[3] - the bot's fencing counter (every range's tokens come from it too, so a lease
#           of a new layout's range outranks every token of the layout before it)
# KEYS[4] - layout hash
# KEYS[5] - reshard hash (fields to, phase)
# ARGV[1] - holder (the caller)
# ARGV[2] - ttl in milliseconds
# ARGV[3] - the shard count the caller's range belongs to (0: not checked)
# return the fencing token when the lease is the caller's after the call: a new token
#        (above both counters) when the lease was free, the lease's own token (TTL
#        refreshed) when the caller already held it; nil when another holder has it;
#        minus the layout's shard count when the caller's count is not the layout's (nor
#        the target of a reshard that is starting): that range is not run any more
ACQUIRE_LEASE = """
local want = tonumber(ARGV[3])
if want and want > 0 then
  local shards = tonumber(redis.call('HGET', KEYS[4], 'shards'))
  if shards and shards ~= want then
    local r = redis.call('HMGET', KEYS[5], 'to', 'phase')
    if not (tonumber(r[1]) == want and r[2] == 'starting') then
      return -shards
    end
  end
end
local current = redis.call('GET', KEYS[1])
if current then
  local holder, token = string.match(current, '^(.*)|(%d+)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return false
end
local token = math.max(tonumber(redis.call('GET', KEYS[2])) or 0,
                       tonumber(redis.call('GET', KEYS[3])) or 0) + 1
redis.call('SET', KEYS[2], token)
redis.call('SET', KEYS[3], token)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS[1] - lease key
# KEYS[2] - the range's fencing counter
# KEYS[3] - the bot's fencing counter
# ARGV[1] - the caller's lease value "<holder>|<token>"
# ARGV[2] - ttl in milliseconds
# ARGV[3] - the caller's token
# return {1} when the lease was the caller's and its TTL is renewed;
#        {2} when the key was gone (Redis restarted empty, or it expired and nobody took
#        it): the lease is written again with the same value and both counters are raised
#        to at least the token, so the next acquisition still gets a higher one;
#        {0, value} when another holder has it
RENEW_LEASE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1}
end
if current then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, 3 do
  local fence = tonumber(redis.call('GET', KEYS[i]))
  if not fence or fence < tonumber(ARGV[3]) then
    redis.call('SET', KEYS[i], ARGV[3])
  end
end
return {2}
"""

# KEYS[1] - lease key
# ARGV[1] - the caller's lease value "<holder>|<token>"
# return 1 if the lease was the caller's and is deleted, otherwise 0
RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1..n] - lease keys
# return {value_1, pttl_1, ..., value_n, pttl_n}: each lease's "<holder>|<token>" (nil
#        when absent) and its remaining TTL in milliseconds (PTTL: -2 absent, -1 none),
#        read at one instant
READ_LEASES = """
local out = {}
for i = 1, #KEYS do
  out[2 * i - 1] = redis.call('GET', KEYS[i])
  out[2 * i] = redis.call('PTTL', KEYS[i])
end
return out
"""

# KEYS[1] - lease key
# KEYS[2] - cold-start guard (boot), Redis time in ms of the first grant request
# KEYS[3] - identify bucket idb:<shard_id % max_concurrency>
# KEYS[4] - budget hash (remaining, total, reset_at_ms)
# ARGV[1] - the caller's lease value "<holder>|<token>"
# ARGV[2] - the grant value "<shard_id>|<holder>|<token>"
# ARGV[3] - hold_ms: how long the bucket stays taken until the IDENTIFY is written
# ARGV[4] - reserve: sessions of the budget never granted
# ARGV[5] - cold_start_ms: no grant until this long after the guard was (re)written
# return {outcome, retry_after_ms, remaining}, checked in this order:
#        "lease_lost"  the lease is not the caller's (retry 0, remaining -1);
#        "cold_start"  the guard is absent (just written now) or younger than
#                      cold_start_ms: Redis lost what the buckets held, so wait out one
#                      identify interval (retry = the rest, remaining -1);
#        "bucket_busy" the bucket is held (retry = its PTTL, remaining -1);
#        "budget_low"  remaining <= reserve (retry = until the reset, remaining);
#        "granted"     the bucket is taken for hold_ms and one session spent
#                      (remaining after it, -1 when no budget is known)
TRY_IDENTIFY = (
    _NOW
    + _READ_BUDGET_FN
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'lease_lost', 0, -1}
end
local cold_start = tonumber(ARGV[5])
local boot = tonumber(redis.call('GET', KEYS[2]))
if not boot then
  redis.call('SET', KEYS[2], now)
  if cold_start > 0 then
    return {'cold_start', cold_start, -1}
  end
elseif now - boot < cold_start then
  return {'cold_start', cold_start - (now - boot), -1}
end
local held = redis.call('PTTL', KEYS[3])
if held ~= -2 then
  if held < 0 then
    held = tonumber(ARGV[3])
  end
  return {'bucket_busy', held, -1}
end
local remaining, total, reset_at, rolled = read_budget(KEYS[4], now)
if remaining then
  if rolled then
    redis.call('HSET', KEYS[4], 'remaining', remaining, 'reset_at_ms', reset_at)
  end
  if remaining <= tonumber(ARGV[4]) then
    return {'budget_low', reset_at - now, remaining}
  end
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
if remaining then
  remaining = redis.call('HINCRBY', KEYS[4], 'remaining', -1)
else
  remaining = -1
end
return {'granted', 0, remaining}
"""
)

# KEYS[1] - identify bucket idb:<bucket>
# ARGV[1] - the caller's grant value "<shard_id>|<holder>|<token>"
# ARGV[2] - spacing_ms: how long the bucket stays taken from now (the IDENTIFY was just
#           written, so the identify interval counts from here)
# return 1 if the bucket held the caller's grant and is now held for spacing_ms, else 0
IDENTIFY_SENT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS[1] - identify bucket idb:<bucket>
# KEYS[2] - budget hash
# ARGV[1] - the caller's grant value "<shard_id>|<holder>|<token>"
# return 1 if the bucket held the caller's (unused) grant: it is freed and the session
#        refunded to the budget (never above total); otherwise 0
IDENTIFY_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local v = redis.call('HMGET', KEYS[2], 'remaining', 'total')
local remaining, total = tonumber(v[1]), tonumber(v[2])
if remaining and total and remaining < total then
  redis.call('HSET', KEYS[2], 'remaining', remaining + 1)
end
return 1
"""

# KEYS[1] - budget hash (remaining, total, reset_at_ms)
# ARGV[1] - remaining, as Discord reports it (GET /gateway/bot session_start_limit)
# ARGV[2] - total
# ARGV[3] - reset_after in milliseconds
# return {remaining, total, reset_after_ms} as stored after the call. Discord's numbers
#        are taken when no budget is stored, when the stored window has ended, or when
#        Discord's reset is more than 60 s after the stored one (a new window); within
#        the same window remaining only goes down (the lower of the two), because grants
#        already spent here may not show in Discord's answer yet. total and the reset
#        time are always Discord's.
SYNC_BUDGET = (
    _NOW
    + """
local given, total, reset_after = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local reset_at = now + reset_after
local v = redis.call('HMGET', KEYS[1], 'remaining', 'reset_at_ms')
local stored, stored_reset = tonumber(v[1]), tonumber(v[2])
local remaining = given
if stored and stored_reset and now < stored_reset and reset_at <= stored_reset + 60000 then
  remaining = math.min(stored, given)
end
redis.call('HSET', KEYS[1], 'remaining', remaining, 'total', total, 'reset_at_ms', reset_at)
return {remaining, total, reset_after}
"""
)

# KEYS[1] - budget hash
# return {remaining, total, reset_after_ms} (rolled over if the window has ended; read
#        only, the next grant writes the roll-over), or nil when no budget is stored
READ_BUDGET = (
    _NOW
    + _READ_BUDGET_FN
    + """
local remaining, total, reset_at = read_budget(KEYS[1], now)
if not remaining then
  return false
end
return {remaining, total, reset_at - now}
"""
)

# KEYS[1] - lease key
# KEYS[2..n+1] - session keys sess:<shard>
# ARGV[1] - the caller's lease value "<holder>|<token>"
# ARGV[2] - the caller's fencing token
# ARGV[3] - ttl of each written session in milliseconds
# ARGV[4..n+3] - for KEYS[i + 1]: the session JSON (carrying "fence": token) to write,
#                or "" to delete it
# return {1, skipped} when the batch is applied; skipped counts sessions left alone
#        because a holder with a higher fencing token wrote them (never overwritten,
#        never deleted by a lower one);
#        {0, value} when the lease is not the caller's (value: the current holder's
#        lease value, nil when nobody holds it); nothing is written then
CHECKPOINT = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {0, current}
end
local token = tonumber(ARGV[2])
local skipped = 0
for i = 2, #KEYS do
  local newer = false
  local stored = redis.call('GET', KEYS[i])
  if stored then
    local ok, doc = pcall(cjson.decode, stored)
    if ok and type(doc) == 'table' then
      local fence = tonumber(doc['fence'])
      newer = fence ~= nil and fence > token
    end
  end
  local value = ARGV[i + 2]
  if newer then
    skipped = skipped + 1
  elseif value == '' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], value, 'PX', ARGV[3])
  end
end
return {1, skipped}
"""

# The sink (DESIGN.md section 6, cluster/sink.py): one call appends a batch of runs, each
# run a shard's consecutive events of one session, and moves those shards' checkpoints in
# the same step. The streams are named by event only (the @discordjs/brokers layout), the
# one exception to the key prefix; they still arrive in KEYS.
#
# KEYS[1] - lease key
# KEYS[2..S+1] - the session keys sess:<shard> of the batch's shards (each once)
# KEYS[S+2..S+1+M] - the streams the batch appends to (each once, M <= 255)
# ARGV[1] - the caller's lease value "<holder>|<token>"
# ARGV[2] - the caller's fencing token
# ARGV[3] - ttl of each written session in milliseconds
# ARGV[4] - S, the number of session keys
# ARGV[5] - R, the number of runs
# then per run: k (its session key is KEYS[1 + k]), session id, resume url ("" when
#   unknown), first seq, the run's streams (a string of n bytes: event i goes to stream
#   byte i, KEYS[S + 1 + byte i]), then the n events' data
# The session key holds the JSON of protocol.session.Session plus "fence" and the
# session before it ("prev_session_id", "prev_seq"), whose late events still dedupe.
# An event is appended when its seq is above the one its session's key holds, and the
# key then holds the last appended seq: the checkpoint *is* what the streams have, so a
# RESUME from it loses nothing and a replay appends nothing twice. A run's seqs are
# consecutive, so the events at or below the checkpoint are a prefix of it, counted
# once per run; nothing is compared per event. Each session key is read once and
# written once per call (runs of one shard update one decoded copy in between).
# return {1, appended, skipped} when applied; {0, value} when the lease is not the
#        caller's (value: the current holder's lease value, nil when none); nothing is
#        written then
SINK_APPEND = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {0, current}
end
local token = tonumber(ARGV[2])
local ttl = ARGV[3]
local sessions = tonumber(ARGV[4])
local runs = tonumber(ARGV[5])
local byte = string.byte
local docs, changed = {}, {}
local a = 6
local appended, skipped = 0, 0
for r = 1, runs do
  local k = tonumber(ARGV[a])
  local sid, url, first, streams = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3]), ARGV[a + 4]
  local count = #streams
  a = a + 5
  local doc = docs[k]
  if doc == nil then
    local stored = redis.call('GET', KEYS[1 + k])
    if stored then
      local ok, decoded = pcall(cjson.decode, stored)
      if ok and type(decoded) == 'table' then
        doc = decoded
      end
    end
    if doc == nil then
      doc = {}
    end
    docs[k] = doc
  end
  local prev = false
  local done = 0
  if doc['session_id'] == sid then
    done = tonumber(doc['seq']) or 0
  elseif doc['prev_session_id'] == sid then
    prev = true
    done = tonumber(doc['prev_seq']) or 0
  else
    if doc['session_id'] then
      doc['prev_session_id'] = doc['session_id']
      doc['prev_seq'] = tonumber(doc['seq']) or 0
    end
    doc['session_id'] = sid
    doc['seq'] = 0
    doc['resume_url'] = nil
    changed[k] = true
  end
  local skip = done - first + 1
  if skip < 0 then
    skip = 0
  elseif skip > count then
    skip = count
  end
  local base = sessions + 1
  for i = skip + 1, count do
    redis.call('XADD', KEYS[base + byte(streams, i)], '*', 'data', ARGV[a + i - 1])
  end
  a = a + count
  appended = appended + count - skip
  skipped = skipped + skip
  if count > skip then
    changed[k] = true
    if prev then
      doc['prev_seq'] = first + count - 1
    else
      doc['seq'] = first + count - 1
    end
  end
  if not prev and url ~= '' and doc['resume_url'] ~= url then
    doc['resume_url'] = url
    changed[k] = true
  end
end
for k in pairs(changed) do
  local doc = docs[k]
  doc['fence'] = token
  redis.call('SET', KEYS[1 + k], cjson.encode(doc), 'PX', ttl)
end
return {1, appended, skipped}
"""

# KEYS[1] - lease key
# KEYS[2..n+1] - session keys sess:<shard> of the caller's range
# ARGV[1] - the caller's lease value "<holder>|<token>"
# ARGV[2] - ttl in milliseconds
# return {1, touched} (keys that exist and got the ttl); {0, value} when the lease is not
#        the caller's (as SINK_APPEND)
SINK_TOUCH = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {0, current}
end
local touched = 0
for i = 2, #KEYS do
  touched = touched + redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return {1, touched}
"""

# KEYS - the streams to trim
# ARGV[1] - retention in milliseconds: entries whose id (Redis time of the append) is
#           older go, by MINID ~ (whole macro nodes: cheap, and a little is kept)
# ARGV[2] - maxlen: beyond it the oldest go, by MAXLEN ~ (0: no length bound)
# return the number of entries removed
SINK_TRIM = (
    _NOW
    + """
local minid = string.format('%d', now - tonumber(ARGV[1]))
local maxlen = tonumber(ARGV[2])
local removed = 0
for i = 1, #KEYS do
  removed = removed + redis.call('XTRIM', KEYS[i], 'MINID', '~', minid)
  if maxlen > 0 then
    removed = removed + redis.call('XTRIM', KEYS[i], 'MAXLEN', '~', maxlen)
  end
end
return removed
"""
)

# Resharding across hosts (cluster/reshard_hosts.py). One reshard at a time, in the hash
# reshard: id, from, to, hosts, phase (starting -> switching -> switched, or abandoned),
# error. The sets reshard:ready and reshard:drained hold the indexes of the host ranges
# whose new set is settled / whose old set stopped publishing; reshard:fp the old sets'
# fingerprints (binary batches, see cluster.reshard.Fingerprints). Every key of a
# reshard expires RESHARD_TTL_MS after its last change.
#
# KEYS[1] - reshard hash, KEYS[2] - layout hash, KEYS[3] ready set, KEYS[4] drained set,
# KEYS[5] - fingerprint list, KEYS[6] - recording set
# ARGV[1] - id, ARGV[2] - from, ARGV[3] - to, ARGV[4] - hosts, ARGV[5] - ttl ms
# return {'started', id}; {'busy', id, to} when a reshard is starting or switching;
#        {'layout', shards} when the layout does not run `from` shards
RESHARD_BEGIN = """
local r = redis.call('HMGET', KEYS[1], 'id', 'to', 'phase')
if r[3] == 'starting' or r[3] == 'switching' then
  return {'busy', r[1], tonumber(r[2])}
end
local shards = tonumber(redis.call('HGET', KEYS[2], 'shards'))
if shards ~= tonumber(ARGV[2]) then
  return {'layout', shards or 0}
end
redis.call('DEL', KEYS[1], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'from', ARGV[2], 'to', ARGV[3], 'hosts', ARGV[4],
           'phase', 'starting')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {'started', ARGV[1]}
"""

# KEYS[1] - reshard hash, KEYS[2] - layout hash, KEYS[3] - ready set
# ARGV[1] - id, ARGV[2] - the caller's range index, ARGV[3] - ttl ms
# return the phase after the call ('' when the id is not the reshard's any more). The
#        last range to be ready moves the phase to switching and the layout to the new
#        count (resharded_from = the old): from then on no lease of the old layout can be
#        taken, and a host that starts runs the new one.
RESHARD_READY = """
local r = redis.call('HMGET', KEYS[1], 'id', 'from', 'to', 'hosts', 'phase')
if r[1] ~= ARGV[1] then
  return ''
end
if r[5] ~= 'starting' then
  return r[5]
end
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
if redis.call('SCARD', KEYS[3]) >= tonumber(r[4]) then
  redis.call('HSET', KEYS[1], 'phase', 'switching')
  redis.call('HSET', KEYS[2], 'shards', r[3], 'resharded_from', r[2])
  return 'switching'
end
return 'starting'
"""

# KEYS[1] - reshard hash, KEYS[2] - ready set
# ARGV[1] - id, ARGV[2] - the caller's range index
# return the phase ('' when the id is not the reshard's any more). A host that takes part
#        (again: it restarted, or took the range over) is not ready until it says so anew.
RESHARD_JOIN = """
local r = redis.call('HMGET', KEYS[1], 'id', 'phase')
if r[1] ~= ARGV[1] then
  return ''
end
if r[2] == 'starting' then
  redis.call('SREM', KEYS[2], ARGV[2])
end
return r[2]
"""

# KEYS[1] - reshard hash, KEYS[2] - recording set
# ARGV[1] - id, ARGV[2] - the caller's range index, ARGV[3] - ttl ms
# return {phase, 1 when every range records its old set's fingerprints, else 0} (phase ''
#        when the id is not the reshard's any more). No new set may start before every old
#        set records: an event an old set published unrecorded could be held by a new one.
RESHARD_RECORDING = """
local r = redis.call('HMGET', KEYS[1], 'id', 'hosts', 'phase')
if r[1] ~= ARGV[1] then
  return {'', 0}
end
if r[3] == 'starting' then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if redis.call('SCARD', KEYS[2]) >= tonumber(r[2]) then
  return {r[3], 1}
end
return {r[3], 0}
"""

# KEYS[1] - reshard hash, KEYS[2] - drained set
# ARGV[1] - id, ARGV[2] - the caller's range index ('' to only force), ARGV[3] - ttl ms,
# ARGV[4] - 1 to move to switched whoever has drained (a host that died mid-switch)
# return the phase after the call ('' when the id is not the reshard's any more)
RESHARD_DRAINED = """
local r = redis.call('HMGET', KEYS[1], 'id', 'hosts', 'phase')
if r[1] ~= ARGV[1] then
  return ''
end
if r[3] ~= 'switching' then
  return r[3]
end
if ARGV[2] ~= '' then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
if ARGV[4] == '1' or redis.call('SCARD', KEYS[2]) >= tonumber(r[2]) then
  redis.call('HSET', KEYS[1], 'phase', 'switched')
  return 'switched'
end
return 'switching'
"""

# KEYS[1] - reshard hash
# ARGV[1] - id, ARGV[2] - why
# return the phase after the call: 'abandoned' unless the switch had begun already
RESHARD_ABANDON = """
local r = redis.call('HMGET', KEYS[1], 'id', 'phase')
if r[1] ~= ARGV[1] then
  return ''
end
if r[2] == 'starting' then
  redis.call('HSET', KEYS[1], 'phase', 'abandoned', 'error', ARGV[2])
  return 'abandoned'
end
return r[2]
"""
