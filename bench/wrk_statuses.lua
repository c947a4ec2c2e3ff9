-- wrk script that counts responses by status code and prints "status CODE COUNT" lines
-- when the run ends, because wrk itself reports only the number of non-2xx responses.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %d %d\n", code, count))
    end
  end
end
