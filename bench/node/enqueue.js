// Enqueue COUNT jobs and print {"seconds": ...}: node enqueue.js MODE COUNT QUEUE REDIS_URL TAG
// MODE: sequential (await each add), concurrent (100 adds in flight), bulk (addBulk of 100).
'use strict';
const { Queue } = require('bullmq');
const IORedis = require('ioredis');
const { payload, options } = require('./job');

async function main() {
  const [mode, count, queueName, url, tag] = process.argv.slice(2);
  const n = Number(count);
  const connection = new IORedis(url, { maxRetriesPerRequest: null });
  const queue = new Queue(queueName, { connection, prefix: 'bull' });
  await queue.waitUntilReady();
  const jobs = [];
  for (let i = 0; i < n; i++) {
    const id = `Ev${tag}x${String(i).padStart(7, '0')}`;
    jobs.push({ name: 'bench_noop', data: payload(id), opts: options(id) });
  }
  const started = process.hrtime.bigint();
  if (mode === 'sequential') {
    for (const job of jobs) await queue.add(job.name, job.data, job.opts);
  } else if (mode === 'concurrent') {
    for (let i = 0; i < n; i += 100) {
      await Promise.all(jobs.slice(i, i + 100).map((j) => queue.add(j.name, j.data, j.opts)));
    }
  } else {
    for (let i = 0; i < n; i += 100) await queue.addBulk(jobs.slice(i, i + 100));
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  console.log(JSON.stringify({ seconds }));
  await queue.close();
  await connection.quit();
}
main().catch((err) => { console.error(err); process.exit(1); });
