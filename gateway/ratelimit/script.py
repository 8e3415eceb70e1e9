"""The one Lua script that decides every limit of a request atomically (GCRA + daily quotas).

KEYS[i] is one limit's key: a GCRA "theoretical arrival time" key for a rate limit, or the base of a
daily counter (the script appends `:<UTC day number>`, so counters reset at 00:00 UTC; the day
comes from the same clock as the decision, which is what makes an injected test clock work —
this assumes a single Redis node, not Cluster).

ARGV[1] = now in microseconds, or "" to use the Redis server's TIME (one clock for every gateway
instance); ARGV[2] = "1" to consume, "0" to only report; ARGV[3] = how many of the KEYS, at
their end, are an access token's revocation keys (0, or jti, user not_before[, sid]: see
`gateway.auth`), ARGV[4] = the token's `iat`; then three values per limit key:
  rate:  "r", emission interval (us), burst
  quota: "q", daily limit (0 = uncapped, only counted), "0"

Returns {-1} for a revoked token, charging nothing (the revocation is judged in the same call,
so a rate-limited request costs one round trip, not two, and a revoked token never spends its
principal's budget); else {allowed, now_ms, then per limit key: ok, remaining, reset_ms,
retry_ms, used}. Nothing is consumed unless every limit admits the request, so a denied request
costs no other budget.
"""

from __future__ import annotations

import hashlib

__all__ = ["SCRIPT", "SCRIPT_SHA"]

SCRIPT = b"""
local revocation = tonumber(ARGV[3])
local nkeys = #KEYS - revocation
if revocation > 0 then
  local v = redis.call('MGET', unpack(KEYS, nkeys + 1, #KEYS))
  if v[1] or (revocation > 2 and v[3]) then return {-1} end
  if v[2] then
    -- whole unix seconds only (as gateway.auth reads them): unreadable means the token cannot
    -- be proven good
    if not string.match(v[2], '^%d+$') or #v[2] > 15 then return {-1} end
    if tonumber(ARGV[4]) < tonumber(v[2]) then return {-1} end
  end
end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local consume = ARGV[2] == '1'
local day = math.floor(now / 86400000000)
local midnight = (day + 1) * 86400000000
local out = {0, math.floor(now / 1000)}
local allowed = true
local writes = {}
for i = 1, nkeys do
  local base = 4 + (i - 1) * 3
  local kind = ARGV[base + 1]
  local a = tonumber(ARGV[base + 2])
  local b = tonumber(ARGV[base + 3])
  local n = #out
  if kind == 'r' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or 0)
    if tat < now then tat = now end
    local tau = a * b
    if not consume then
      local remaining = math.min(b, math.floor((now + tau - tat) / a))
      out[n+1] = remaining > 0 and 1 or 0
      out[n+2] = remaining
      out[n+3] = math.ceil((tat - now) / 1000)
      out[n+4] = 0
      out[n+5] = 0
    else
      local new_tat = tat + a
      local allow_at = new_tat - tau
      if now < allow_at then
        allowed = false
        out[n+1] = 0
        out[n+2] = 0
        out[n+3] = math.ceil((tat - now) / 1000)
        out[n+4] = math.ceil((allow_at - now) / 1000)
        out[n+5] = 0
      else
        out[n+1] = 1
        out[n+2] = math.floor((now - allow_at) / a)
        out[n+3] = math.ceil((new_tat - now) / 1000)
        out[n+4] = 0
        out[n+5] = 0
        writes[#writes+1] = {'r', KEYS[i], new_tat}
      end
    end
  else
    local key = KEYS[i] .. ':' .. string.format('%d', day)
    local used = tonumber(redis.call('GET', key) or 0)
    local reset = math.ceil((midnight - now) / 1000)
    local full = a > 0 and used >= a
    if consume and full then allowed = false end
    out[n+1] = full and 0 or 1
    out[n+2] = a > 0 and math.max(0, a - used - (consume and not full and 1 or 0)) or -1
    out[n+3] = reset
    out[n+4] = full and reset or 0
    out[n+5] = used
    if consume and not full then writes[#writes+1] = {'q', key, reset} end
  end
end
if consume and allowed then
  for _, w in ipairs(writes) do
    if w[1] == 'r' then
      redis.call('SET', w[2], string.format('%.0f', w[3]),
                 'PX', string.format('%d', math.ceil((w[3] - now) / 1000) + 1000))
    else
      -- Relative expiry (not EXPIREAT) so any clock works; an hour of grace past midnight.
      if redis.call('INCR', w[2]) == 1 then
        redis.call('PEXPIRE', w[2], string.format('%d', w[3] + 3600000))
      end
    end
  end
end
out[1] = allowed and 1 or 0
return out
"""

SCRIPT_SHA = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest().encode()
