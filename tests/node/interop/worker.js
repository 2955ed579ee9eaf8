'use strict';
// A Node BullMQ Worker on slackq's queue. Reports every job it is given (name, data, opts, ...)
// as a JSON line, then completes it or throws, and exits after `limit` jobs reached a final state.
//
// config: { redisUrl, queue, prefix, mode: "complete" | "fail" | "unrecoverable", failMessage?,
//          limit, deadlineMs }
const { Worker, UnrecoverableError } = require('bullmq');
const { readConfig, connection, emit, exitAtDeadline, onStopSignal } = require('./common');

const config = readConfig();
exitAtDeadline(config.deadlineMs || 30000);
let finals = 0;

const worker = new Worker(
  config.queue,
  async (job) => {
    emit({
      event: 'process',
      id: job.id,
      name: job.name,
      data: job.data,
      opts: job.opts,
      attemptsMade: job.attemptsMade,
      attemptsStarted: job.attemptsStarted,
      processedOn: job.processedOn,
    });
    const message = config.failMessage || 'failed by the Node worker';
    if (config.mode === 'fail') throw new Error(message);
    if (config.mode === 'unrecoverable') throw new UnrecoverableError(message);
    return { handledBy: 'node', id: job.id };
  },
  { connection: connection(config.redisUrl), prefix: config.prefix, concurrency: 1 },
);

async function finalState() {
  finals += 1;
  if (finals >= (config.limit || 1)) {
    await worker.close();
    emit({ event: 'exit', finals });
    process.exit(0);
  }
}

worker.on('completed', (job, returnvalue) => {
  emit({ event: 'completed', id: job.id, returnvalue, attemptsMade: job.attemptsMade });
  finalState();
});
worker.on('failed', (job, err) => {
  // No retry left, or UnrecoverableError: BullMQ set finishedOn when it moved the job to failed.
  const final = Boolean(job.finishedOn) || job.attemptsMade >= (job.opts.attempts || 1);
  emit({ event: 'failed', id: job.id, error: err.message, attemptsMade: job.attemptsMade, final });
  if (final) finalState();
});
worker.on('error', (err) => emit({ event: 'error', error: String(err && err.message) }));
worker.waitUntilReady().then(() => emit({ event: 'ready' }));
onStopSignal(() => worker.close());
