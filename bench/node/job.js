// The benchmark job, exactly as the Python side builds it: bench/run.py passes the payload and
// options (slackq.contract.job_options) as JSON with __ID__ where the event id goes.
'use strict';
const template = JSON.parse(process.env.BENCH_JOB_TEMPLATE);
const payloadText = JSON.stringify(template.payload);
const optionsText = JSON.stringify(template.options);

function payload(id) { return JSON.parse(payloadText.replaceAll('__ID__', id)); }
function options(id) { return JSON.parse(optionsText.replaceAll('__ID__', id)); }

module.exports = { payload, options };
