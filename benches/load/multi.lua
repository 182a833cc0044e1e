-- Multi-tenant traffic for wrk: every request carries the next credential of a list,
-- so consecutive requests come from different tenants and keys.
--
--   wrk -t2 -c64 -d10s -s multi.lua URL -- FILE MODE ORDER THREADS [LABEL [OFFSET]]
--
-- FILE    one credential per line, or "-" for none
-- MODE    apikey (X-API-Key: …), bearer (Authorization: Bearer …) or none
-- ORDER   seq: thread t sends credentials t, t+T, t+2T, … (wrapping), so with enough
--         of them no credential is sent twice (the uncached-JWT run relies on it);
--         random: uniformly drawn
-- THREADS the wrk -t value (for the stride)
-- OFFSET  seq only: start at this index (to continue where an earlier run stopped)
--
-- done() prints one line `RESULT {json}`: requests, rps, latency percentiles (ms),
-- socket errors, non-2xx/3xx count, and how many credentials were sent vs distinct.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local creds = {}
local n = 0
local mode = "none"
local order = "seq"
local stride = 1
local label = ""
local offset = 0
sent = 0

function init(args)
   local file = args[1] or "-"
   mode = args[2] or "none"
   order = args[3] or "seq"
   stride = tonumber(args[4] or "1") or 1
   label = args[5] or ""
   offset = tonumber(args[6] or "0") or 0
   if file ~= "-" then
      for line in io.lines(file) do
         if #line > 0 then
            n = n + 1
            creds[n] = line
         end
      end
   end
   math.randomseed(os.time() + 7919 * (tid or 0))
end

function request()
   local headers = {}
   if n > 0 and mode ~= "none" then
      local c
      if order == "random" then
         c = creds[math.random(n)]
      else
         c = creds[(offset + (tid or 0) + sent * stride) % n + 1]
      end
      if mode == "apikey" then
         headers["X-API-Key"] = c
      else
         headers["Authorization"] = "Bearer " .. c
      end
   end
   sent = sent + 1
   return wrk.format(nil, nil, headers)
end

function done(summary, latency, requests)
   local generated = 0
   for _, t in ipairs(threads) do
      generated = generated + (t:get("sent") or 0)
   end
   local secs = summary.duration / 1e6
   local e = summary.errors
   io.write(string.format(
      'RESULT {"label":"%s","requests":%d,"duration_s":%.3f,"rps":%.1f,' ..
      '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_timeout":%d,"non_2xx":%d,' ..
      '"generated":%d}\n',
      label, summary.requests, secs, summary.requests / secs,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      e.connect, e.read, e.write, e.timeout, e.status, generated))
end
