-- wrk script: POST a JSON body (BODY) and print the results as one JSON line.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BODY") or '{"inputs": "A man is playing a guitar on the stage tonight."}'
-- X_MODEL: the model of a several-model server the requests are for.
if os.getenv("X_MODEL") then wrk.headers["X-Model"] = os.getenv("X_MODEL") end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "requests_per_s": %.2f, "errors": %d, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6), errors,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
