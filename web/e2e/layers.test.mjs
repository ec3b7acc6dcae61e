// End-to-end test of simulcast layer pausing: the server tells a publisher (`publish_layers`)
// which camera layers somebody watches, and the client stops encoding the others.
//
//   TING_BIN=target/debug/ting node --test e2e/layers.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { eventually, joinViaLanding, openBrowser, outbound, sleep, startServer, within } from './harness.mjs';

const TING_BIN = process.env.TING_BIN;
const ROOM = 'e2e-layers';
const FILE_BUDGET_MS = 58_000;

let server = null;
/** @type {Awaited<ReturnType<typeof openBrowser>>[]} */
const people = [];

before(async () => {
  assert.ok(TING_BIN, 'TING_BIN is not set: point it at the ting server binary');
  server = await startServer(TING_BIN);
}, { timeout: 35_000 });

after(async () => {
  await Promise.all(people.map((p) => p.close()));
  if (process.exitCode && people.length > 0) console.log(people.flatMap((p) => p.logs).slice(-80).join('\n'));
  if (server) {
    const status = await server.stop();
    assert.ok(status.code === 0 || status.signal === 'SIGTERM', `server did not exit cleanly: ${JSON.stringify(status)}`);
  }
}, { timeout: 30_000 });

/** The camera's simulcast layers by rid, with what each encoded and sent over `ms`. */
async function layerProgress(page, ms = 2000) {
  const video = async () => (await outbound(page)).filter((s) => s.kind === 'video' && s.rid !== null);
  const before = new Map((await video()).map((s) => [s.rid, s]));
  await sleep(ms);
  const out = {};
  for (const s of await video()) {
    const b = before.get(s.rid);
    out[s.rid] = {
      frames: b ? s.framesEncoded - b.framesEncoded : null,
      bytes: b ? s.bytesSent - b.bytesSent : null,
      height: s.frameHeight,
      active: s.active,
    };
  }
  return out;
}

const grows = (l) => l !== undefined && l.frames > 0 && l.bytes > 0;
/** Switched off by the client (not merely not started yet by the encoder) and silent. */
const paused = (l) => l !== undefined && l.active === false && l.frames === 0 && l.bytes === 0;

test('a layer nobody watches stops being encoded; the watched one keeps going, a wanted one resumes', { timeout: 45_000 }, async () => {
  people.push(...(await Promise.all(['Alice', 'Bob'].map((n) => openBrowser(n)))));
  const [alice, bob] = people;
  // What the server asks of Alice, for the log (Playwright's view of the socket).
  const asked = [];
  const t0 = Date.now();
  alice.page.on('websocket', (ws) =>
    ws.on('framereceived', ({ payload }) => {
      if (typeof payload === 'string' && payload.includes('"publish_layers"')) asked.push(`+${Date.now() - t0}ms ${payload}`);
    }),
  );
  // Bob watches Alice in a small window: a small tile wants a low layer, never the full one.
  await bob.page.setViewportSize({ width: 480, height: 360 });
  for (const p of people) await within(20_000, `${p.name} joins`, joinViaLanding(p, server.base, ROOM));
  const aliceId = await alice.page.evaluate(() => window.ting.participantId);
  const tile = bob.page.locator(`.tile[data-participant-id="${aliceId}"][data-source="camera"]`);
  await tile.waitFor({ state: 'visible', timeout: 10_000 });
  const tileHeight = await tile.evaluate((el) => el.clientHeight);

  // Which layers does the fake camera produce? At 1280×720 all three (q 180, h 360, f 720 px),
  // but the encoder starts the upper ones late and the server may pause them before they ran.
  let first = {};
  await eventually(10_000, "Alice's camera sends its q layer", async () => {
    first = await layerProgress(alice.page, 1000);
    return grows(first.q) || `layers ${JSON.stringify(first)}`;
  });
  console.log(`Bob's tile of Alice: ${tileHeight} px; Alice's layers at first: ${JSON.stringify(first)}`);
  assert.deepEqual(Object.keys(first).sort(), ['f', 'h', 'q'], 'the camera has three simulcast layers');

  // Bob's small tile wants q: f (and h) are switched off and stop being encoded and sent, q goes on.
  const started = Date.now();
  let last = {};
  await eventually(8000, 'Alice stops encoding f and h while q goes on', async () => {
    last = await layerProgress(alice.page, 2000);
    return (paused(last.f) && paused(last.h) && grows(last.q)) || `layers ${JSON.stringify(last)}`;
  });
  console.log(`publish_layers so far: ${asked.join(' | ')}`);
  console.log(`f and h paused within ${Date.now() - started} ms: ${JSON.stringify(last)}`);

  // Bob makes his window big: a larger layer is wanted again and Alice resumes encoding it.
  await bob.page.setViewportSize({ width: 1000, height: 700 });
  const resumed = Date.now();
  // The server asks once its bandwidth estimate for Bob allows the bigger layer (seen: 1–9 s).
  await eventually(15_000, 'Alice resumes a higher layer once Bob watches a big tile', async () => {
    last = await layerProgress(alice.page, 1000);
    return (grows(last.h) && last.h.active === true) || (grows(last.f) && last.f.active === true) || `layers ${JSON.stringify(last)}`;
  });
  const bigTile = await tile.evaluate((el) => el.clientHeight);
  console.log(`publish_layers: ${asked.join(' | ')}`);
  console.log(`Bob's tile now ${bigTile} px; resumed after ${Date.now() - resumed} ms: ${JSON.stringify(last)}`);
});

setTimeout(() => {
  console.error(`e2e: exceeded ${FILE_BUDGET_MS} ms, aborting`);
  server?.kill();
  process.exit(1);
}, FILE_BUDGET_MS).unref();
