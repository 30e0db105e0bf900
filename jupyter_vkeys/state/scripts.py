"""The Lua scripts the Redis ledger runs server-side (one script call per operation).

Loaded by :class:`.redis_ledger.RedisLedger` (``register_script``: EVALSHA, reloaded
after a Redis restart). Each script runs atomically: Redis executes one script at a
time, so a check and the reservation that follows it cannot interleave with another
replica's.

Money is exact: Lua 5.1 numbers are doubles (exact up to 2^53, i.e. $9,007 in
pico-USD), so every amount travels and is stored as two limbs, whole USD ``u`` and
pico-USD below one dollar ``p`` (``0 <= p < 10^12``), compared and added limb by limb.
Token and request counts are small integers and stay plain numbers.

Key layout (``P`` is the configured prefix, ``{vkeys}:`` by default). The scripts name
keys at run time, so they need one Redis/Valkey primary (not Redis Cluster):

- ``P b:<scope>:<period>:<window start>``  hash ``su sp hu hp``: spent and held
- ``P c:<scope>``                          calls in flight (integer)
- ``P r:<scope>`` / ``P t:<scope>``        RPM / TPM buckets: field = second, value = amount
- ``P h:<request id>``                     the open hold of one call (what settle undoes)
- ``P p:<path id>``                        the spend windows of one scope path
- ``P rh:<replica>``                       request ids a replica holds open
- ``P alive:<replica>``                    the replica's lease (expires if it dies)
- ``P replicas``                           replicas that may hold something
- ``P epoch``                              the ledger's identity (a wiped Redis has none)
- ``P lost``                               hash: calls charged at their hold (count, u, p)
"""

from __future__ import annotations

# Shared helpers, prepended to every script.
_PRELUDE = r"""
local P = ARGV[1]
local E = 1000000000000
local function s(x) return string.format('%d', x) end
local function norm(u, p)
  local c = math.floor(p / E)
  return u + c, p - c * E
end
local function get2(key, f)
  local v = redis.call('HMGET', key, f .. 'u', f .. 'p')
  return tonumber(v[1] or 0) or 0, tonumber(v[2] or 0) or 0
end
-- Add (du, dp) to a two-limb field with HINCRBY (exact int64 in Redis); carry when
-- the pico limb leaves [0, E). Returns the new pico limb.
local function add2(key, f, du, dp)
  local p = redis.call('HINCRBY', key, f .. 'p', s(dp))
  if du ~= 0 then redis.call('HINCRBY', key, f .. 'u', s(du)) end
  if p >= E or p < 0 then
    local c = math.floor(p / E)
    redis.call('HINCRBY', key, f .. 'p', s(-c * E))
    redis.call('HINCRBY', key, f .. 'u', s(c))
    p = p - c * E
  end
  return p
end
local function words(text)
  local out = {}
  for w in string.gmatch(text or '', '%S+') do out[#out + 1] = w end
  return out
end
-- Undo one open hold: release holds, note the cost as spend (in acc, per scope path;
-- spend_all adds it before the script ends, so it is atomic with the rest), free the
-- slots, correct the token reservation. Returns 0 when the hold is not open (already
-- settled or reaped): that is what makes a retried settle harmless.
local function settle_one(rid, cu, cp, tokens, acc)
  local hkey = P .. 'h:' .. rid
  local h = redis.call('HMGET', hkey, 'hu', 'hp', 'bk', 'sk', 'ck', 'tk', 'tn', 'rep')
  if not h[1] then return 0 end
  local hu, hp = tonumber(h[1]), tonumber(h[2])
  for _, key in ipairs(words(h[3])) do add2(key, 'h', -hu, -hp) end
  if cu > 0 or cp > 0 then
    local a = acc[h[4]]
    if a == nil then acc[h[4]] = {cu, cp} else a[1] = a[1] + cu; a[2] = a[2] + cp end
  end
  for _, key in ipairs(words(h[5])) do redis.call('DECR', key) end
  if tokens == nil then tokens = tonumber(h[7]) end
  local delta = tokens - tonumber(h[7])
  if delta ~= 0 then
    for _, entry in ipairs(words(h[6])) do
      local key, field = string.match(entry, '^(.*)|(%d+)$')
      if redis.call('HEXISTS', key, field) == 1 then redis.call('HINCRBY', key, field, delta) end
    end
  end
  redis.call('DEL', hkey)
  redis.call('SREM', P .. 'rh:' .. h[8], rid)
  return 1
end
-- Add the spend noted by settle_one to every window of every scope of each path
-- (one addition per window per script, however many calls of that path it settled).
local function spend_all(acc)
  for path, a in pairs(acc) do
    local list = redis.call('GET', P .. 'p:' .. path)
    local u, p = norm(a[1], a[2])
    for _, entry in ipairs(words(list)) do
      local key, expire = string.match(entry, '^(.*)@(%d+)$')
      add2(key, 's', u, p)
      if expire ~= '0' then redis.call('EXPIREAT', key, expire) end
    end
  end
end
-- Sum of a bucket hash's amounts newer than horizon (dropping older buckets) and the
-- oldest remaining bucket's second.
local function window_sum(key, horizon)
  local all = redis.call('HGETALL', key)
  local total, oldest, stale = 0, nil, {}
  for i = 1, #all, 2 do
    local sec = tonumber(all[i])
    if sec <= horizon then stale[#stale + 1] = all[i]
    else
      total = total + tonumber(all[i + 1])
      if oldest == nil or sec < oldest then oldest = sec end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, oldest
end
"""

# ARGV: prefix, request id, replica, lease ms, epoch, hold u, hold p, token need, plan
# (JSON: c = [[key, limit]], r/t = [[key, limit]], b = [[key, cap u, cap p, expire at]],
# s = "key@expire key@expire ...", every window of every scope, where settlement adds
# the spend; expire at 0 = never; p = a name for s, stored as P p:<p> for settlement).
# Returns {0} admitted, {1} already admitted (a retry), {-9} ledger reset, or a refusal:
# {2, i, in flight} concurrency, {3, i, used, wait ms} RPM, {4, i, used, wait ms} TPM,
# {5, i, spent u, spent p, held u, held p} budget (i = 1-based index in its list).
ADMIT = _PRELUDE + r"""
local rid, rep, lease = ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('GET', P .. 'epoch') ~= ARGV[5] then return {-9} end
local hkey = P .. 'h:' .. rid
if redis.call('EXISTS', hkey) == 1 then return {1} end
local hu, hp, need = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local plan = cjson.decode(ARGV[9])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local horizon = now - 60
local stamp = math.ceil(now)
for i, c in ipairs(plan.c) do
  local n = tonumber(redis.call('GET', c[1]) or 0)
  if n >= c[2] then return {2, i, n} end
end
for i, r in ipairs(plan.r) do
  local used, oldest = window_sum(r[1], horizon)
  if used + 1 > r[2] then
    return {3, i, used, math.max(math.ceil(((oldest or stamp) + 60 - now) * 1000), 1)}
  end
end
for i, r in ipairs(plan.t) do
  local used, oldest = window_sum(r[1], horizon)
  if used + need > r[2] then
    local wait = 60000
    if need <= r[2] then wait = math.max(math.ceil(((oldest or stamp) + 60 - now) * 1000), 1) end
    return {4, i, used, wait}
  end
end
for i, b in ipairs(plan.b) do
  local su, sp = get2(b[1], 's')
  local du, dp = get2(b[1], 'h')
  local nu, np = norm(su + du + hu, sp + dp + hp)
  if nu > b[2] or (nu == b[2] and np > b[3]) then return {5, i, su, sp, du, dp} end
end
-- every check passed: reserve everywhere
local ck, tk, bk = {}, {}, {}
for _, c in ipairs(plan.c) do redis.call('INCR', c[1]); ck[#ck + 1] = c[1] end
for _, r in ipairs(plan.r) do
  redis.call('HINCRBY', r[1], s(stamp), 1); redis.call('EXPIRE', r[1], 62)
end
for _, r in ipairs(plan.t) do
  redis.call('HINCRBY', r[1], s(stamp), need); redis.call('EXPIRE', r[1], 62)
  tk[#tk + 1] = r[1] .. '|' .. s(stamp)
end
for _, b in ipairs(plan.b) do
  add2(b[1], 'h', hu, hp); bk[#bk + 1] = b[1]
  if b[4] > 0 then redis.call('EXPIREAT', b[1], s(b[4])) end
end
redis.call('HSET', hkey, 'hu', s(hu), 'hp', s(hp), 'bk', table.concat(bk, ' '),
           'sk', plan.p, 'ck', table.concat(ck, ' '),
           'tk', table.concat(tk, ' '), 'tn', s(need), 'rep', rep)
redis.call('SET', P .. 'p:' .. plan.p, plan.s, 'EX', 3000000)
redis.call('SADD', P .. 'rh:' .. rep, rid)
redis.call('SADD', P .. 'replicas', rep)
redis.call('SET', P .. 'alive:' .. rep, '1', 'PX', lease)
return {0}
"""

# ARGV: prefix, then groups of four: request id, cost u, cost p, tokens.
# Returns how many holds were open (and are now settled).
SETTLE = _PRELUDE + r"""
local done, acc = 0, {}
for i = 2, #ARGV, 4 do
  done = done + settle_one(ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
                           tonumber(ARGV[i + 3]), acc)
end
spend_all(acc)
return done
"""

# ARGV: prefix, this replica, lease ms. Renews this replica's lease, then charges every
# open hold of a replica whose lease expired at its hold (the single-process crash
# rule: a call that may have reached the provider is charged its worst case), counts
# it in P lost, and forgets the dead replica. Returns the number of holds charged.
REAP = _PRELUDE + r"""
local me, lease = ARGV[2], tonumber(ARGV[3])
redis.call('SET', P .. 'alive:' .. me, '1', 'PX', lease)
redis.call('SADD', P .. 'replicas', me)
local charged, acc = 0, {}
for _, rep in ipairs(redis.call('SMEMBERS', P .. 'replicas')) do
  if redis.call('EXISTS', P .. 'alive:' .. rep) == 0 then
    for _, rid in ipairs(redis.call('SMEMBERS', P .. 'rh:' .. rep)) do
      local h = redis.call('HMGET', P .. 'h:' .. rid, 'hu', 'hp')
      if h[1] then
        local hu, hp = tonumber(h[1]), tonumber(h[2])
        charged = charged + settle_one(rid, hu, hp, nil, acc)
        redis.call('HINCRBY', P .. 'lost', 'count', 1)
        add2(P .. 'lost', '', hu, hp)
      end
    end
    redis.call('DEL', P .. 'rh:' .. rep)
    redis.call('SREM', P .. 'replicas', rep)
  end
end
spend_all(acc)
return charged
"""

# ARGV: prefix, then budget window keys. Returns {spent u, spent p, held u, held p} per
# key, flattened (for reports and tests).
READ = _PRELUDE + r"""
local out = {}
for i = 2, #ARGV do
  local su, sp = get2(ARGV[i], 's')
  local hu, hp = get2(ARGV[i], 'h')
  out[#out + 1] = s(su); out[#out + 1] = s(sp); out[#out + 1] = s(hu); out[#out + 1] = s(hp)
end
return out
"""
