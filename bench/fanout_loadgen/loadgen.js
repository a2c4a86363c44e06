// Load generator for bench/fanout.py: opens N watchers of one job and measures delivery.
//
//   node loadgen.js grpc HOST:PORT JOB_ID N EVENTS [PER_CONNECTION]
//                                                   -- N WatchJobEvents streams (live only),
//                                                      PER_CONNECTION (100) per HTTP/2 connection
//   node loadgen.js sse  URL           N EVENTS     -- N Server-Sent-Events connections
//
// Every event carries its publish time ("t=<epoch ms>") in its text. Prints one JSON line
// {"ready": N} once every watcher is connected (gRPC: got its snapshot; SSE: got the
// response headers), then reads commands on stdin: "report\n" prints the latencies and
// counts so far as JSON, "count\n" only how many events arrived; "quit\n" exits. Only
// Node's standard library: gRPC framing and the protobuf wire format are parsed by hand,
// so the generator stays cheap next to the server.
// EVENTS (how many will be published) sizes every buffer up front: the hot path allocates
// next to nothing, so the generator's own garbage collection does not show up as latency.
'use strict';

const http = require('http');
const readline = require('readline');
const { performance } = require('perf_hooks');


const [mode, target, ...rest] = process.argv.slice(2);
const now = () => performance.timeOrigin + performance.now();

let latencies = new Float64Array(0);
let sentTimes = new Float64Array(0);  // publish time of each entry of latencies
let delivered = 0;
let seen = [];  // per watcher: one byte per sequence
let unexpected = 0;  // sequences beyond what was announced
const duplicates = [0];
const errors = [];
let ready = 0;
let total = 0;
let messages = 0;
let capacity = 0;

function allocate(n, events) {
  capacity = events + 64;  // a fresh job's own events (status changes) come first
  latencies = new Float64Array(n * capacity);
  sentTimes = new Float64Array(n * capacity);
  seen = Array.from({ length: n }, () => new Uint8Array(capacity));
}

function record(watcher, sequence, sentMs) {
  const marks = seen[watcher];
  if (sequence < 0 || sequence >= capacity) { unexpected += 1; return; }
  if (marks[sequence]) { duplicates[0] += 1; return; }
  marks[sequence] = 1;
  latencies[delivered] = now() - sentMs;
  sentTimes[delivered] = sentMs;
  delivered += 1;
}

// p99 per second of publishing: a backlog that grows shows as a rising series.
function p99BySecond() {
  if (!delivered) return [];
  let first = Infinity;
  for (let i = 0; i < delivered; i++) if (sentTimes[i] < first) first = sentTimes[i];
  const buckets = [];
  for (let i = 0; i < delivered; i++) {
    const b = Math.floor((sentTimes[i] - first) / 1000);
    (buckets[b] = buckets[b] || []).push(latencies[i]);
  }
  return Array.from(buckets, (xs) => {
    const sorted = Float64Array.from(xs || []).sort();
    return sorted.length ? Math.round(sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))]) : null;
  });
}

// --- protobuf wire format, just enough of it (a shared cursor: no allocation) -------------
let P = 0;

function varint(buf) {
  let result = 0, shift = 0, byte;
  do {
    byte = buf[P++];
    result += (byte & 0x7f) * 2 ** shift;
    shift += 7;
  } while (byte & 0x80);
  return result;
}

function skip(buf, wire) {
  if (wire === 0) varint(buf);
  else if (wire === 2) { const len = varint(buf); P += len; }
  else if (wire === 1) P += 8;
  else if (wire === 5) P += 4;
  else throw new Error(`wire type ${wire}`);
}

// JobEvent: sequence (2); agent_thinking (10) -> AgentThinking.text (2) = "t=<ms>"
function onJobEvent(watcher, buf, end) {
  let sequence = -1, sent = NaN;
  while (P < end) {
    const key = varint(buf), field = Math.floor(key / 8), wire = key & 7;
    if (field === 2 && wire === 0) sequence = varint(buf);
    else if (field === 10 && wire === 2) {
      const length = varint(buf), stop = P + length;
      while (P < stop) {
        const k = varint(buf);
        if (Math.floor(k / 8) === 2 && (k & 7) === 2) {
          const len = varint(buf);
          sent = Number(buf.toString('latin1', P + 2, P + len));
          P += len;
        } else skip(buf, k & 7);
      }
    } else skip(buf, wire);
  }
  if (!Number.isNaN(sent)) record(watcher, sequence, sent);
}

// WatchJobEventsResponse: snapshot (1) | events (2) -> EventBatch.events (1, repeated)
function onGrpcMessage(watcher, buf) {
  messages += 1;
  P = 0;
  while (P < buf.length) {
    const key = varint(buf), field = Math.floor(key / 8), wire = key & 7;
    if (wire !== 2) { skip(buf, wire); continue; }
    const length = varint(buf), end = P + length;
    if (field === 1) { ready += 1; if (ready === total) console.log(JSON.stringify({ ready })); }
    else if (field === 2) {
      while (P < end) {
        const k = varint(buf);
        if (Math.floor(k / 8) === 1 && (k & 7) === 2) {
          const length = varint(buf), stop = P + length;
          onJobEvent(watcher, buf, stop);
          P = stop;
        } else skip(buf, k & 7);
      }
    }
    P = end;
  }
}

function runGrpc(address, jobId, n, perConnection) {
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
    const c = Math.floor(i / perConnection);
    if (!sessions[c]) {
      sessions[c] = http2.connect(`http://${address}`, { maxSessionMemory: 1024 });
      sessions[c].on('error', (e) => errors.push(String(e)));
    }
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
  const sorted = latencies.slice(0, delivered).sort();
  const pick = (q) => (delivered ? sorted[Math.min(delivered - 1, Math.floor(q * delivered))] : null);
  let minReceived = Infinity, maxReceived = 0;
  for (const marks of seen) {
    let count = 0;
    for (let i = 0; i < marks.length; i++) count += marks[i];
    minReceived = Math.min(minReceived, count);
    maxReceived = Math.max(maxReceived, count);
  }
  return {
    ready, delivered, duplicates: duplicates[0], unexpected, messages,
    p50_ms: pick(0.5), p99_ms: pick(0.99), max_ms: delivered ? sorted[delivered - 1] : null,
    min_received: minReceived, max_received: maxReceived,
    errors: errors.slice(0, 5), error_count: errors.length,
    loadgen_cpu_s: process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6,
    p99_ms_by_second: p99BySecond(),
  };
}

if (mode === 'grpc') { allocate(Number(rest[1]), Number(rest[2])); runGrpc(target, rest[0], Number(rest[1]), Number(rest[3] || 100)); }
else if (mode === 'sse') { allocate(Number(rest[0]), Number(rest[1])); runSse(target, Number(rest[0])); }
else { console.error('usage: loadgen.js grpc HOST:PORT JOB_ID N EVENTS | sse URL N EVENTS'); process.exit(2); }

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'report') console.log(JSON.stringify(report()));
  else if (line === 'count') console.log(JSON.stringify({ delivered }));
  else if (line === 'quit') process.exit(0);
});
