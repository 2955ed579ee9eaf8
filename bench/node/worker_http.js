// A Node BullMQ worker posting one threaded chat.postMessage per job (bench/run.py realistic):
// node worker_http.js QUEUE CONCURRENCY REDIS_URL SLACK_API_URL
'use strict';
const { Worker } = require('bullmq');
const IORedis = require('ioredis');

const [queue, concurrency, url, slack] = process.argv.slice(2);
const connection = new IORedis(url, { maxRetriesPerRequest: null });

async function reply(job) {
  const event = job.data.event;
  const response = await fetch(`${slack}chat.postMessage`, {
    method: 'POST',
    headers: { authorization: 'Bearer xoxb-fake', 'content-type': 'application/json' },
    body: JSON.stringify({ channel: event.channel, thread_ts: event.thread_ts || event.ts,
      text: `<@${event.user}> got it!` }),
  });
  const answer = await response.json();
  if (!answer.ok) throw new Error(answer.error);
  return { channel: answer.channel, ts: answer.ts };
}

const worker = new Worker(queue, reply,
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
