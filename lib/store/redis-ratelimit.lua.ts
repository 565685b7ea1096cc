// The rate-limit Lua scripts of the Redis store: lib/ratelimit/step.ts and
// lib/ratelimit/window.ts repeated in Lua, one script per step (hold,
// commit, release), each the whole read-decide-write of every identity of
// the request at once (Redis runs a script alone: no other client's step
// comes between the read and the write, so nothing is retried).
//
// Port rules: the same operations in the same order on the same doubles
// (Lua 5.1 numbers are IEEE doubles, as JavaScript's), so slotIndex(),
// slotStart() and every sum give the same bits; every number leaves as a
// string of 17 significant digits (Redis would cut a Lua number to an
// integer, and cjson.encode to 14 digits). When the two could differ,
// test/ratelimit-conformance.test.ts decides: it runs against both stores.
//
// Keys (P = redis_prefix; one hash tag {r} for every rate-limit key, so
// that all the identities of a request are in one slot):
//   P{r}:m        format, privacy (as P{g}:meta) and lc, the last commit time
//   P{r}:u:<id>   usage counters: field UNIT/WINDOW/SLOTS -> "first:c1,c2,…" (window.ts's text)
//   P{r}:h:<id>   live holds: ZSET instance -> expiry time (expired ones go by ZRANGEBYSCORE)
//   P{r}:a:<id>   held amounts: instance -> "rcpt msg bytes"
//   P{r}:x:<id>   hits: limit text -> "first last n expires"
//   P{r}:o        overrides: key -> END<TAB>SET-AT<TAB>LIMITS<TAB>NOTE (END "inf" for none)
// Each key's TTL is pushed to the latest expiry of what it holds (plus a
// second, as greylisting does): a counter's end of last slot + window, a
// hold's hold time, a hit's max(7 d, window). The overrides are one small
// hash read at every upkeep step; purgeAll drops the expired ones.

import { HIT_KEEP } from '../ratelimit/step'
import { PRELUDE } from './redis-scripts'

/** Keys per identity in a step or purge script, in this order: usage, holds, held amounts, hits. */
export const KEYS_PER_IDENTITY = 4

const RL_PRELUDE = `${PRELUDE}
local HUGE = math.huge
-- Numbers leave as text that parses back to the same double.
local function fmt(x)
  if x == HUGE then return 'Infinity' end
  if x == -HUGE then return '-Infinity' end
  return string.format('%.17g', x)
end
-- window.ts
local function slotStart(index, window, slots) return (index * window) / slots end
local function slotIndex(now, window, slots)
  local i = math.floor((now * slots) / window)
  if slotStart(i + 1, window, slots) <= now then return i + 1 end
  if slotStart(i, window, slots) > now then return i - 1 end
  return i
end
local function lastIndex(c) return c.first + #c.counts - 1 end
local function prune(c, cur, slots)
  local top = math.max(cur, lastIndex(c))
  local drop = math.max(0, top - slots + 1 - c.first)
  while drop < #c.counts and c.counts[drop + 1] == 0 do drop = drop + 1 end
  if drop >= #c.counts then return {first = 0, counts = {}} end
  if drop == 0 then return c end
  local counts = {}
  for i = drop + 1, #c.counts do counts[#counts + 1] = c.counts[i] end
  return {first = c.first + drop, counts = counts}
end
local function used(c, cur, slots)
  local sum = 0
  for _, n in ipairs(prune(c, cur, slots).counts) do sum = sum + n end
  return sum
end
local function add(c, cur, slots, amount)
  if amount == 0 then return c end
  local kept = prune(c, cur, slots)
  if #kept.counts == 0 then return {first = cur, counts = {amount}} end
  local counts = {}
  for i, n in ipairs(kept.counts) do counts[i] = n end
  while kept.first + #counts - 1 < cur do counts[#counts + 1] = 0 end
  counts[#counts] = counts[#counts] + amount
  return {first = kept.first, counts = counts}
end
local function timeToFree(c, cur, window, slots, need)
  local kept = prune(c, cur, slots)
  local freed = 0
  for i, n in ipairs(kept.counts) do
    freed = freed + n
    if freed >= need then return slotStart(kept.first + (i - 1) + slots, window, slots) end
  end
  return nil
end
local function expiresAt(c, window, slots) return slotStart(lastIndex(c) + 1 + slots, window, slots) end
local function formatCounter(c)
  local parts = {}
  for i, n in ipairs(c.counts) do parts[i] = fmt(n) end
  return fmt(c.first) .. ':' .. table.concat(parts, ',')
end
-- nil for a missing or malformed counter: both count nothing, as window.ts's empty one.
local function parseCounter(text)
  if not text then return nil end
  local first, rest = string.match(text, '^(%-?%d+):([%d,]+)$')
  if not first then return nil end
  local counts = {}
  for n in string.gmatch(rest, '%d+') do counts[#counts + 1] = tonumber(n) end
  return {first = tonumber(first), counts = counts}
end
-- Amounts partly come from the SMTP client: anything but a finite positive number is 0, fractions cut, at most 2^53 - 1.
local function clean1(x)
  if type(x) ~= 'number' or x ~= x or x <= 0 or x == HUGE then return 0 end
  return math.min(math.floor(x), 9007199254740991)
end
local function clean(a) return {rcpt = clean1(a.rcpt), msg = clean1(a.msg), bytes = clean1(a.bytes)} end
local function parseAmounts(text)
  local r, m, b = string.match(text or '', '^(%S+) (%S+) (%S+)$')
  return {rcpt = tonumber(r) or 0, msg = tonumber(m) or 0, bytes = tonumber(b) or 0}
end
-- Push a key's TTL out to an expiry time (never in): one second past it, as greylisting's rows.
local function keepUntil(key, expires, now)
  local ms = math.floor(math.max(expires - now, 0) * 1000) + 1000
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
-- Call a variadic command on a key with many arguments, a bounded number at a time (Lua's stack is limited).
local function chunked(cmd, key, list)
  for i = 1, #list, 500 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 499, #list)))
  end
end
-- Remove an identity's holds expired at now (expiry <= now): how many.
local function dropExpired(hk, ak, now)
  local gone = redis.call('ZRANGEBYSCORE', hk, '-inf', fmt(now))
  if #gone > 0 then
    chunked('ZREM', hk, gone)
    chunked('HDEL', ak, gone)
  end
  return #gone
end
`

/**
 * One step. KEYS: P{r}:m, then per identity (in step order) its
 * KEYS_PER_IDENTITY keys. ARGV: format, privacy, test clock ('' for TIME),
 * the step as JSON: {instance, slots, holdTime, maxHolds, holdsText, force,
 * whole, ids: [{limits: [{count, unit, window, text}], first, more}]}.
 * Returns [ok, now, hadHold, expired holds, added (rcpt, msg, bytes per
 * identity), exceeded ([] or [identity, limit (0: the bound on holds),
 * used, held, asked, retryAt, firstInWindow])], every number as text.
 */
function stepScript(op: 'hold' | 'commit' | 'release'): string {
  return `${RL_PRELUDE}
local OP = '${op}'
local n = (#KEYS - 1) / ${KEYS_PER_IDENTITY}
-- Redis keeps the writes of a script that fails: every refusal comes before the first write.
if n ~= math.floor(n) then return redis.error_reply('POLICYD_RL keys of a rate-limit step: ' .. #KEYS) end
local seen = {}
for i = 1, n do
  local k = KEYS[2 + (i - 1) * ${KEYS_PER_IDENTITY}]
  if seen[k] then return redis.error_reply('POLICYD_RL an identity named twice in one rate-limit step') end
  seen[k] = true
end
local p = cjson.decode(ARGV[4])
if #p.ids ~= n then return redis.error_reply('POLICYD_RL ' .. #p.ids .. ' identities for ' .. n .. ' key groups') end
local err = meta(KEYS[1], ARGV[1], ARGV[2], true)
if err then return err end
local now = clock(ARGV[3])
local S = p.slots
local function keysOf(i)
  local b = 2 + (i - 1) * ${KEYS_PER_IDENTITY}
  return KEYS[b], KEYS[b + 1], KEYS[b + 2], KEYS[b + 3]
end

-- The view of each identity (step.ts's IdentityView), its expired holds removed.
local views = {}
local expiredHolds = 0
for i = 1, n do
  local uk, hk, ak = keysOf(i)
  local v = {usage = {}, held = {rcpt = 0, msg = 0, bytes = 0}, holds = 0, mine = nil}
  v.expired = dropExpired(hk, ak, now)
  expiredHolds = expiredHolds + v.expired
  local live = redis.call('ZRANGE', hk, 0, -1, 'WITHSCORES')
  v.holds = #live / 2
  for j = 1, #live, 2 do
    local a = parseAmounts(redis.call('HGET', ak, live[j]))
    v.held.rcpt = v.held.rcpt + a.rcpt
    v.held.msg = v.held.msg + a.msg
    v.held.bytes = v.held.bytes + a.bytes
    if live[j] == p.instance then
      v.mine = a
      v.mine.expires = tonumber(live[j + 1])
    end
  end
  if OP ~= 'release' then
    for _, lim in ipairs(p.ids[i].limits) do
      local key = lim.unit .. '/' .. fmt(lim.window)
      if v.usage[key] == nil then v.usage[key] = parseCounter(redis.call('HGET', uk, key .. '/' .. fmt(S))) or false end
    end
  end
  views[i] = v
end

local added = {}
for i = 1, n * 3 do added[i] = '0' end
local function reply(ok, exc)
  return {ok and '1' or '0', fmt(now), (n > 0 and views[1].mine) and '1' or '0', fmt(expiredHolds), added, exc or {}}
end
local function putHold(i, h)
  local _, hk, ak = keysOf(i)
  redis.call('ZADD', hk, fmt(h.expires), p.instance)
  redis.call('HSET', ak, p.instance, fmt(h.rcpt) .. ' ' .. fmt(h.msg) .. ' ' .. fmt(h.bytes))
  keepUntil(hk, h.expires, now)
  keepUntil(ak, h.expires, now)
end
local function dropHold(i)
  local _, hk, ak = keysOf(i)
  redis.call('ZREM', hk, p.instance)
  redis.call('HDEL', ak, p.instance)
end

if OP == 'release' then
  for i = 1, n do
    local mine = views[i].mine
    if mine then
      if p.whole then dropHold(i) else
        local back = clean(p.ids[i].first)
        local left = {rcpt = math.max(0, mine.rcpt - back.rcpt), msg = math.max(0, mine.msg - back.msg), bytes = math.max(0, mine.bytes - back.bytes), expires = mine.expires}
        if left.rcpt == 0 and left.msg == 0 and left.bytes == 0 then dropHold(i) else putHold(i, left) end
      end
    end
  end
  return reply(true)
end

-- What each identity asks for, and whether it is tested as a new message.
local asks = {}
for i = 1, n do
  local mine = views[i].mine
  if OP == 'hold' then
    local a
    if mine then a = clean(p.ids[i].more) else a = clean(p.ids[i].first) end
    asks[i] = {amounts = a, isNew = mine == nil, tested = true}
  else
    -- A held message counts the recipients its hold has at most.
    local a = clean(p.ids[i].first)
    if mine then a.rcpt = math.min(a.rcpt, mine.rcpt) end
    asks[i] = {amounts = a, isNew = true, tested = mine == nil}
  end
end

local function retryAt(lim, counter, cur, u, h, a)
  if a > lim.count or (a == 0 and lim.count == 0) then return HUGE end
  local need = u + h + a - lim.count
  if a == 0 then need = need + 1 end
  local function free(k)
    if counter and k > 0 then return timeToFree(counter, cur, lim.window, S, k) end
    return nil
  end
  local at = free(need)
  if at then return at end
  local later = free(need - h)
  local base = now + p.holdTime
  if later and later > base then return later end
  return base
end

-- The first limit of the identity the request does not fit, then the bound on holds.
local function firstExceeded(i, asked, isNew)
  local v = views[i]
  for j, lim in ipairs(p.ids[i].limits) do
    local a = asked[lim.unit]
    if isNew or a ~= 0 then
      local counter = v.usage[lim.unit .. '/' .. fmt(lim.window)] or nil
      local cur = slotIndex(now, lim.window, S)
      local u = 0
      if counter then u = used(counter, cur, S) end
      local h = v.held[lim.unit]
      if not (u + h + a <= lim.count and (a > 0 or u + h < lim.count)) then
        return {limit = j, window = lim.window, text = lim.text, used = u, held = h, asked = a, retryAt = retryAt(lim, counter, cur, u, h, a)}
      end
    end
  end
  if OP == 'hold' and isNew and v.holds >= p.maxHolds then
    return {limit = 0, window = p.holdTime, text = p.holdsText, used = 0, held = v.holds, asked = 1, retryAt = now + p.holdTime}
  end
  return nil
end

local exceeded, failed = nil, 0
for i = 1, n do
  if asks[i].tested then
    exceeded = firstExceeded(i, asks[i].amounts, asks[i].isNew)
    if exceeded then
      failed = i
      break
    end
  end
end
if OP == 'commit' then redis.call('HSET', KEYS[1], 'lc', fmt(now)) end
local exc = nil
if exceeded then
  local _, _, _, xk = keysOf(failed)
  local before = redis.call('HGET', xk, exceeded.text)
  local bFirst, bLast, bN = string.match(before or '', '^(%S+) (%S+) (%S+)')
  bFirst, bLast, bN = tonumber(bFirst), tonumber(bLast), tonumber(bN)
  local firstInWindow = bLast == nil or bLast < now - exceeded.window
  local expires = now + math.max(${HIT_KEEP}, exceeded.window)
  redis.call('HSET', xk, exceeded.text, fmt(bFirst or now) .. ' ' .. fmt(now) .. ' ' .. fmt((bN or 0) + 1) .. ' ' .. fmt(expires))
  keepUntil(xk, expires, now)
  exc = {fmt(failed), fmt(exceeded.limit), fmt(exceeded.used), fmt(exceeded.held), fmt(exceeded.asked), fmt(exceeded.retryAt), firstInWindow and '1' or '0'}
  if not p.force then return reply(false, exc) end
end

for i = 1, n do
  local v = views[i]
  local a = asks[i].amounts
  if OP == 'hold' then
    local base = v.mine or {rcpt = 0, msg = 0, bytes = 0}
    putHold(i, {rcpt = base.rcpt + a.rcpt, msg = base.msg + a.msg, bytes = base.bytes + a.bytes, expires = now + p.holdTime})
    added[(i - 1) * 3 + 1], added[(i - 1) * 3 + 2], added[(i - 1) * 3 + 3] = fmt(a.rcpt), fmt(a.msg), fmt(a.bytes)
  else
    -- Counted once per unit and window, in each limit's counter.
    local uk = keysOf(i)
    local done = {}
    for _, lim in ipairs(p.ids[i].limits) do
      local key = lim.unit .. '/' .. fmt(lim.window)
      if a[lim.unit] ~= 0 and not done[key] then
        done[key] = true
        local c = add(v.usage[key] or {first = 0, counts = {}}, slotIndex(now, lim.window, S), S, a[lim.unit])
        redis.call('HSET', uk, key .. '/' .. fmt(S), formatCounter(c))
        keepUntil(uk, expiresAt(c, lim.window, S), now)
      end
    end
    if v.mine then dropHold(i) end
  end
end
return reply(true, exc)
`
}

export const RL_HOLD = stepScript('hold')
export const RL_COMMIT = stepScript('commit')
export const RL_RELEASE = stepScript('release')

/**
 * rl_purge: the expired rows of some identities, as the SQLite purge
 * (a counter or a hit after its expiry, a hold at it).
 * KEYS: per identity its KEYS_PER_IDENTITY keys. ARGV: the time.
 * Returns how many rows (counters, holds, hits) went.
 */
export const RL_PURGE = `${RL_PRELUDE}
local now = tonumber(ARGV[1])
local gone = 0
for b = 1, #KEYS, ${KEYS_PER_IDENTITY} do
  local uk, hk, ak, xk = KEYS[b], KEYS[b + 1], KEYS[b + 2], KEYS[b + 3]
  local usage = redis.call('HGETALL', uk)
  for i = 1, #usage, 2 do
    local unit, window, slots = string.match(usage[i], '^(%a+)/([^/]+)/([^/]+)$')
    local c = parseCounter(usage[i + 1])
    if not c or not window or expiresAt(c, tonumber(window), tonumber(slots)) < now then
      redis.call('HDEL', uk, usage[i])
      gone = gone + 1
    end
  end
  gone = gone + dropExpired(hk, ak, now)
  local hits = redis.call('HGETALL', xk)
  for i = 1, #hits, 2 do
    local e = tonumber(string.match(hits[i + 1], '(%S+)$'))
    if not e or e < now then
      redis.call('HDEL', xk, hits[i])
      gone = gone + 1
    end
  end
end
return gone
`
