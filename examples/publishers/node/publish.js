// Publishes one send job to wxdispatch and waits for its outcome (amqplib).
//
// What every publisher must do (docs/asyncapi.yaml): persistent delivery, messageId, timestamp,
// contentType, userId, and a publisher confirm before the job counts as handed over. The
// outcome is read from a queue of our own bound to the outcomes exchange, by the job's id (the
// outcome's correlationId), and its required fields and types are checked.
//
// JSON.parse rounds a 19-digit msgid (it exceeds 2^53): match receipts by `msgid_str`.
//
// Exit status: 0 when the outcome arrived, is well formed and has the expected status; 1
// otherwise. Settings (environment): AMQP_URL, JOBS_QUEUE, OUTCOMES_EXCHANGE, APPID, TOUSER,
// TEMPLATE_ID, EXPECT_STATUS (default sent), TIMEOUT_SECS (default 30).
'use strict';

const amqp = require('amqplib');
const crypto = require('crypto');

const env = (k, d) => process.env[k] || d;
const url = env('AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/%2f');
const jobsQueue = env('JOBS_QUEUE', 'wxdispatch.jobs');
const exchange = env('OUTCOMES_EXCHANGE', 'wxdispatch.outcomes');
const timeoutMs = Number(env('TIMEOUT_SECS', '30')) * 1000;
const expect = env('EXPECT_STATUS', 'sent');

// The fields every send outcome has, with their JSON types (docs/schema/outcome.schema.json).
const REQUIRED = {
  kind: ['string'], id: ['string', 'null'], appid: ['string', 'null'],
  touser: ['string', 'null'], status: ['string'], errcode: ['number', 'null'],
  errmsg: ['string', 'null'], msgid: ['number', 'null'], msgid_str: ['string', 'null'],
  attempts: ['number'], reason: ['string', 'null'], finished_at: ['string'],
};
const SEND_STATUSES = ['sent', 'rejected', 'failed', 'invalid', 'expired'];

function problems(o, jobId) {
  const out = [];
  for (const [k, types] of Object.entries(REQUIRED)) {
    if (!(k in o)) { out.push(`no ${k}`); continue; }
    const t = o[k] === null ? 'null' : typeof o[k];
    if (!types.includes(t)) out.push(`${k} is ${t}, not ${types.join(' or ')}`);
  }
  if (o.kind !== 'send') out.push(`kind ${o.kind}`);
  if (o.id !== jobId) out.push(`id ${o.id}`);
  if (!SEND_STATUSES.includes(o.status)) out.push(`status ${o.status}`);
  if (o.msgid_str !== null && !/^-?[0-9]+$/.test(o.msgid_str)) out.push('msgid_str is not digits');
  if ((o.msgid === null) !== (o.msgid_str === null)) out.push('msgid and msgid_str disagree');
  if (!Number.isInteger(o.attempts) || o.attempts < 0) out.push('attempts');
  if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/.test(o.finished_at)) out.push('finished_at');
  return out;
}

async function main() {
  const jobId = `node-${crypto.randomBytes(8).toString('hex')}`;
  const job = {
    id: jobId,
    touser: env('TOUSER', 'o-publisher-node'),
    template_id: env('TEMPLATE_ID', 'ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY'),
    data: { User: { value: 'Node', color: '#173177' } },
  };
  if (process.env.APPID) job.appid = process.env.APPID;

  const conn = await amqp.connect(url);
  const timer = setTimeout(() => {
    console.error(`node: no outcome for ${jobId} within ${timeoutMs / 1000}s`);
    process.exit(1);
  }, timeoutMs);
  const ch = await conn.createConfirmChannel();
  // Our own queue, bound before publishing so the outcome cannot be missed; the exchange is
  // the worker's (a passive check says clearly when it is missing).
  await ch.checkExchange(exchange);
  const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
  await ch.bindQueue(queue, exchange, 'send.*');

  const outcome = new Promise((resolve) => {
    ch.consume(queue, (msg) => {
      ch.ack(msg);
      if (msg.properties.correlationId === jobId) resolve([msg.properties.messageId, JSON.parse(msg.content)]);
    });
  });
  ch.on('return', (msg) => {
    console.error(`node: job ${msg.properties.messageId} was not routed to ${jobsQueue}`);
    process.exit(1);
  });
  await new Promise((resolve, reject) => {
    ch.publish('', jobsQueue, Buffer.from(JSON.stringify(job)), {
      contentType: 'application/json',
      deliveryMode: 2, // persistent
      persistent: true,
      messageId: jobId,
      timestamp: Math.floor(Date.now() / 1000),
      userId: decodeURIComponent(new URL(url).username || 'guest'),
      mandatory: true,
    }, (err) => (err ? reject(new Error(`job ${jobId} was not confirmed: ${err}`)) : resolve()));
  });
  console.log(`node: published ${jobId} (confirmed)`);

  const [messageId, o] = await outcome;
  clearTimeout(timer);
  const bad = problems(o, jobId);
  if (bad.length) throw new Error(`the outcome is malformed (${bad.join('; ')}): ${JSON.stringify(o)}`);
  if (o.status !== expect) throw new Error(`expected ${expect}, got ${JSON.stringify(o)}`);
  console.log(`node: outcome ${messageId}: ${JSON.stringify(o)}`);
  await conn.close();
}

main().catch((e) => {
  console.error(`node: ${e.message || e}`);
  process.exit(1);
});
