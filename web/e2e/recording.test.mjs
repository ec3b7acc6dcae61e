// End-to-end test of meeting recording in the browser client against a real Ting server: a host
// starts and stops the recording from the participants panel, host and speaker both see the
// "Recording" badge while it runs, and the host finds the files in the Recordings list.
//
//   TING_BIN=target/debug/ting node --test e2e/recording.test.mjs
//   (E2E_SCREENSHOTS=/tmp also writes pictures of the host's view there)

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { eventually, growingStreams, joinWithToken, mintToken, openBrowser, startServer, within } from './harness.mjs';

const TING_BIN = process.env.TING_BIN;
const SCREENSHOTS = process.env.E2E_SCREENSHOTS;
const ROOM = 'recorded-room';
const FILE_BUDGET_MS = 58_000;

let server = null;
/** @type {Awaited<ReturnType<typeof openBrowser>>[]} */
const browsers = [];

const token = (identity, role) => mintToken(TING_BIN, server, { room: ROOM, identity, name: identity, role });

before(async () => {
  assert.ok(TING_BIN, 'TING_BIN is not set: point it at the ting server binary');
  server = await startServer(TING_BIN);
}, { timeout: 35_000 });

after(async () => {
  await Promise.all(browsers.map((b) => b.close()));
  if (process.exitCode && browsers.length > 0) console.log(browsers.flatMap((b) => b.logs).slice(-80).join('\n'));
  if (server) {
    const status = await server.stop();
    assert.ok(status.code === 0 || status.signal === 'SIGTERM', `server did not exit cleanly: ${JSON.stringify(status)}`);
  }
}, { timeout: 30_000 });

test('a host records the meeting; everybody sees it while it runs', { timeout: 50_000 }, async () => {
  const [host, speaker] = await Promise.all(['Hilde', 'Sven'].map(openBrowser));
  browsers.push(host, speaker);
  const [hostToken, speakerToken] = await Promise.all([token('Hilde', 'host'), token('Sven', 'speaker')]);
  await within(15_000, 'the host joins', joinWithToken(host, server.base, ROOM, hostToken));
  const speakerId = await within(15_000, 'the speaker joins', joinWithToken(speaker, server.base, ROOM, speakerToken));
  const hp = host.page;
  const sp = speaker.page;
  const indicator = (page) => page.locator('[data-testid="recording-indicator"]');

  // Nobody records yet: no badge anywhere.
  for (const page of [hp, sp]) {
    assert.equal(await indicator(page).isVisible(), false, 'no recording badge before recording');
    assert.equal(await page.evaluate(() => window.ting.recording), false);
  }

  // Only moderators get the control.
  await sp.click('#toggle-participants');
  await sp.locator('#participants-panel').waitFor({ state: 'visible', timeout: 3000 });
  assert.equal(await sp.isVisible('[data-testid="recording-toggle"]'), false, 'a speaker has no record control');
  assert.equal(await sp.isVisible('[data-testid="recordings-list"]'), false, 'a speaker has no recordings list');

  // Let the host receive the speaker first, so there is media to record.
  await eventually(15_000, 'the host receives the speaker', async () => {
    const growing = await growingStreams(hp, 1000);
    return growing.some((s) => s.kind === 'video' && s.participantId === speakerId) || JSON.stringify(growing);
  });

  await hp.click('#toggle-participants');
  const toggle = hp.locator('[data-testid="recording-toggle"]');
  await toggle.waitFor({ state: 'visible', timeout: 3000 });
  assert.match(await toggle.textContent(), /Record/);
  await hp.locator('[data-testid="recordings-list"]').waitFor({ state: 'attached', timeout: 3000 });
  await hp.locator('.recordings-note', { hasText: 'No recordings yet' }).waitFor({ timeout: 5000 });
  await toggle.click();

  await Promise.all([hp, sp].map((page) => indicator(page).waitFor({ state: 'visible', timeout: 5000 })));
  for (const page of [hp, sp]) {
    assert.match(await indicator(page).textContent(), /Recording/);
    assert.equal(await page.evaluate(() => window.ting.recording), true);
    // Inside a live region, so screen readers announce it.
    const live = await indicator(page).evaluate((el) => {
      const region = el.closest('[aria-live]');
      return region ? `${region.getAttribute('role')}/${region.getAttribute('aria-live')}` : null;
    });
    assert.equal(live, 'status/polite');
  }
  assert.match(await toggle.textContent(), /Stop recording/);
  if (SCREENSHOTS) await hp.screenshot({ path: join(SCREENSHOTS, 'ting-recording.png') });

  // Record a little, then stop: the badge goes away for both.
  await new Promise((r) => setTimeout(r, 2500));
  await toggle.click();
  await Promise.all([hp, sp].map((page) => indicator(page).waitFor({ state: 'hidden', timeout: 5000 })));
  for (const page of [hp, sp]) assert.equal(await page.evaluate(() => window.ting.recording), false);
  assert.match(await toggle.textContent(), /^Record$/);

  // The host finds the files in the Recordings list (listed again once it stopped) and can download one.
  const file = hp.locator('[data-testid="recording-file"]').first();
  await eventually(10_000, 'a recording file is listed', async () => {
    if (await file.count()) return true;
    await hp.click('[data-testid="recordings-refresh"]');
    return (await hp.textContent('#recordings')) ?? 'no list';
  });
  if (SCREENSHOTS) await hp.screenshot({ path: join(SCREENSHOTS, 'ting-recordings-list.png') });
  const href = await file.getAttribute('href');
  assert.match(href, new RegExp(`^/api/rooms/${ROOM}/recordings/[^/]+/[^/?]+\\?token=`));
  const res = await hp.request.get(`${server.base}${href}`);
  assert.equal(res.status(), 200, `download ${href}`);
  assert.ok((await res.body()).length > 0, 'the file is not empty');
});

setTimeout(() => {
  console.error(`e2e: exceeded ${FILE_BUDGET_MS} ms, aborting`);
  server?.kill();
  process.exit(1);
}, FILE_BUDGET_MS).unref();
