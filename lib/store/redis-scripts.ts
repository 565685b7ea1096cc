// The Lua scripts of the Redis store. Every read-decide-write of greylisting
// is a read script, the pure decide() in the process, then a compare-and-set
// script that writes only if both rows are as they were read (their `v`
// fields unchanged); see redis.ts. All keys of a script are in KEYS and
// share the hash tag {g} (one slot); every parameter is in ARGV.
//
// Time: each script reads the server's TIME, unless ARGV carries the test
// clock, so that hosts with skewed clocks share one greylisting clock.
// Numbers written by the process (times, counts) travel as strings and are
// stored as given; the scripts compute only TTLs and count buckets, where a
// double's precision is plenty. A TIME is returned as an exact decimal
// string: Redis turns a Lua number into an integer on the way out.
//
// Row counts for greylist_max_entries: each row is counted in the bucket of
// its expiry hour (field `b` of the row), kept in the counters hash as
// `t:<hour>` (triplets) and `c:<hour>` (clients), with their sum in `t` / `c`
// and the oldest live hour in `t0` / `c0`. A bucket whose hour is over is
// subtracted ("drained"): its rows have expired by their TTL. So the count
// follows expiry within an hour, without walking the keyspace, and a row
// lost otherwise (evicted, deleted by hand) leaves the count when its hour
// ends: the count comes back to the real one by itself.

/** Seconds per count bucket. */
export const BUCKET_SECONDS = 3600
/** Buckets a read subtracts one by one; a longer gap is drained by the next write or upkeep step. */
export const READ_DRAIN_STEPS = 48

/** Shared by every script (and the rate-limit ones of redis-ratelimit.lua.ts, and the import of redis-import.ts): the clock, the format record and the count buckets. */
export const PRELUDE = `
local W = ${BUCKET_SECONDS}
-- The clock: ARGV's test clock, or the server's TIME. Returns seconds and the exact decimal text.
local function clock(override)
  if override ~= '' then return tonumber(override), override end
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000, t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
end
-- The format record: the first writer sets it; a host whose key format or privacy differs is refused.
local function meta(key, format, privacy, create)
  local m = redis.call('HMGET', key, 'format', 'privacy')
  if not m[1] then
    if create then redis.call('HSET', key, 'format', format, 'privacy', privacy) end
    return nil
  end
  if m[1] ~= format or m[2] ~= privacy then
    return redis.error_reply('POLICYD_META format ' .. tostring(m[1]) .. ' privacy ' .. tostring(m[2]) .. ' key ' .. key)
  end
  return nil
end
-- Subtract the buckets whose hour is over (see redis-scripts.ts).
local function drain(nkey, kind, cur)
  local b0 = tonumber(redis.call('HGET', nkey, kind .. '0'))
  if not b0 or b0 > cur then
    -- First use, or a clock that went back: count from the current hour on.
    if not b0 then redis.call('HSET', nkey, kind .. '0', cur) end
    return
  end
  if b0 == cur then return end
  local total = tonumber(redis.call('HGET', nkey, kind)) or 0
  if cur - b0 > ${READ_DRAIN_STEPS} then
    -- A long gap: recount from the buckets that exist (at most one per hour of greylist_max_age).
    local all = redis.call('HGETALL', nkey)
    total = 0
    local prefix = kind .. ':'
    for i = 1, #all, 2 do
      local f = all[i]
      if string.sub(f, 1, #prefix) == prefix then
        local b = tonumber(string.sub(f, #prefix + 1))
        if b and b < cur then redis.call('HDEL', nkey, f) else total = total + (tonumber(all[i + 1]) or 0) end
      end
    end
  else
    for b = b0, cur - 1 do
      local f = kind .. ':' .. b
      local n = tonumber(redis.call('HGET', nkey, f))
      if n then
        total = total - n
        redis.call('HDEL', nkey, f)
      end
    end
  end
  redis.call('HSET', nkey, kind, total, kind .. '0', cur)
end
-- The live count without writing: what drain() would leave.
local function live(nkey, kind, cur)
  local v = redis.call('HMGET', nkey, kind, kind .. '0')
  local total = tonumber(v[1]) or 0
  local b0 = tonumber(v[2])
  if b0 and b0 < cur and cur - b0 <= ${READ_DRAIN_STEPS} then
    for b = b0, cur - 1 do total = total - (tonumber(redis.call('HGET', nkey, kind .. ':' .. b)) or 0) end
  end
  if total < 0 then return 0 end
  return total
end
-- Take a row out of the count, if it is still counted (its bucket not drained).
local function uncount(nkey, kind, key)
  local b = tonumber(redis.call('HGET', key, 'b'))
  local b0 = tonumber(redis.call('HGET', nkey, kind .. '0'))
  if b and b0 and b >= b0 then
    redis.call('HINCRBY', nkey, kind .. ':' .. b, -1)
    redis.call('HINCRBY', nkey, kind, -1)
  end
end
-- Delete a row, or write it with its expiry (and the TTL that enforces it: one second past, so that a row
-- read at its expiry time is still there, as in SQLite, which purges rows only after it).
local function apply(nkey, kind, key, op, fields, expires, now)
  if op == 'del' then
    if redis.call('EXISTS', key) == 1 then
      uncount(nkey, kind, key)
      redis.call('DEL', key)
    end
  elseif op == 'put' then
    uncount(nkey, kind, key)
    local e = tonumber(expires)
    local b = math.max(math.floor(e / W), tonumber(redis.call('HGET', nkey, kind .. '0')))
    redis.call('HINCRBY', nkey, kind .. ':' .. b, 1)
    redis.call('HINCRBY', nkey, kind, 1)
    redis.call('HSET', key, 'e', expires, 'b', b, 'v', redis.call('HINCRBY', nkey, 'seq', 1), unpack(fields))
    redis.call('PEXPIRE', key, math.floor(math.max(e - now, 0) * 1000) + 1000)
  end
end
`

/**
 * gl_read: the rows, the triplet count and the whitelist entries of one request.
 * KEYS: meta, triplet, client, counters, whitelist.
 * ARGV: format, privacy, test clock ('' for TIME), then the whitelist keys.
 * Returns: [now, [f, l, p, n, v], [n, l, lc, v], triplet count, [entry values]].
 */
export const GL_READ = `${PRELUDE}
local err = meta(KEYS[1], ARGV[1], ARGV[2], false)
if err then return err end
local now, nowText = clock(ARGV[3])
local wl = {}
if #ARGV > 3 then wl = redis.call('HMGET', KEYS[5], unpack(ARGV, 4)) end
return {
  nowText,
  redis.call('HMGET', KEYS[2], 'f', 'l', 'p', 'n', 'v'),
  redis.call('HMGET', KEYS[3], 'n', 'l', 'lc', 'v'),
  tostring(live(KEYS[4], 't', math.floor(now / W))),
  wl,
}
`

/**
 * gl_cas: write what decide() chose, only if neither row changed since it was read.
 * KEYS: meta, triplet, client, counters.
 * ARGV: format, privacy, test clock, triplet v as read ('' absent), client v as read,
 *   triplet op ('' keep, 'del', 'put'), first, last, passed, count, expires,
 *   client op, count, last, last counted, expires.
 * Returns 1 when written, 0 when a row had changed (read again).
 */
export const GL_CAS = `${PRELUDE}
local err = meta(KEYS[1], ARGV[1], ARGV[2], true)
if err then return err end
if (redis.call('HGET', KEYS[2], 'v') or '') ~= ARGV[4] or (redis.call('HGET', KEYS[3], 'v') or '') ~= ARGV[5] then return 0 end
local now = clock(ARGV[3])
local cur = math.floor(now / W)
drain(KEYS[4], 't', cur)
drain(KEYS[4], 'c', cur)
apply(KEYS[4], 't', KEYS[2], ARGV[6], {'f', ARGV[7], 'l', ARGV[8], 'p', ARGV[9], 'n', ARGV[10]}, ARGV[11], now)
apply(KEYS[4], 'c', KEYS[3], ARGV[12], {'n', ARGV[13], 'l', ARGV[14], 'lc', ARGV[15]}, ARGV[16], now)
return 1
`

/**
 * gl_purge: delete rows of one kind whose expiry is before a time ('inf': all of them), keeping the count.
 * KEYS: counters, then the rows. ARGV: kind ('t' or 'c'), the time, test clock.
 * Returns how many went.
 */
export const GL_PURGE = `${PRELUDE}
local now = clock(ARGV[3])
local kind = ARGV[1]
drain(KEYS[1], 't', math.floor(now / W))
drain(KEYS[1], 'c', math.floor(now / W))
local all = ARGV[2] == 'inf'
local before = tonumber(ARGV[2])
local gone = 0
for i = 2, #KEYS do
  local e = tonumber(redis.call('HGET', KEYS[i], 'e'))
  if redis.call('EXISTS', KEYS[i]) == 1 and (all or (e and e < before)) then
    uncount(KEYS[1], kind, KEYS[i])
    redis.call('DEL', KEYS[i])
    gone = gone + 1
  end
end
return gone
`

/**
 * gl_upkeep: drain the count buckets whose hour is over; returns the live counts [triplets, clients].
 * KEYS: counters. ARGV: test clock.
 */
export const GL_UPKEEP = `${PRELUDE}
local now = clock(ARGV[1])
local cur = math.floor(now / W)
drain(KEYS[1], 't', cur)
drain(KEYS[1], 'c', cur)
return {live(KEYS[1], 't', cur), live(KEYS[1], 'c', cur)}
`

/**
 * wl_purge: delete whitelist entries whose end is at or before a time. Values are "END<TAB>SET-AT<TAB>NOTE",
 * END "inf" for none. KEYS: whitelist. ARGV: the time. Returns how many went.
 */
export const WL_PURGE = `
local all = redis.call('HGETALL', KEYS[1])
local before = tonumber(ARGV[1])
local gone = 0
for i = 1, #all, 2 do
  local e = tonumber(string.match(all[i + 1], '^([^\\t]*)\\t'))
  if e and e <= before then
    redis.call('HDEL', KEYS[1], all[i])
    gone = gone + 1
  end
end
return gone
`
