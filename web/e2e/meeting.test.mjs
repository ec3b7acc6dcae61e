// End-to-end acceptance tests of the browser client against a real Ting server:
// three headless Chromium participants meet in one room.
//
//   TING_BIN=target/debug/ting npm run test:e2e

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  eventually,
  growingStreams,
  joinViaLanding,
  openBrowser,
  startServer,
  within,
} from './harness.mjs';

const TING_BIN = process.env.TING_BIN;
const ROOM = 'e2e-room';
/** Everything here must finish well inside the two minutes the file is allowed. */
const FILE_BUDGET_MS = 115_000;

let server = null;
/** @type {Awaited<ReturnType<typeof openBrowser>>[]} */
const people = [];
const ids = new Map();

const tileOf = (page, participantId, source = 'camera') =>
  page.locator(`.tile[data-participant-id="${participantId}"][data-source="${source}"]`);

before(async () => {
  assert.ok(
    TING_BIN,
    'TING_BIN is not set: point it at the ting server binary (e.g. TING_BIN=target/debug/ting npm run test:e2e)',
  );
  server = await startServer(TING_BIN);
}, { timeout: 35_000 });

after(async () => {
  await Promise.all(people.map((p) => p.close()));
  if (process.exitCode && people.length > 0) {
    // Browser console output is the first thing anybody needs when a scenario failed.
    console.log(people.flatMap((p) => p.logs).slice(-80).join('\n'));
  }
  if (server) {
    const status = await server.stop();
    assert.ok(
      status.code === 0 || status.signal === 'SIGTERM',
      `server did not exit cleanly on SIGTERM: ${JSON.stringify(status)}\n${server.output().slice(-2000)}`,
    );
  }
}, { timeout: 30_000 });

test('the landing page explains a bad room name and a refused quick-join', { timeout: 30_000 }, async () => {
  const b = await openBrowser('Landing');
  try {
    const { page } = b;
    const config = await page.request.get(`${server.base}/api/config`);
    assert.equal(config.status(), 200);
    assert.equal((await config.json()).version, 1);

    await page.goto(`${server.base}/`);
    await page.fill('#name', 'Dana');
    await page.fill('#room', 'not a room!');
    await page.click('#join');
    await page.locator('#landing-error').waitFor({ state: 'visible', timeout: 2000 });
    assert.match(await page.textContent('#landing-error'), /room name is not valid/i);
    assert.equal(await page.locator('#device-check').count(), 0, 'an invalid room must not get past the landing page');

    // The server itself refuses a bad room name with 400 bad_message.
    const bad = await page.request.post(`${server.base}/api/quick-join`, { data: { room: 'a/b', name: 'Dana' } });
    assert.equal(bad.status(), 400);
    assert.equal((await bad.json()).code, 'bad_message');

    // A refused quick-join (quick start disabled) shows the server's message.
    await page.route('**/api/quick-join', (route) =>
      route.fulfill({ status: 403, json: { code: 'not_allowed', message: 'Quick start is disabled on this server.' } }),
    );
    await page.fill('#room', 'fine-room');
    await page.click('#join');
    await page.waitForFunction(() => /Quick start is disabled/.test(document.querySelector('#landing-error')?.textContent ?? ''), null, { timeout: 2000 });
    assert.ok(await page.isVisible('#landing-error'));
    assert.ok(await page.isEnabled('#join'), 'the Join button must be usable again after a failure');

    // A broken invite link ends in a clear message, not a spinner.
    await page.unroute('**/api/quick-join');
    await page.goto(`${server.base}/?room=${ROOM}&token=not-a-jwt`);
    await page.click('#device-check #join:not([disabled])');
    await page.waitForSelector('#card-title', { timeout: 5000 });
    assert.match(await page.textContent('#card-title'), /could not join/i);
  } finally {
    await b.close();
  }
});

test('three participants see and hear each other', { timeout: 45_000 }, async () => {
  people.push(...(await Promise.all(['Alice', 'Bob', 'Carol'].map((n) => openBrowser(n)))));
  // Join one after the other: the later ones find earlier tracks in `joined`, the earlier ones
  // learn about later tracks from `track_published` — both paths get exercised.
  for (const p of people) ids.set(p.name, await within(20_000, `${p.name} joins`, joinViaLanding(p, server.base, ROOM)));
  assert.equal(new Set(ids.values()).size, 3, 'participant ids must be distinct');

  // Videos are subscribed per participant. Audio comes in 3 audio slots that the server fills
  // with the loudest speakers other than the receiver, one speaker per slot: two slots growing
  // means both others are heard (the fake microphones beep, so both get into a slot).
  await Promise.all(
    people.map((p) =>
      eventually(15_000, `${p.name} receives audio and video from both others`, async () => {
        const others = people.filter((o) => o !== p).map((o) => ids.get(o.name));
        const growing = await growingStreams(p.page, 2000);
        const videoFrom = new Set(growing.filter((s) => s.kind === 'video').map((s) => s.participantId));
        const slots = growing.filter((s) => s.kind === 'audio' && s.slot).length;
        const unslotted = growing.filter((s) => s.kind === 'audio' && !s.slot).length;
        const ok = slots >= 2 && unslotted === 0 && others.every((id) => videoFrom.has(id));
        return ok || `growing ${JSON.stringify(growing)}; want video from ${others} and 2 audio slots`;
      }),
    ),
  );
  for (const p of people) {
    for (const o of people.filter((x) => x !== p)) {
      assert.ok(await tileOf(p.page, ids.get(o.name)).isVisible(), `${p.name} shows a tile for ${o.name}`);
    }
  }
});

test('a tile can be pinned, one at a time (last-N video keeps the pinned camera)', { timeout: 15_000 }, async () => {
  const [alice, bob, carol] = people;
  const { page } = bob;
  const pinOf = (name) => tileOf(page, ids.get(name.name)).locator('[data-action="pin"]');
  assert.equal(await page.locator('.tile.self [data-action="pin"]:visible').count(), 0, 'no pin on one\'s own tile');
  await pinOf(alice).click({ timeout: 3000 });
  await page.waitForFunction((id) => window.ting.session.pinned === id, ids.get('Alice'), { timeout: 2000 });
  assert.equal(await pinOf(alice).getAttribute('aria-pressed'), 'true');
  await pinOf(carol).click({ timeout: 3000 });
  await page.waitForFunction((id) => window.ting.session.pinned === id, ids.get('Carol'), { timeout: 2000 });
  assert.equal(await pinOf(alice).getAttribute('aria-pressed'), 'false', 'pinning another unpins the first');
  await pinOf(carol).click({ timeout: 3000 });
  await page.waitForFunction(() => window.ting.session.pinned === null, null, { timeout: 2000 });
  // Under the cap everybody's camera stays received throughout.
  const videoFrom = new Set((await page.evaluate(() => window.ting.session.receiving())).map((r) => r.participantId));
  assert.ok(videoFrom.has(ids.get('Alice')) && videoFrom.has(ids.get('Carol')), `receiving ${[...videoFrom]}`);
});

test('a muted microphone shows on the other tiles within 2 s', { timeout: 30_000 }, async () => {
  const [alice, bob, carol] = people;
  const aliceId = ids.get('Alice');
  for (const p of [bob, carol]) {
    assert.equal(await tileOf(p.page, aliceId).locator('.mic-muted').isVisible(), false, 'not muted before');
  }
  await alice.page.click('#mute-mic');
  assert.equal(await alice.page.getAttribute('#mute-mic', 'aria-pressed'), 'true');
  const started = Date.now();
  await Promise.all(
    [bob, carol].map((p) => tileOf(p.page, aliceId).locator('.mic-muted').waitFor({ state: 'visible', timeout: 2000 })),
  );
  assert.ok(Date.now() - started <= 2000);
  // The server stops forwarding a muted microphone: Bob and Carol keep one audio slot growing
  // (each other's), which also shows that a slot carries one speaker, not a mix.
  const slotsGrowing = async (p) =>
    (await growingStreams(p.page, 1500)).filter((s) => s.kind === 'audio' && s.slot).length;
  await Promise.all(
    [bob, carol].map((p) =>
      eventually(6000, `${p.name} hears only one other while Alice is muted`, async () => {
        const n = await slotsGrowing(p);
        return n === 1 || `${n} audio slots growing`;
      }),
    ),
  );
  // Unmuting clears it again, and Alice is heard again.
  await alice.page.click('#mute-mic');
  await Promise.all(
    [bob, carol].map((p) => tileOf(p.page, aliceId).locator('.mic-muted').waitFor({ state: 'hidden', timeout: 2000 })),
  );
  await Promise.all(
    [bob, carol].map((p) =>
      eventually(6000, `${p.name} hears both others again`, async () => {
        const n = await slotsGrowing(p);
        return n === 2 || `${n} audio slots growing`;
      }),
    ),
  );
});

test('a screen share reaches the others as an extra video', { timeout: 30_000 }, async () => {
  const [alice, bob, carol] = people;
  const carolId = ids.get('Carol');
  await carol.page.click('#share-screen');
  await carol.page.waitForFunction(() => document.querySelector('#share-screen')?.getAttribute('aria-pressed') === 'true', null, { timeout: 5000 });
  await Promise.all(
    [alice, bob].map(async (p) => {
      await tileOf(p.page, carolId, 'screen').waitFor({ state: 'visible', timeout: 10_000 });
      await eventually(15_000, `${p.name} decodes Carol's screen`, async () => {
        const growing = await growingStreams(p.page, 1500);
        const video = growing.filter((s) => s.kind === 'video');
        const screen = video.some((s) => s.participantId === carolId && s.source === 'screen');
        return (screen && video.length >= 3) || `growing video ${JSON.stringify(video)}`;
      });
    }),
  );
});

test('the sound of a screen share is heard beside the loudest speakers', { timeout: 30_000 }, async () => {
  const [alice, bob] = people;
  // Chromium's fake screen capture has no sound: share a canvas with a tone instead, through
  // the same path the share button takes.
  await alice.page.evaluate(() => {
    const canvas = Object.assign(document.createElement('canvas'), { width: 320, height: 180 });
    const ctx = canvas.getContext('2d');
    setInterval(() => {
      ctx.fillStyle = `hsl(${(Date.now() / 10) % 360}, 60%, 50%)`;
      ctx.fillRect(0, 0, 320, 180);
    }, 50);
    const audio = new AudioContext();
    const tone = audio.createOscillator();
    const sink = audio.createMediaStreamDestination();
    tone.connect(sink);
    tone.start();
    const stream = new MediaStream([...canvas.captureStream(15).getVideoTracks(), ...sink.stream.getAudioTracks()]);
    window.ting.session.startScreenShare(stream);
  });
  await eventually(15_000, "Bob receives Alice's screen sound on its own m-line", async () => {
    const growing = await growingStreams(bob.page, 1500);
    const sound = growing.filter((s) => s.kind === 'audio' && !s.slot);
    return sound.length === 1 || `growing audio outside the slots: ${JSON.stringify(sound)}`;
  });
  await alice.page.evaluate(() => window.ting.session.stopScreenShare());
});

test('a participant who leaves disappears from the others within 2 s', { timeout: 20_000 }, async () => {
  const [alice, bob, carol] = people;
  const bobId = ids.get('Bob');
  for (const p of [alice, carol]) assert.equal(await tileOf(p.page, bobId).count(), 1);
  await bob.page.click('#leave');
  await Promise.all(
    [alice, carol].map((p) =>
      p.page.waitForFunction((id) => !document.querySelector(`.tile[data-participant-id="${id}"]`), bobId, { timeout: 2000 }),
    ),
  );
  await bob.page.waitForSelector('#card-title', { timeout: 3000 });
  assert.match(await bob.page.textContent('#card-title'), /left/i);
});

// A last guard against a hang anywhere (a stuck server, a browser that never closes).
setTimeout(() => {
  console.error(`e2e: exceeded ${FILE_BUDGET_MS} ms, aborting`);
  server?.kill();
  process.exit(1);
}, FILE_BUDGET_MS).unref();
