'use strict';
// Shared by the interop scripts: one JSON config argument, JSON lines on stdout, a hard deadline.

function readConfig() {
  const raw = process.argv[2];
  if (!raw) {
    throw new Error('usage: node <script>.js \'{"redisUrl": ..., "queue": ..., "prefix": ...}\'');
  }
  return JSON.parse(raw);
}

// ioredis options from a redis:// URL (host, port, db, password); BullMQ adds what workers need.
function connection(redisUrl) {
  const url = new URL(redisUrl);
  const options = {
    host: url.hostname,
    port: Number(url.port || 6379),
    db: Number((url.pathname || '/0').slice(1) || 0),
  };
  if (url.password) options.password = decodeURIComponent(url.password);
  if (url.username) options.username = decodeURIComponent(url.username);
  return options;
}

function emit(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

// Every script ends on its own: after its work, or at the deadline (exit code 3).
function exitAtDeadline(ms) {
  const timer = setTimeout(() => {
    emit({ event: 'deadline', ms });
    process.exit(3);
  }, ms);
  timer.unref();
}

function onStopSignal(stop) {
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.once(signal, () => {
      stop().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    });
  }
}

module.exports = { readConfig, connection, emit, exitAtDeadline, onStopSignal };
