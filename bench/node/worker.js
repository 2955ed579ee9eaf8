// A Node BullMQ worker with a no-op processor: node worker.js QUEUE CONCURRENCY REDIS_URL
'use strict';
const { Worker } = require('bullmq');
const IORedis = require('ioredis');

const [queue, concurrency, url] = process.argv.slice(2);
const connection = new IORedis(url, { maxRetriesPerRequest: null });
const worker = new Worker(queue, async () => undefined,
  { connection, concurrency: Number(concurrency), prefix: 'bull' });
worker.on('error', (err) => console.error('worker error', err.message));
worker.waitUntilReady().then(() => console.log('worker_started'));
async function stop() {
  await worker.close();
  await connection.quit();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
