'use strict';
// A Node BullMQ QueueEvents on slackq's queue. Reads the event stream from its start (the test's
// Redis is fresh) and reports completed / failed / retries-exhausted / delayed as JSON lines;
// exits after `limit` final events (completed + failed: the stream has `failed` only once a job
// has no retry left; a retry shows as `delayed` or `waiting`).
//
// config: { redisUrl, queue, prefix, limit, deadlineMs }
const { QueueEvents } = require('bullmq');
const { readConfig, connection, emit, exitAtDeadline, onStopSignal } = require('./common');

const config = readConfig();
exitAtDeadline(config.deadlineMs || 30000);
const events = new QueueEvents(config.queue, {
  connection: connection(config.redisUrl),
  prefix: config.prefix,
  lastEventId: '0',
});
let finals = 0;

async function finalEvent() {
  finals += 1;
  if (finals >= (config.limit || 1)) {
    await events.close();
    emit({ event: 'exit', finals });
    process.exit(0);
  }
}

events.on('completed', ({ jobId, returnvalue }) => {
  emit({ event: 'completed', jobId, returnvalue });
  finalEvent();
});
events.on('failed', ({ jobId, failedReason }) => {
  emit({ event: 'failed', jobId, failedReason });
  finalEvent();
});
events.on('retries-exhausted', ({ jobId, attemptsMade }) => {
  emit({ event: 'retries-exhausted', jobId, attemptsMade: Number(attemptsMade) });
});
events.on('delayed', ({ jobId, delay }) => emit({ event: 'delayed', jobId, delay: Number(delay) }));
events.on('error', (err) => emit({ event: 'error', error: String(err && err.message) }));
events.waitUntilReady().then(() => emit({ event: 'ready' }));
onStopSignal(() => events.close());
