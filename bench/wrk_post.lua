-- POSTs distinct, pre-signed Stripe events from a file of "signature<TAB>body" lines, one file per wrk thread
-- (BENCH_REQUESTS_<n>, n counting threads from 1), cycling if the run outlasts the file.
local counter = 0
local threads = {}

function setup(thread)
  counter = counter + 1
  thread:set("file", os.getenv("BENCH_REQUESTS_" .. counter))
  table.insert(threads, thread)
end

function init(args)
  requests, i = {}, 0
  for line in io.lines(file) do
    local tab = line:find("\t", 1, true)
    local headers = {["Stripe-Signature"] = line:sub(1, tab - 1), ["Content-Type"] = "application/json"}
    requests[#requests + 1] = wrk.format("POST", "/webhooks/stripe", headers, line:sub(tab + 1))
  end
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function response(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
end
