// Load generator for bench/fanout.py: opens N watchers of one job and measures delivery.
//
//   node loadgen.js grpc HOST:PORT JOB_ID N   -- N WatchJobEvents streams (live only)
//   node loadgen.js sse  URL           N      -- N Server-Sent-Events connections
//
// Every event carries its publish time ("t=<epoch ms>") in its text. Prints one JSON line
// {"ready": N} once every watcher is connected (gRPC: got its snapshot; SSE: got the
// response headers), then reads commands on stdin: "report\n" prints the latencies and
// counts so far as JSON; "quit\n" exits. Only Node's standard library: gRPC framing and the
// protobuf wire format are parsed by hand, so the generator stays cheap next to the server.
'use strict';

const http = require('http');
const readline = require('readline');
const { performance } = require('perf_hooks');

const STREAMS_PER_CONNECTION = 100;

const [mode, target, ...rest] = process.argv.slice(2);
const now = () => performance.timeOrigin + performance.now();

const latencies = [];
const seen = [];  // per watcher: Set of sequences (gRPC) or counters (SSE)
const duplicates = [0];
const errors = [];
let ready = 0;
let total = 0;
let messages = 0;

function record(watcher, sequence, sentMs) {
  const set = seen[watcher];
  if (set.has(sequence)) { duplicates[0] += 1; return; }
  set.add(sequence);
  latencies.push(now() - sentMs);
}

// --- protobuf wire format, just enough of it --------------------------------------------
function varint(buf, pos) {
  let result = 0, shift = 0, byte;
  do {
    byte = buf[pos++];
    result += (byte & 0x7f) * 2 ** shift;
    shift += 7;
  } while (byte & 0x80);
  return [result, pos];
}

function* fields(buf, start = 0, end = buf.length) {
  let pos = start;
  while (pos < end) {
    let key; [key, pos] = varint(buf, pos);
    const field = Math.floor(key / 8), wire = key & 7;
    if (wire === 0) { let v; [v, pos] = varint(buf, pos); yield [field, v, 0, 0]; }
    else if (wire === 2) { let len; [len, pos] = varint(buf, pos); yield [field, null, pos, pos + len]; pos += len; }
    else if (wire === 1) { pos += 8; } else if (wire === 5) { pos += 4; }
    else throw new Error(`wire type ${wire}`);
  }
}

function sentTime(buf, start, end) {
  // JobEvent.agent_thinking (10) -> AgentThinking.text (2) = "t=<ms>"
  for (const [f, , s, e] of fields(buf, start, end)) {
    if (f === 10) {
      for (const [g, , ts, te] of fields(buf, s, e)) {
        if (g === 2) return Number(buf.toString('latin1', ts + 2, te));
      }
    }
  }
  return NaN;
}

function onGrpcMessage(watcher, buf) {
  messages += 1;
  for (const [field, , start, end] of fields(buf)) {
    if (field === 1) { ready += 1; if (ready === total) console.log(JSON.stringify({ ready })); }
    else if (field === 2) {
      for (const [f, , s, e] of fields(buf, start, end)) {
        if (f !== 1) continue;
        let sequence = 0;
        for (const [g, v] of fields(buf, s, e)) if (g === 2) { sequence = v; break; }
        record(watcher, sequence, sentTime(buf, s, e));
      }
    }
  }
}

function runGrpc(address, jobId, n) {
  // gRPC over Node's own HTTP/2 (nghttp2, in C++): a third of grpc-js's CPU per message,
  // so one core of load generator keeps up with thousands of streams.
  const http2 = require('http2');
  const jobIdBytes = Buffer.from(jobId);
  const request = Buffer.concat([Buffer.from([0x0a, jobIdBytes.length]), jobIdBytes]);
  const frame = Buffer.alloc(5 + request.length);
  frame.writeUInt32BE(request.length, 1);
  request.copy(frame, 5);
  const sessions = [];
  total = n;
  for (let i = 0; i < n; i++) {
    const c = Math.floor(i / STREAMS_PER_CONNECTION);
    if (!sessions[c]) {
      sessions[c] = http2.connect(`http://${address}`, { maxSessionMemory: 1024 });
      sessions[c].on('error', (e) => errors.push(String(e)));
    }
    seen.push(new Set());
    const stream = sessions[c].request({
      ':method': 'POST',
      ':path': '/cofounder.agent.v1.AgentControlService/WatchJobEvents',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    stream.end(frame);
    let pending = null;
    stream.on('data', (chunk) => {
      let buf = pending ? Buffer.concat([pending, chunk]) : chunk;
      while (buf.length >= 5) {
        const length = buf.readUInt32BE(1);
        if (buf.length < 5 + length) break;
        onGrpcMessage(i, buf.subarray(5, 5 + length));
        buf = buf.subarray(5 + length);
      }
      pending = buf.length ? buf : null;
    });
    stream.on('trailers', (trailers) => {
      if (trailers['grpc-status'] !== '0') errors.push(`${trailers['grpc-status']} ${trailers['grpc-message']}`);
    });
    stream.on('error', (e) => errors.push(String(e)));
  }
}

function runSse(url, n) {
  total = n;
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  for (let i = 0; i < n; i++) {
    seen.push(new Set());
    const req = http.get(url, { agent, headers: { accept: 'text/event-stream' } }, (res) => {
      ready += 1;
      if (ready === total) console.log(JSON.stringify({ ready }));
      let pending = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        messages += 1;
        pending += chunk;
        let cut;
        while ((cut = pending.indexOf('\n\n')) >= 0) {
          const frame = pending.slice(0, cut);
          pending = pending.slice(cut + 2);
          for (const line of frame.split('\n')) {
            if (!line.startsWith('data:')) continue;
            const event = JSON.parse(line.slice(5));
            record(i, event.seq, Number(event.text.slice(2)));
          }
        }
      });
      res.on('error', (e) => errors.push(String(e)));
    });
    req.on('error', (e) => errors.push(String(e)));
  }
}

function report() {
  const sorted = Float64Array.from(latencies).sort();
  const pick = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null);
  const received = seen.map((s) => s.size);
  return {
    ready, delivered: latencies.length, duplicates: duplicates[0], messages,
    p50_ms: pick(0.5), p99_ms: pick(0.99), max_ms: sorted.length ? sorted[sorted.length - 1] : null,
    min_received: Math.min(...received), max_received: Math.max(...received),
    errors: errors.slice(0, 5), error_count: errors.length,
    loadgen_cpu_s: process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6,
  };
}

if (mode === 'grpc') runGrpc(target, rest[0], Number(rest[1]));
else if (mode === 'sse') runSse(target, Number(rest[0]));
else { console.error('usage: loadgen.js grpc HOST:PORT JOB_ID N | sse URL N'); process.exit(2); }

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'report') console.log(JSON.stringify(report()));
  else if (line === 'quit') process.exit(0);
});
