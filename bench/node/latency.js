// The latency probe, the same for every worker under test: add jobs at a fixed rate (open loop)
// and time each one until its `completed` event appears on the queue's events stream.
// node latency.js REDIS_URL QUEUE RATE SECONDS WARMUP_SECONDS TAG  -> {"latencies_ms": [...]}
'use strict';
const { Queue } = require('bullmq');
const IORedis = require('ioredis');
const { payload, options } = require('./job');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

async function main() {
  const [url, queueName, rate, seconds, warmup, tag] = process.argv.slice(2);
  const connection = new IORedis(url, { maxRetriesPerRequest: null });
  const reader = new IORedis(url, { maxRetriesPerRequest: null });
  const queue = new Queue(queueName, { connection, prefix: 'bull' });
  await queue.waitUntilReady();
  const sent = new Map();
  const latencies = [];
  let done = false;
  let lastId = '$';
  const key = `bull:${queueName}:events`;
  const listener = (async () => {
    while (!done) {
      const reply = await reader.xread('COUNT', 1000, 'BLOCK', 200, 'STREAMS', key, lastId);
      const now = nowMs();
      for (const [, entries] of reply || []) {
        for (const [id, fields] of entries) {
          lastId = id;
          const f = {};
          for (let i = 0; i < fields.length; i += 2) f[fields[i]] = fields[i + 1];
          if (f.event === 'completed' && sent.has(f.jobId)) {
            latencies.push(now - sent.get(f.jobId));
            sent.delete(f.jobId);
          }
        }
      }
    }
  })();
  await sleep(300);
  const total = Math.floor(Number(rate) * Number(seconds));
  const warm = Math.floor(Number(rate) * Number(warmup));
  const started = nowMs();
  const adds = [];
  for (let i = 0; i < total; i++) {
    const wait = started + (i * 1000) / Number(rate) - nowMs();
    if (wait > 0) await sleep(wait);
    const id = `Ev${tag}x${String(i).padStart(7, '0')}`;
    if (i >= warm) sent.set(id, nowMs()); // jobs of the warm-up are not timed
    adds.push(queue.add('bench_noop', payload(id), options(id)));
  }
  await Promise.all(adds);
  const deadline = nowMs() + 10000;
  while (sent.size && nowMs() < deadline) await sleep(10);
  done = true;
  await listener;
  console.log(JSON.stringify({ latencies_ms: latencies, lost: sent.size }));
  await queue.close();
  await connection.quit();
  reader.disconnect();
}
main().catch((err) => { console.error(err); process.exit(1); });
