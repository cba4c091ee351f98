-- wrk script for bench/bench_payments.py: POST each pre-signed body exactly once, then stop.
--
--   wrk -t T -c C -d 600s --timeout 60s -s bench/wrk_bodies.lua URL -- PATH BODIES_FILE T DELAY_MS
--
-- BODIES_FILE holds one JSON request body per line; thread k sends lines k, k+T, k+2T...
-- DELAY_MS paces each connection (0: as fast as the server answers). Once a thread has sent all
-- its bodies, its idle connections ask GET /healthz instead of resending (a resend is answered
-- from the idempotency record and would flatter the figures); the thread stops when every body
-- has been answered and prints "thread finished"; the caller interrupts wrk (SIGINT) once every
-- thread has. done() prints one JSON line: the duration runs from the first body sent to the last
-- answered (LuaJIT FFI clock_gettime), not wrk's own, which includes its fixed -d sleep.

local ffi = require("ffi")
ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock_buffer = ffi.new("bench_timespec")

local function now_us()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, clock_buffer)
    return tonumber(clock_buffer.tv_sec) * 1000000 + tonumber(clock_buffer.tv_nsec) / 1000
end

local next_id = 0
local threads = {}

function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
    table.insert(threads, thread)
end

function init(args)
    path, bodies_file, thread_count, delay_ms = args[1], args[2], tonumber(args[3]), tonumber(args[4])
    bodies, sent, answered, refused = {}, 0, 0, 0
    local line_number = 0
    for line in io.lines(bodies_file) do
        if line_number % thread_count == id then
            table.insert(bodies, line)
        end
        line_number = line_number + 1
    end
    post_headers = { ["Content-Type"] = "application/json" }
    health = wrk.format("GET", "/healthz")
    checked = id ~= 0
end

function delay()
    return delay_ms
end

function request()
    -- wrk calls request() once on thread 0 before the run, only to check the request parses:
    -- hand it a /healthz request, so that no body is used up without being sent.
    if not checked then
        checked = true
        return health
    end
    if sent >= #bodies then
        return health
    end
    if sent == 0 then
        first_sent_us = now_us()
    end
    sent = sent + 1
    return wrk.format("POST", path, post_headers, bodies[sent])
end

function response(status, headers, body)
    if status == 200 and string.sub(body, 1, 10) == '{"status":' then
        return -- a /healthz answer, not one of ours
    end
    answered = answered + 1
    if status ~= 200 then
        refused = refused + 1
    end
    if answered == #bodies then
        last_answer_us = now_us()
        -- wrk's main thread sleeps for the whole -d; the Python side interrupts it on this line.
        io.write("thread finished\n")
        io.flush()
        wrk.thread:stop()
    end
end

function done(summary, latency, requests)
    local bodies_sent, answers, refusals, first_us, last_us = 0, 0, 0, nil, nil
    for _, thread in ipairs(threads) do
        bodies_sent = bodies_sent + thread:get("sent")
        answers = answers + thread:get("answered")
        refusals = refusals + thread:get("refused")
        local first, last = thread:get("first_sent_us"), thread:get("last_answer_us")
        if first ~= nil and (first_us == nil or first < first_us) then first_us = first end
        if last ~= nil and (last_us == nil or last > last_us) then last_us = last end
    end
    -- From the first body sent to the last one answered, on every thread.
    local duration_us = (first_us ~= nil and last_us ~= nil) and (last_us - first_us) or summary.duration
    io.write(string.format(
        '{"duration_us": %d, "requests": %d, "bodies": %d, "answers": %d, "non_200": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
        duration_us, summary.requests, bodies_sent, answers, refusals,
        latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
