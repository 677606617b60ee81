-- wrk script: mixed-length traffic. Each request posts 1–16 texts drawn at random from
-- CORPUS (a corpus.jsonl of {"id", "text"} lines, scripts/make_job_corpus.py) to
-- POST /v1/embed, and the results print as one JSON line with texts/s beside requests/s.
--   CORPUS=runs/bench-jobs/corpus.jsonl wrk -t1 -c32 -d20s -s scripts/wrk_corpus.lua URL
local texts = {}
-- Globals, so that done() can read each thread's counts with thread:get.
sent_requests, sent_texts = 0, 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local path = os.getenv("CORPUS") or error("set CORPUS to a corpus.jsonl")
  for line in io.lines(path) do
    local text = line:match('"text": (".*")}$')
    if text then table.insert(texts, text) end
  end
  if #texts == 0 then error(path .. ": no {\"id\", \"text\"} lines") end
  math.randomseed(12345 + #texts)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local n = math.random(1, 16)
  local picked = {}
  for i = 1, n do picked[i] = texts[math.random(1, #texts)] end
  sent_requests = sent_requests + 1
  sent_texts = sent_texts + n
  return wrk.format(nil, nil, nil, '{"inputs": [' .. table.concat(picked, ", ") .. ']}')
end

function done(summary, latency, requests)
  local reqs, txts = 0, 0
  for _, t in ipairs(threads) do
    reqs = reqs + t:get("sent_requests")
    txts = txts + t:get("sent_texts")
  end
  local per_request = reqs > 0 and txts / reqs or 0
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  local rps = summary.requests / (summary.duration / 1e6)
  io.write(string.format(
    '{"requests": %d, "seconds": %.3f, "requests_per_s": %.2f, "texts_per_request": %.2f, "texts_per_s": %.1f, "errors": %d, "p50_ms": %.2f, "p95_ms": %.2f, "p99_ms": %.2f}\n',
    summary.requests, summary.duration / 1e6, rps, per_request, rps * per_request, errors,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3))
end
