"""The Lua scripts of the Redis store: every state transition is one of these, run atomically.

Redis runs a script without interleaving any other command, which makes each script the same
unit as one SQLite transaction. Redis does not roll a script back when it fails halfway, so
every write script first checks everything it depends on (versions, the dedup key, the open
conversation index, `max_active`) and only then writes; a failed check returns a code
(`conflict`, `dup`, `idem`, `max_active`, `pid_taken`) and writes nothing.

Each script gets the key prefix as ARGV[1] and builds its key names from it (see
`docs/redis.md` for the layout and its hash tags). Index keys depend on values read inside the
script (the conversation's previous state, queue and agent), which is why keys are computed
here rather than all declared up front; the Redis Cluster plan in the docs says how that splits.

Times are integer microseconds since the epoch, handed over as decimal strings and stored as
such: Lua numbers are doubles, exact up to 2^53 (the year 2255 in microseconds), but Lua would
print big ones in exponent notation, so no time is ever formatted by Lua.
"""

from __future__ import annotations

from gateway.store.base import (
    AGENT_TARGET,
    CONVERSATION_TARGET,
    DELIVER_KIND,
    GRACE_KIND,
    MESSAGE_TARGET,
)

PRELUDE = r"""
local P = ARGV[1]
local SEP = '\t'
local function G(s) return P .. ':{g}:' .. s end
-- Redis's own clock in microseconds: node liveness goes by it, since a node's "alive until"
-- is compared by the other nodes, whose clocks may differ from its own.
local function redis_micros()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- A whole number as the digits Redis should read (Lua would write 1.7e+15, losing digits).
local function digits(x) return string.format('%.0f', x) end
local function CK(id) return P .. ':{c:' .. id .. '}' end
local function MK(id) return P .. ':{m:' .. id .. '}' end
local function CH(ch, s) return P .. ':{ch:' .. ch .. '}:' .. s end
local OPEN = {waiting = true, active = true, pending = true}

local function hincr(key, field, by)
  if redis.call('HINCRBY', key, field, by) <= 0 then redis.call('HDEL', key, field) end
end

-- deadlines: G('due') scores each member by max(due, lease_until), so the lowest score is both
-- what claim_due takes next and what next_due reports; G('duetime') keeps the real due time and
-- G('leaseby') the node holding a lease, released when that node is reaped.
local function set_deadline(member, due)
  redis.call('ZADD', G('due'), due, member)
  redis.call('HSET', G('duetime'), member, due)
  redis.call('HDEL', G('leaseby'), member)
end

local function del_deadline(member)
  redis.call('ZREM', G('due'), member)
  redis.call('HDEL', G('duetime'), member)
  redis.call('HDEL', G('leaseby'), member)
end

local function grace_member(agent) return '@AGENT@' .. agent .. SEP .. '@GRACE@' end

-- conversation indexes: per (state, queue) and per (state, agent) sorted sets scored by
-- queued_at for waiting (FIFO) and updated_at otherwise; counts and agent loads as hashes.
local function unindex(id, st, q, a)
  redis.call('ZREM', G('idx:' .. st .. ':' .. q), id)
  if a ~= '' then redis.call('ZREM', G('agt:' .. st .. ':' .. a), id) end
  hincr(G('count'), st .. SEP .. q, -1)
  if st == 'active' and a ~= '' then hincr(G('load'), a, -1) end
end

local function index(id, st, q, a, score)
  redis.call('ZADD', G('idx:' .. st .. ':' .. q), score, id)
  redis.call('SADD', G('queues'), q)
  if a ~= '' then redis.call('ZADD', G('agt:' .. st .. ':' .. a), score, id) end
  redis.call('HINCRBY', G('count'), st .. SEP .. q, 1)
  if st == 'active' and a ~= '' then redis.call('HINCRBY', G('load'), a, 1) end
end

-- A conversation write is 12 arguments: id, expected version (0: insert), document, state,
-- queue, agent, channel, address, queued_at, updated_at, deadlines ("kind=due kind=due"),
-- and the version it is stored with (the document's: one more than expected, or the same
-- for bookkeeping that publishes nothing).
local function read_conv(i)
  local c = {id = ARGV[i], expect = tonumber(ARGV[i + 1]), d = ARGV[i + 2], st = ARGV[i + 3],
             q = ARGV[i + 4], a = ARGV[i + 5], ch = ARGV[i + 6], ad = ARGV[i + 7],
             qa = ARGV[i + 8], ua = ARGV[i + 9], dl = ARGV[i + 10], v = ARGV[i + 11]}
  return c, i + 12
end

local function check_conv(c)
  local old = redis.call('HMGET', CK(c.id), 'v', 'st', 'q', 'a', 'ad', 'dk')
  if c.expect == 0 then
    if old[1] then return 'conflict' end
  elseif tonumber(old[1]) ~= c.expect then
    return 'conflict'
  end
  c.old = old
  if OPEN[c.st] then
    local cur = redis.call('HGET', CH(c.ch, 'open'), c.ad)
    if cur and cur ~= c.id then return 'conflict' end
  end
  return nil
end

local function apply_conv(c)
  local old = c.old
  local openkey = CH(c.ch, 'open')
  if old[1] then
    unindex(c.id, old[2], old[3], old[4])
    if OPEN[old[2]] and not OPEN[c.st] and redis.call('HGET', openkey, old[5]) == c.id then
      redis.call('HDEL', openkey, old[5])
    end
  end
  if OPEN[c.st] then redis.call('HSET', openkey, c.ad, c.id) end
  local score = c.ua
  if c.st == 'waiting' then score = c.qa end
  index(c.id, c.st, c.q, c.a, score)
  local target = '@CONVERSATION@' .. c.id
  local wanted, kinds = {}, {}
  for kind, due in string.gmatch(c.dl, '(%S+)=(%S+)') do
    wanted[kind] = due
    kinds[#kinds + 1] = kind
  end
  for kind in string.gmatch(old[6] or '', '%S+') do
    if not wanted[kind] then del_deadline(target .. SEP .. kind) end
  end
  for _, kind in ipairs(kinds) do
    local member = target .. SEP .. kind
    if redis.call('HGET', G('duetime'), member) ~= wanted[kind] then
      set_deadline(member, wanted[kind])
    end
  end
  redis.call('HSET', CK(c.id), 'd', c.d, 'v', c.v, 'st', c.st, 'q', c.q,
             'a', c.a, 'ch', c.ch, 'ad', c.ad, 'qa', c.qa, 'ua', c.ua,
             'dk', table.concat(kinds, ' '))
end

-- A conversation's and a contact's messages are kept in the order they were stored (a
-- deployment-wide sequence), not by id: ids are made from each node's clock before the
-- write, so two nodes' messages can be stored in the other order than their ids, and a reader
-- resuming after the one it saw last would skip the other. (Messages stored before this
-- order existed have score 0: they come first, by id, as they always did.)
local function put_message(mid, conv, ch, ad, doc)
  local seq = redis.call('INCR', G('mseq'))
  redis.call('HSET', MK(mid), 'd', doc, 'v', '1', 'c', conv, 'ch', ch)
  redis.call('ZADD', CK(conv) .. ':msgs', seq, mid)
  redis.call('ZADD', CH(ch, 'contact:' .. ad), seq, mid)
end

-- ARGV[i] = n, then n event documents: appended to the log stream; returns {'ok', ids...}.
local function append_events(i)
  local out = {'ok'}
  local n = tonumber(ARGV[i])
  for j = 1, n do
    out[#out + 1] = redis.call('XADD', G('log'), '*', 'd', ARGV[i + j])
  end
  return out
end

-- presence
local function mark_offline_if_last(agent, now, grace_due)
  if redis.call('HLEN', G('conn:' .. agent)) > 0 then return false end
  redis.call('SREM', G('online'), agent)
  redis.call('HSET', G('seen'), agent, now)
  set_deadline(grace_member(agent), grace_due)
  return true
end

local function drop_connections(node, agents, seen)
  local key = G('nodeconn:' .. node)
  for _, m in ipairs(redis.call('SMEMBERS', key)) do
    local tab = string.find(m, SEP, 1, true)
    local agent, conn = string.sub(m, 1, tab - 1), string.sub(m, tab + 1)
    redis.call('HDEL', G('conn:' .. agent), conn)
    if not seen[agent] then
      seen[agent] = true
      agents[#agents + 1] = agent
    end
  end
  redis.call('DEL', key)
  redis.call('SREM', G('cnodes'), node)
end

local function forget_node(node, agents, seen)
  drop_connections(node, agents, seen)
  local leases = redis.call('HGETALL', G('leaseby'))
  for j = 1, #leases, 2 do
    if leases[j + 1] == node then
      local due = redis.call('HGET', G('duetime'), leases[j])
      if due then redis.call('ZADD', G('due'), due, leases[j]) end
      redis.call('HDEL', G('leaseby'), leases[j])
    end
  end
  redis.call('ZREM', G('nodes'), node)
  redis.call('HDEL', G('layout'), node)
end
"""

# -- conversations ------------------------------------------------------------------------------

UPDATE = r"""
-- ARGV: P, max_active ('' none), conversation (12), events
local max_active = ARGV[2]
local c, i = read_conv(3)
local err = check_conv(c)
if err then return {err} end
if max_active ~= '' and c.st == 'active' and c.a ~= '' then
  local load = tonumber(redis.call('HGET', G('load'), c.a) or '0')
  if c.old[2] == 'active' and c.old[4] == c.a then load = load - 1 end
  if load >= tonumber(max_active) then return {'max_active', tostring(load)} end
end
apply_conv(c)
return append_events(i)
"""

FIND_OPEN = r"""
-- ARGV: P, channel, address
local id = redis.call('HGET', CH(ARGV[2], 'open'), ARGV[3])
if not id then return false end
return redis.call('HGET', CK(id), 'd')
"""

COUNT_ASSIGNED = r"""
-- ARGV: P, agent, states...
-- The agent's conversations by state and queue, flat (state, queue, count, ...): read from the
-- agent's own index of each state (what list_conversations reads for an agent), each one's
-- queue looked up. Per-queue counts are kept for everyone only, so this reads each of them.
local agent = ARGV[2]
local out = {}
for j = 3, #ARGV do
  local st = ARGV[j]
  local per, order = {}, {}
  for _, id in ipairs(redis.call('ZRANGE', G('agt:' .. st .. ':' .. agent), 0, -1)) do
    local q = redis.call('HGET', CK(id), 'q')
    if q then
      if not per[q] then order[#order + 1] = q; per[q] = 0 end
      per[q] = per[q] + 1
    end
  end
  for _, q in ipairs(order) do
    out[#out + 1] = st
    out[#out + 1] = q
    out[#out + 1] = per[q]
  end
end
return out
"""

LIST_CONVERSATIONS = r"""
-- ARGV: P, state, agent ('' any), limit, all queues ('1'|'0'), after score ('' none), after id,
--       queues...
-- Sorted sets order ties by member (the id), as the listing does; a page after a position
-- starts at its score and skips what is not past it (same score, id not past it).
local st, agent, limit, all = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5] == '1'
local after_score, after_id = tonumber(ARGV[6]), ARGV[7]
local desc = st ~= 'waiting'
local queues = {}
if all then
  queues = redis.call('SMEMBERS', G('queues'))
else
  for j = 8, #ARGV do queues[#queues + 1] = ARGV[j] end
end
local function past(id, score)
  if after_score == nil then return true end
  if score ~= after_score then
    if desc then return score < after_score end
    return score > after_score
  end
  if desc then return id < after_id end
  return id > after_id
end
-- `n` members of a set in listing order from the page's start, with their scores.
local function slice(key, offset, n)
  if after_score == nil then
    if desc then
      return redis.call('ZREVRANGE', key, offset, offset + n - 1, 'WITHSCORES')
    end
    return redis.call('ZRANGE', key, offset, offset + n - 1, 'WITHSCORES')
  end
  if desc then
    return redis.call(
      'ZREVRANGEBYSCORE', key, after_score, '-inf', 'WITHSCORES', 'LIMIT', offset, n)
  end
  return redis.call('ZRANGEBYSCORE', key, after_score, '+inf', 'WITHSCORES', 'LIMIT', offset, n)
end
local picked = {}
if agent ~= '' then
  local allowed = nil
  if not all then
    allowed = {}
    for _, q in ipairs(queues) do allowed[q] = true end
  end
  local key = G('agt:' .. st .. ':' .. agent)
  local start = 0
  while #picked < limit do
    local r = slice(key, start, 200)
    if #r == 0 then break end
    for j = 1, #r, 2 do
      local id = r[j]
      if past(id, tonumber(r[j + 1])) and #picked < limit then
        local h = redis.call('HMGET', CK(id), 'q', 'd')
        if h[2] and (allowed == nil or allowed[h[1]]) then
          picked[#picked + 1] = h[2]
        end
      end
    end
    start = start + 200
  end
  return picked
end
local rows = {}
for _, q in ipairs(queues) do
  local key = G('idx:' .. st .. ':' .. q)
  local start, kept = 0, 0
  while kept < limit do
    local r = slice(key, start, limit)
    if #r == 0 then break end
    for j = 1, #r, 2 do
      local score = tonumber(r[j + 1])
      if past(r[j], score) and kept < limit then
        rows[#rows + 1] = {r[j], score}
        kept = kept + 1
      end
    end
    start = start + limit
  end
end
table.sort(rows, function(x, y)
  if x[2] ~= y[2] then
    if desc then return x[2] > y[2] end
    return x[2] < y[2]
  end
  if desc then return x[1] > y[1] end
  return x[1] < y[1]
end)
for j = 1, math.min(limit, #rows) do
  picked[j] = redis.call('HGET', CK(rows[j][1]), 'd')
end
return picked
"""

# -- messages -----------------------------------------------------------------------------------

INGEST_READ = r"""
-- ARGV: P, channel, provider message id, address, thread refs...
-- -> {'dup', message, conversation} | {'new', open conversation or '', thread conversation or ''}
local ch, pid, ad = ARGV[2], ARGV[3], ARGV[4]
local existing = redis.call('HGET', CH(ch, 'pid'), pid)
if existing then
  local h = redis.call('HMGET', MK(existing), 'd', 'c')
  return {'dup', h[1], redis.call('HGET', CK(h[2]), 'd')}
end
local open = ''
local oid = redis.call('HGET', CH(ch, 'open'), ad)
if oid then open = redis.call('HGET', CK(oid), 'd') or '' end
local best = nil
for j = 5, #ARGV do
  local mid = redis.call('HGET', CH(ch, 'pid'), ARGV[j])
  if mid then
    local cid = redis.call('HGET', MK(mid), 'c')
    if cid and (best == nil or cid > best) then best = cid end
  end
end
local thread = ''
if best then thread = redis.call('HGET', CK(best), 'd') or '' end
return {'new', open, thread}
"""

INGEST_COMMIT = r"""
-- ARGV: P, channel, provider message id, address, expected open conversation id ('' none),
--       with conversation write ('1'|'0'), [conversation (12)], message id, its conversation id,
--       message document, events
local ch, pid, ad, expected_open = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local i = 7
local c = nil
if ARGV[6] == '1' then c, i = read_conv(7) end
local mid, mconv, mdoc = ARGV[i], ARGV[i + 1], ARGV[i + 2]
local existing = redis.call('HGET', CH(ch, 'pid'), pid)
if existing then return {'dup', existing} end
-- A conflict answers with the contact's open conversation now, so the caller can plan again
-- without another read.
local function conflict()
  local id = redis.call('HGET', CH(ch, 'open'), ad)
  return {'conflict', id and redis.call('HGET', CK(id), 'd') or ''}
end
if (redis.call('HGET', CH(ch, 'open'), ad) or '') ~= expected_open then return conflict() end
if c and check_conv(c) then return conflict() end
if not c and redis.call('EXISTS', CK(mconv)) == 0 then return conflict() end
put_message(mid, mconv, ch, ad, mdoc)
redis.call('HSET', CH(ch, 'pid'), pid, mid)
if c then apply_conv(c) end
return append_events(i + 3)
"""

ADD_OUTBOUND = r"""
-- ARGV: P, idempotency key ('' none), conversation (12), message id, message document,
--       provider message id ('' none), deliver-by ('' none), events
local idem = ARGV[2]
local c, i = read_conv(3)
local mid, mdoc, pid, deliver = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
if idem ~= '' then
  local previous = redis.call('HGET', CK(c.id) .. ':idem', idem)
  if previous then return {'idem', previous} end
end
local err = check_conv(c)
if err then return {err} end
if pid ~= '' then
  local other = redis.call('HGET', CH(c.ch, 'pid'), pid)
  if other and other ~= mid then return {'pid_taken'} end
end
if idem ~= '' then redis.call('HSET', CK(c.id) .. ':idem', idem, mid) end
apply_conv(c)
put_message(mid, c.id, c.ch, c.ad, mdoc)
if pid ~= '' then redis.call('HSET', CH(c.ch, 'pid'), pid, mid) end
if deliver ~= '' then set_deadline('@MESSAGE@' .. mid .. SEP .. '@DELIVER@', deliver) end
return append_events(i + 4)
"""

FIND_IDEMPOTENT = r"""
-- ARGV: P, conversation id, key
local mid = redis.call('HGET', CK(ARGV[2]) .. ':idem', ARGV[3])
if not mid then return false end
return redis.call('HGET', MK(mid), 'd')
"""

FIND_MESSAGE = r"""
-- ARGV: P, channel, provider message id
local mid = redis.call('HGET', CH(ARGV[2], 'pid'), ARGV[3])
if not mid then return false end
return redis.call('HGET', MK(mid), 'd')
"""

LIST_MESSAGES = r"""
-- KEYS: the sorted set of message ids (in stored order); ARGV: P, after ('' from the start:
-- otherwise a member, or nothing follows), limit
local start = 0
if ARGV[2] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[2])
  if not rank then return {} end
  start = rank + 1
end
local out = {}
for _, mid in ipairs(redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[3]) - 1)) do
  out[#out + 1] = redis.call('HGET', MK(mid), 'd')
end
return out
"""

LIST_RECENT_MESSAGES = r"""
-- KEYS: the sorted set of message ids (in stored order); ARGV: P, before ('' the newest:
-- otherwise a member, or nothing precedes), limit
-- -> the newest `limit` messages stored before `before`, oldest of them first
local limit = tonumber(ARGV[3])
local stop = -1
if ARGV[2] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[2])
  if not rank or rank == 0 then return {} end
  stop = rank - 1
else
  stop = redis.call('ZCARD', KEYS[1]) - 1
end
if stop < 0 or limit < 1 then return {} end
local first = stop - limit + 1
if first < 0 then first = 0 end
local out = {}
for _, mid in ipairs(redis.call('ZRANGE', KEYS[1], first, stop)) do
  out[#out + 1] = redis.call('HGET', MK(mid), 'd')
end
return out
"""

STATUS_READ = r"""
-- ARGV: P, mode ('id'|'pid'), message id or (channel, provider id), [provider id for orphans]
-- -> {} unknown | {message id, message, version, conversation or '', orphan statuses...}
local mid
if ARGV[2] == 'id' then
  mid = ARGV[3]
else
  mid = redis.call('HGET', CH(ARGV[3], 'pid'), ARGV[4])
  if not mid then return {} end
end
local h = redis.call('HMGET', MK(mid), 'd', 'v', 'c', 'ch')
if not h[1] then return {} end
local out = {mid, h[1], h[2], redis.call('HGET', CK(h[3]), 'd') or ''}
if ARGV[2] == 'id' and ARGV[4] ~= '' then
  for _, s in ipairs(redis.call('LRANGE', CH(h[4], 'orphan:' .. ARGV[4]), 0, -1)) do
    out[#out + 1] = s
  end
end
return out
"""

STATUS_COMMIT = r"""
-- ARGV: P, message id, expected message version, new message document,
--       provider id to attach ('' none), orphan statuses read (-1: none taken),
--       expected conversation version ('' unchecked), events
local mid, expected, doc, pid = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local orphans, conv_version = tonumber(ARGV[6]), ARGV[7]
local h = redis.call('HMGET', MK(mid), 'v', 'ch', 'c')
if h[1] ~= expected then return {'conflict'} end
if conv_version ~= '' and redis.call('HGET', CK(h[3]), 'v') ~= conv_version then
  return {'conflict'}
end
local orphan_key = CH(h[2], 'orphan:' .. pid)
if pid ~= '' then
  local other = redis.call('HGET', CH(h[2], 'pid'), pid)
  if other and other ~= mid then return {'pid_taken'} end
  if orphans >= 0 and redis.call('LLEN', orphan_key) ~= orphans then return {'conflict'} end
end
redis.call('HSET', MK(mid), 'd', doc, 'v', tostring(tonumber(expected) + 1))
if pid ~= '' then
  redis.call('HSET', CH(h[2], 'pid'), pid, mid)
  if orphans >= 0 then redis.call('DEL', orphan_key) end
end
return append_events(8)
"""

ORPHAN_ADD = r"""
-- ARGV: P, channel, provider id, status document: kept until a send returns that id
if redis.call('HEXISTS', CH(ARGV[2], 'pid'), ARGV[3]) == 1 then return {'conflict'} end
local orphan_key = CH(ARGV[2], 'orphan:' .. ARGV[3])
redis.call('RPUSH', orphan_key, ARGV[4])
-- a report for a send that never returns its id must not be kept forever
redis.call('EXPIRE', orphan_key, 86400)
return {'ok'}
"""

# -- deadlines ----------------------------------------------------------------------------------

CLAIM_DUE = r"""
-- ARGV: P, now, limit, lease until, node ('' anonymous) -> {member, due, member, due, ...}
local now, limit, lease_until, node = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', G('due'), '-inf', now, 'LIMIT', 0, limit)) do
  local due = redis.call('HGET', G('duetime'), member)
  redis.call('ZADD', G('due'), lease_until, member)
  if node ~= '' then
    redis.call('HSET', G('leaseby'), member, node)
  else
    redis.call('HDEL', G('leaseby'), member)
  end
  out[#out + 1] = member
  out[#out + 1] = due
end
return out
"""

SET_DEADLINE = r"""
-- ARGV: P, member, due
set_deadline(ARGV[2], ARGV[3])
return 1
"""

CLEAR_DEADLINE = r"""
-- ARGV: P, member, due ('' whatever it is)
if ARGV[3] == '' or redis.call('HGET', G('duetime'), ARGV[2]) == ARGV[3] then
  del_deadline(ARGV[2])
end
return 1
"""

# -- presence -----------------------------------------------------------------------------------

PRESENCE_CONNECT = r"""
-- ARGV: P, agent, connection, node
local agent, conn, node = ARGV[2], ARGV[3], ARGV[4]
redis.call('HSET', G('conn:' .. agent), conn, node)
redis.call('SADD', G('nodeconn:' .. node), agent .. SEP .. conn)
redis.call('SADD', G('cnodes'), node)
redis.call('SADD', G('online'), agent)
del_deadline(grace_member(agent))
return 1
"""

PRESENCE_DISCONNECT = r"""
-- ARGV: P, agent, connection, now, grace due -> 1 when it was the agent's last connection
local agent, conn = ARGV[2], ARGV[3]
local node = redis.call('HGET', G('conn:' .. agent), conn)
if node then
  redis.call('HDEL', G('conn:' .. agent), conn)
  local key = G('nodeconn:' .. node)
  redis.call('SREM', key, agent .. SEP .. conn)
  if redis.call('SCARD', key) == 0 then redis.call('SREM', G('cnodes'), node) end
end
if mark_offline_if_last(agent, ARGV[4], ARGV[5]) then return 1 end
return 0
"""

DROP_NODE = r"""
-- ARGV: P, now, grace due, nodes... -> agents left offline
local agents, seen, out = {}, {}, {}
for j = 4, #ARGV do forget_node(ARGV[j], agents, seen) end
for _, agent in ipairs(agents) do
  if mark_offline_if_last(agent, ARGV[2], ARGV[3]) then out[#out + 1] = agent end
end
return out
"""

REAP_NODES = r"""
-- ARGV: P, now, grace due -> agents left offline by nodes whose heartbeat lapsed (by Redis's
-- clock); `now` and the grace are the node's, as the timers they arm are
local agents, seen, out = {}, {}, {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', G('nodes'), '-inf', digits(redis_micros()))) do
  forget_node(node, agents, seen)
end
for _, agent in ipairs(agents) do
  if mark_offline_if_last(agent, ARGV[2], ARGV[3]) then out[#out + 1] = agent end
end
return out
"""

NODE_HEARTBEAT = r"""
-- ARGV: P, node, time to live (us), this node's data layout -> {1 when the node was alive
-- already (else 0), then the live nodes of another layout, or of none: older versions, which
-- do not record one}. Alive until Redis's now plus the time to live: every node compares that
-- with Redis's clock, not its own.
local now = redis_micros()
local previous = redis.call('ZSCORE', G('nodes'), ARGV[2])
redis.call('ZADD', G('nodes'), digits(now + tonumber(ARGV[3])), ARGV[2])
redis.call('HSET', G('layout'), ARGV[2], ARGV[4])
local out = {0}
if previous and tonumber(previous) > now then out[1] = 1 end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', G('nodes'), '(' .. digits(now), '+inf')) do
  if redis.call('HGET', G('layout'), node) ~= ARGV[4] then out[#out + 1] = node end
end
return out
"""

PRESENCE_STARTUP = r"""
-- ARGV: P, node, now, grace due -> agents whose grace this armed
local now = ARGV[3]
local live_now = redis_micros()  -- liveness goes by Redis's clock (see NODE_HEARTBEAT)
local agents, seen, out = {}, {}, {}
for _, node in ipairs(redis.call('SMEMBERS', G('cnodes'))) do
  local alive = redis.call('ZSCORE', G('nodes'), node)
  if not alive or tonumber(alive) <= live_now then forget_node(node, agents, seen) end
end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', G('nodes'), '-inf', digits(live_now))) do
  forget_node(node, agents, seen)
end
for _, agent in ipairs(agents) do
  if mark_offline_if_last(agent, now, ARGV[4]) then out[#out + 1] = agent end
end
-- Only agents who had a connection on a dead node: one who works over REST alone never had
-- one, and a restart must not set their conversations pending when nothing else ever would.
return out
"""

PRESENCE = r"""
-- ARGV: P -> {n, agent, last seen, ... (n pairs), online agents...}
local seen = redis.call('HGETALL', G('seen'))
local out = {tostring(#seen / 2)}
for _, v in ipairs(seen) do out[#out + 1] = v end
for _, agent in ipairs(redis.call('SMEMBERS', G('online'))) do out[#out + 1] = agent end
return out
"""

# -- key-value ----------------------------------------------------------------------------------

KV_COMPARE_SET = r"""
-- ARGV: P, key, expected, value, expect absent ('1'|'0')
local current = redis.call('HGET', G('kv'), ARGV[2])
if ARGV[5] == '1' then
  if current then return 0 end
elseif current ~= ARGV[3] then
  return 0
end
redis.call('HSET', G('kv'), ARGV[2], ARGV[4])
return 1
"""

PRUNE_EVENTS = r"""
-- ARGV: P, age (ms): trim the log of what Redis appended longer ago than that, by its own
-- clock, and remember the newest id that went, which tells a reader behind it that it
-- missed events (ids have gaps, so only this can).
local log = G('log')
local now = redis.call('TIME')
local cutoff = tostring(tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  - tonumber(ARGV[2]))
local newest = redis.call('XREVRANGE', log, '(' .. cutoff .. '-0', '-', 'COUNT', 1)
if #newest == 0 then return 0 end
local trimmed = redis.call('XTRIM', log, 'MINID', cutoff)
local mark = newest[1][1]
local known = redis.call('GET', G('pruned'))
if known then
  local kms, kseq = string.match(known, '^(%d+)-(%d+)$')
  local ms, seq = string.match(mark, '^(%d+)-(%d+)$')
  kms, kseq, ms, seq = tonumber(kms), tonumber(kseq), tonumber(ms), tonumber(seq)
  if kms > ms or (kms == ms and kseq >= seq) then return trimmed end
end
redis.call('SET', G('pruned'), mark)
return trimmed
"""

SCRIPTS: dict[str, str] = {
    "update": UPDATE,
    "find_open": FIND_OPEN,
    "list_conversations": LIST_CONVERSATIONS,
    "count_assigned": COUNT_ASSIGNED,
    "ingest_read": INGEST_READ,
    "ingest_commit": INGEST_COMMIT,
    "add_outbound": ADD_OUTBOUND,
    "find_idempotent": FIND_IDEMPOTENT,
    "find_message": FIND_MESSAGE,
    "list_messages": LIST_MESSAGES,
    "list_recent_messages": LIST_RECENT_MESSAGES,
    "status_read": STATUS_READ,
    "status_commit": STATUS_COMMIT,
    "orphan_add": ORPHAN_ADD,
    "claim_due": CLAIM_DUE,
    "set_deadline": SET_DEADLINE,
    "clear_deadline": CLEAR_DEADLINE,
    "presence_connect": PRESENCE_CONNECT,
    "presence_disconnect": PRESENCE_DISCONNECT,
    "drop_node": DROP_NODE,
    "reap_nodes": REAP_NODES,
    "node_heartbeat": NODE_HEARTBEAT,
    "presence_startup": PRESENCE_STARTUP,
    "presence": PRESENCE,
    "kv_compare_set": KV_COMPARE_SET,
    "prune_events": PRUNE_EVENTS,
}
"""Script bodies by name; `source()` prepends the shared prelude."""


def source(name: str) -> str:
    """Return the full Lua source of a script: the prelude with our target names, then its body."""
    prelude = (
        PRELUDE.replace("@AGENT@", AGENT_TARGET)
        .replace("@GRACE@", GRACE_KIND)
        .replace("@CONVERSATION@", CONVERSATION_TARGET)
    )
    body = SCRIPTS[name].replace("@MESSAGE@", MESSAGE_TARGET).replace("@DELIVER@", DELIVER_KIND)
    return prelude + body
