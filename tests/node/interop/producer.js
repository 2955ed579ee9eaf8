'use strict';
// A Node BullMQ Queue adding jobs exactly as given: [{ name, data, opts }]. Reports each job's
// outcome ("added" with the stored id, or "rejected" with BullMQ's error) and exits.
//
// config: { redisUrl, queue, prefix, jobs: [{ name, data, opts }], deadlineMs }
const { Queue } = require('bullmq');
const { readConfig, connection, emit, exitAtDeadline } = require('./common');

async function main() {
  const config = readConfig();
  exitAtDeadline(config.deadlineMs || 30000);
  const client = connection(config.redisUrl);
  const queue = new Queue(config.queue, {
    connection: client,
    prefix: config.prefix,
  });
  for (const { name, data, opts } of config.jobs) {
    try {
      const job = await queue.add(name, data, opts);
      emit({ event: 'added', name, jobId: opts && opts.jobId, id: job.id });
    } catch (err) {
      emit({ event: 'rejected', name, jobId: opts && opts.jobId, error: err.message });
    }
  }
  await queue.close();
  // A client instance (an ioredis Cluster) is the caller's to close: BullMQ leaves it open.
  if (typeof client.quit === 'function') await client.quit();
  emit({ event: 'exit' });
}

main().catch((err) => {
  emit({ event: 'crash', error: String(err && err.stack) });
  process.exit(1);
});
