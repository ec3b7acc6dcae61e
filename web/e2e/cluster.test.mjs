// Cluster mode in the browser: two `ting serve` nodes joined through Redis (started by the test
// command). Bob opens the meeting link of a room that node-1 serves on node-2: his client is
// `moved` to node-1 and meets Alice there. Then node-1 stops and hands the meeting to node-2.
//
//   TING_BIN=target/debug/ting node --test web/e2e/cluster.test.mjs

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { eventually, growingStreams, inbound, joinViaLanding, openBrowser, startServer } from './harness.mjs';

const TING_BIN = process.env.TING_BIN;
const REDIS = process.env.TING_TEST_REDIS || 'redis://127.0.0.1:6379';
const ROOM = 'e2e-cluster';
/** Nodes of one cluster share the token secret: a token minted on one is valid on all. */
const SECRET = randomBytes(16).toString('hex');
const PREFIX = `ting-e2e:${randomBytes(6).toString('hex')}`;

const nodes = [];
const people = [];

const clusterArgs = (id) => ['--tcp-port', '0', '--relay-port', '0', '--redis', REDIS, '--redis-prefix', PREFIX, '--node-id', id, '--token-secret', SECRET];

before(async () => {
  assert.ok(TING_BIN, 'TING_BIN is not set: point it at the ting server binary');
  nodes.push(await startServer(TING_BIN, clusterArgs('e2e-node-1')));
  nodes.push(await startServer(TING_BIN, clusterArgs('e2e-node-2')));
}, { timeout: 65_000 });

after(async () => {
  await Promise.all(people.map((p) => p.close()));
  if (process.exitCode) {
    for (const p of people) console.log(p.logs.slice(-30).join('\n'));
    for (const n of nodes) console.log(n.output().slice(-2000));
  }
  await Promise.all(nodes.map((n) => n.stop()));
});

test('a participant who opens the room on another node is moved to it; a stopping node hands the meeting over', { timeout: 90_000 }, async () => {
  const [one, two] = nodes;
  const alice = await openBrowser('Alice');
  people.push(alice);
  const aliceId = await joinViaLanding(alice, one.base, ROOM);

  const bob = await openBrowser('Bob');
  people.push(bob);
  const bobId = await joinViaLanding(bob, two.base, ROOM);
  // Bob's page came from node-2, but his signalling now runs on node-1 (the room's node).
  const bobSocket = await bob.page.evaluate(() => window.ting.signallingUrl);
  assert.equal(bobSocket, `${one.base.replace('http://', 'ws://')}/ws`);

  // They are in the same meeting: each sees the other's camera tile and receives media.
  const tile = (page, id) => page.locator(`.tile[data-participant-id="${id}"][data-source="camera"]`);
  await tile(bob.page, aliceId).waitFor({ state: 'visible', timeout: 15_000 });
  await tile(alice.page, bobId).waitFor({ state: 'visible', timeout: 15_000 });
  await eventually(15_000, 'Bob receives Alice\'s media', async () => (await growingStreams(bob.page)).length > 0);

  // node-1 stops (SIGTERM): it hands the meeting over to node-2; both rejoin there by
  // themselves and meet again, with media.
  await one.stop();
  const onNodeTwo = `${two.base.replace('http://', 'ws://')}/ws`;
  // Rejoined there: a new participant id from node-2 (until then the old session shows).
  for (const [person, oldId] of [[alice, aliceId], [bob, bobId]]) {
    await person.page.waitForFunction(
      ([url, old]) =>
        window.ting.signallingUrl === url && window.ting.state === 'joined' && window.ting.participantId !== old,
      [onNodeTwo, oldId],
      { timeout: 20_000 },
    );
  }
  const [aliceAgain, bobAgain] = await Promise.all([alice, bob].map((p) => p.page.evaluate(() => window.ting.participantId)));
  await tile(bob.page, aliceAgain).waitFor({ state: 'visible', timeout: 15_000 });
  await tile(alice.page, bobAgain).waitFor({ state: 'visible', timeout: 15_000 });
  await eventually(15_000, 'Bob receives Alice\'s media on node-2', async () => (await growingStreams(bob.page)).length > 0);
});

test('when a node crashes, its meeting re-forms on another node by itself', { timeout: 120_000 }, async () => {
  const prefix = `ting-e2e:${randomBytes(6).toString('hex')}`;
  const args = (id) => ['--tcp-port', '0', '--relay-port', '0', '--redis', REDIS, '--redis-prefix', prefix, '--node-id', id, '--token-secret', SECRET];
  const crashing = await startServer(TING_BIN, args('e2e-a'));
  const surviving = await startServer(TING_BIN, args('e2e-b'));
  nodes.push(crashing, surviving);
  const wsOf = (node) => `${node.base.replace('http://', 'ws://')}/ws`;

  // Both open the link on the surviving node (as behind a load balancer) and are moved to the
  // other one, which takes the new room (equal load: the smaller id).
  const carol = await openBrowser('Carol');
  const dave = await openBrowser('Dave');
  people.push(carol, dave);
  await joinViaLanding(carol, surviving.base, 'crash-room');
  await joinViaLanding(dave, surviving.base, 'crash-room');
  for (const person of [carol, dave]) {
    assert.equal(await person.page.evaluate(() => window.ting.signallingUrl), wsOf(crashing));
  }
  const tile = (page, id) => page.locator(`.tile[data-participant-id="${id}"][data-source="camera"]`);
  const carolId = await carol.page.evaluate(() => window.ting.participantId);
  const daveId = await dave.page.evaluate(() => window.ting.participantId);
  await tile(dave.page, carolId).waitFor({ state: 'visible', timeout: 15_000 });

  // kill -9: no hand-over. The clients fall back to where they came from, and the meeting
  // re-forms there once the dead node's entries expire.
  const killedAt = Date.now();
  crashing.kill();
  for (const [person, oldId] of [[carol, carolId], [dave, daveId]]) {
    await person.page.waitForFunction(
      ([url, old]) =>
        window.ting.signallingUrl === url && window.ting.state === 'joined' && window.ting.participantId !== old,
      [wsOf(surviving), oldId],
      { timeout: 30_000 },
    );
  }
  const rejoinedAfter = (Date.now() - killedAt) / 1000;
  const [carolAgain, daveAgain] = await Promise.all([carol, dave].map((p) => p.page.evaluate(() => window.ting.participantId)));
  // Media again: the first decoded frame of Carol's camera on Dave's new connection.
  await eventually(15_000, 'Dave decodes Carol\'s camera again', async () =>
    (await inbound(dave.page)).some((s) => s.participantId === carolAgain && s.kind === 'video' && s.count > 0));
  const mediaAfter = (Date.now() - killedAt) / 1000;
  await tile(dave.page, carolAgain).waitFor({ state: 'visible', timeout: 15_000 });
  await tile(carol.page, daveAgain).waitFor({ state: 'visible', timeout: 15_000 });
  await eventually(15_000, 'Dave receives Carol\'s media again', async () => (await growingStreams(dave.page, 1000)).length > 0);
  console.log(`# after kill -9: both rejoined at ${rejoinedAfter.toFixed(1)} s, Carol's video decoded by Dave at ${mediaAfter.toFixed(1)} s`);
});
