// Open-loop HTTP load for bench/webhook.py, the same program for every server under test.
// node webhook_load.js PORT RATE REQUESTS_FILE -> {"latencies_ms": [...], "errors": N}
//
// REQUESTS_FILE holds complete HTTP/1.1 requests (signed by the Python side), each preceded by
// its length as a 4-byte big-endian integer. Request i is due at start + i / RATE; latency counts
// from that scheduled time, so a server that falls behind pays for the queue it builds. Node
// rather than Python so that the generator takes as little as possible of the 2-core machine.
'use strict';
const fs = require('fs');
const net = require('net');

const MAX_CONNECTIONS = 256;
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

function readRequests(path) {
  const buf = fs.readFileSync(path);
  const requests = [];
  for (let at = 0; at < buf.length;) {
    const size = buf.readUInt32BE(at);
    requests.push(buf.subarray(at + 4, at + 4 + size));
    at += 4 + size;
  }
  return requests;
}

// One keep-alive connection: one request in flight; replies parsed by Content-Length.
class Connection {
  constructor(port, onBroken) {
    this.socket = net.connect({ port, host: '127.0.0.1', noDelay: true });
    this.pending = null;
    this.dead = false;
    this.buffer = Buffer.alloc(0);
    this.socket.on('data', (chunk) => this.received(chunk));
    const fail = (error) => {
      if (this.pending) this.pending.reject(error || new Error('closed'));
      this.pending = null;
      if (!this.dead) onBroken(this);
      this.dead = true;
    };
    this.socket.on('error', fail);
    this.socket.on('close', () => fail(null));
  }

  send(raw) {
    if (this.dead) return Promise.reject(new Error('closed'));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.socket.write(raw);
    });
  }

  received(chunk) {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    const end = this.buffer.indexOf('\r\n\r\n');
    if (end < 0 || !this.pending) return;
    const head = this.buffer.subarray(0, end).toString('latin1');
    const match = /\r\ncontent-length:\s*(\d+)/i.exec(head);
    if (!match) {
      this.pending.reject(new Error('no content-length'));
      this.pending = null;
      this.socket.destroy();
      return;
    }
    const total = end + 4 + Number(match[1]);
    if (this.buffer.length < total) return;
    this.buffer = this.buffer.subarray(total);
    const status = Number(head.slice(9, 12));
    const pending = this.pending;
    this.pending = null;
    pending.resolve(status);
  }
}

async function main() {
  const [port, rate, file] = process.argv.slice(2);
  const requests = readRequests(file);
  const idle = [];
  const waiters = [];
  let opened = 0;
  const broken = () => { opened -= 1; };
  const acquire = () => {
    while (idle.length) {
      const conn = idle.pop();
      if (!conn.dead) return Promise.resolve(conn);
    }
    if (opened < MAX_CONNECTIONS) {
      opened += 1;
      return Promise.resolve(new Connection(Number(port), broken));
    }
    return new Promise((resolve) => waiters.push(resolve));
  };
  const release = (conn) => {
    const waiter = waiters.shift();
    if (waiter) waiter(conn); else idle.push(conn);
  };

  const latencies = [];
  let errors = 0;
  const one = async (raw, scheduled) => {
    const conn = await acquire();
    try {
      const status = await conn.send(raw);
      latencies.push(nowMs() - scheduled);
      if (status !== 200) errors += 1;
      release(conn);
    } catch (error) {
      errors += 1;
      conn.socket.destroy();
    }
  };

  const interval = 1000 / Number(rate);
  const start = nowMs() + 50;
  const inflight = [];
  let next = 0;
  await new Promise((resolve) => {
    const tick = () => {
      const now = nowMs();
      while (next < requests.length && start + next * interval <= now) {
        inflight.push(one(requests[next], start + next * interval));
        next += 1;
      }
      if (next >= requests.length) { resolve(); return; }
      // Timers, never a busy loop (it would take a core from the servers): requests go out in
      // ~1 ms ticks and whatever a tick is late counts in their latency, for every server alike.
      setTimeout(tick, Math.max(0, start + next * interval - nowMs()));
    };
    tick();
  });
  await Promise.all(inflight);
  for (const conn of idle) conn.socket.destroy();
  console.log(JSON.stringify({ latencies_ms: latencies, errors }));
}

main().catch((error) => { console.error(error); process.exit(1); });
