// The official RocketMQ Node.js client (rocketmq-client-nodejs) through single nodes of a
// txmq cluster, run by broker/tests/cluster_clients.rs: `node cluster.js PRODUCE_AT CONSUME_AT`, with
// NODE_PATH naming the client's node_modules. Prints "ok" when the scenario holds.
'use strict';
const { Producer, SimpleConsumer } = require('rocketmq-client-nodejs');

const COMMIT = 1; // apache.rocketmq.v2.TransactionResolution.COMMIT

const started = Date.now();
const step = (what) => console.error(`${((Date.now() - started) / 1000).toFixed(1)}s ${what}`);

async function main() {
  const [produceAt, consumeAt] = process.argv.slice(2);
  // The test placed `node-spread` (NORMAL) and `node-pay` (TRANSACTION) over three nodes. The
  // Node client sends only to queue 0 of each broker name: every node still gets some.
  const producer = new Producer({ endpoints: produceAt, topic: ['node-spread'] });
  await producer.startup();
  step('producer started');
  const sent = new Set();
  for (let i = 0; i < 30; i++) {
    const receipt = await producer.send({ topic: 'node-spread', tag: 'n', body: Buffer.from(`m${i}`) });
    sent.add(receipt.messageId);
  }
  step('sent');
  await producer.shutdown();
  step('producer shut down');

  const checker = { async check() { return COMMIT; } };
  const tp = new Producer({ endpoints: produceAt, topic: ['node-pay'], checker });
  await tp.startup();
  const committed = new Set();
  for (let i = 0; i < 4; i++) {
    for (const decision of ['commit', 'rollback']) {
      const transaction = tp.beginTransaction();
      const receipt = await tp.send({ topic: 'node-pay', tag: 'n', body: Buffer.from(`${decision}-${i}`) }, transaction);
      if (decision === 'commit') {
        await transaction.commit();
        committed.add(receipt.messageId);
      } else {
        await transaction.rollback();
      }
    }
  }
  step('transactions ended');
  await tp.shutdown();
  step('transactional producer shut down');

  const consumer = new SimpleConsumer({
    consumerGroup: `node-readers-${Date.now()}`,
    endpoints: consumeAt,
    subscriptions: new Map([['node-spread', '*'], ['node-pay', '*']]),
    awaitDuration: 1000,
  });
  await consumer.startup();
  step('consumer started');
  const want = new Set([...sent, ...committed]);
  const got = [];
  const deadline = Date.now() + 40000;
  while (got.length < want.size && Date.now() < deadline) {
    for (const m of await consumer.receive(16, 15000)) {
      await consumer.ack(m);
      got.push(m.messageId);
    }
  }
  step(`received ${got.length}`);
  await consumer.shutdown();
  step('consumer shut down');
  const unique = new Set(got);
  if (unique.size !== got.length) throw new Error('a message arrived twice');
  const missing = [...want].filter((id) => !unique.has(id));
  const extra = [...unique].filter((id) => !want.has(id));
  if (missing.length || extra.length) {
    throw new Error(`received ${got.length}: missing ${missing.length}, extra ${extra.length}`);
  }
  console.log('ok');
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
