-- wrk script for benchmarks/bench_serving.py: POST one fixed body, print a parseable summary.
--
-- Environment (read once per wrk thread, so no per-request Lua work):
--   BENCH_BODY_FILE     file holding the request body (required)
--   BENCH_CONTENT_TYPE  Content-Type header (default application/json)
--
-- done() prints one line:  BENCH_RESULT {json}  with requests, duration, req/s, latency
-- percentiles in microseconds and every error counter wrk keeps (non-2xx/3xx = "status").

local path = os.getenv("BENCH_BODY_FILE")
if path == nil then
   error("BENCH_BODY_FILE is not set")
end
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"

function done(summary, latency, requests)
   local e = summary.errors
   local seconds = summary.duration / 1e6
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_s": %.6f, "rps": %.3f, "bytes": %d, ' ..
      '"mean_us": %.3f, "p50_us": %d, "p90_us": %d, "p99_us": %d, "p999_us": %d, ' ..
      '"max_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
      summary.requests, seconds, summary.requests / seconds, summary.bytes,
      latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout))
end
