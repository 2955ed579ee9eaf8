// CPU per Redis round trip for ioredis (BullMQ's client): node roundtrip.js REDIS_URL COUNT CONCURRENCY
// Runs COUNT `EVALSHA` calls of a one-key script (CONCURRENCY in flight) and prints
// {"cpu_us_per_call": ..., "calls_per_second": ...} measured with process.cpuUsage().
'use strict';
const IORedis = require('ioredis');

async function main() {
  const [url, count, concurrency] = process.argv.slice(2);
  const n = Number(count);
  const c = Number(concurrency);
  const client = new IORedis(url, { maxRetriesPerRequest: null });
  await client.set('rt:key', 'x'.repeat(100));
  const sha = await client.script('LOAD', "return redis.call('GET', KEYS[1])");
  const one = async (m) => { for (let i = 0; i < m; i++) await client.evalsha(sha, 1, 'rt:key'); };
  await one(500); // warm-up
  const cpu = process.cpuUsage();
  const started = process.hrtime.bigint();
  await Promise.all(Array.from({ length: c }, () => one(Math.floor(n / c))));
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const used = process.cpuUsage(cpu);
  console.log(JSON.stringify({ cpu_us_per_call: (used.user + used.system) / n,
                               calls_per_second: n / seconds }));
  client.disconnect();
}

main().catch((error) => { console.error(error); process.exit(1); });
