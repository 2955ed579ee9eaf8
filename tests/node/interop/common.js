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
// A redis+cluster://[user:password@]host:port[,host:port…] URL gives an ioredis Cluster instead,
// as a Node service on a Redis Cluster connects (the same prefix as slackq: `{bull}`).
function connection(redisUrl) {
  if (/^rediss?\+cluster:\/\//.test(redisUrl)) return clusterConnection(redisUrl);
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

function clusterConnection(redisUrl) {
  const { Cluster } = require('ioredis');
  const [scheme, rest] = redisUrl.split('://');
  const netloc = rest.split(/[/?]/)[0];
  const at = netloc.lastIndexOf('@');
  const [user, password] = at >= 0 ? netloc.slice(0, at).split(':') : ['', ''];
  const nodes = netloc.slice(at + 1).split(',').map((hostPort) => {
    const colon = hostPort.lastIndexOf(':');
    return { host: hostPort.slice(0, colon), port: Number(hostPort.slice(colon + 1)) };
  });
  const redisOptions = { maxRetriesPerRequest: null };
  if (password) redisOptions.password = decodeURIComponent(password);
  if (user) redisOptions.username = decodeURIComponent(user);
  if (scheme.startsWith('rediss')) redisOptions.tls = {};
  return new Cluster(nodes, { redisOptions });
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
