// End-to-end tests of roles and moderation in the browser client against a real Ting server:
// a host runs the lobby, admits an attendee, promotes them to speaker and mutes them; finds a
// viewer in the audience and invites them to speak; then remove, deny and lock end other
// people's attempts with clear messages.
//
//   TING_BIN=target/debug/ting node --test e2e/moderation.test.mjs
//   (E2E_SCREENSHOTS=/tmp also writes a picture of the moderator panel there)

import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { eventually, growingStreams, joinWithToken, mintToken, openBrowser, startServer, within } from './harness.mjs';

const TING_BIN = process.env.TING_BIN;
const SCREENSHOTS = process.env.E2E_SCREENSHOTS;
const ROOM = 'town-hall';
/** The whole file stays under a minute. */
const FILE_BUDGET_MS = 58_000;

let server = null;
/** @type {Awaited<ReturnType<typeof openBrowser>>[]} */
const browsers = [];
let host = null;
let attendee = null;
let hostId = null;
let attendeeId = null;
/** The later scenarios continue the first one's meeting. */
let meetingReady = false;

const tileOf = (page, participantId, source = 'camera') =>
  page.locator(`.tile[data-participant-id="${participantId}"][data-source="${source}"]`);
const rowOf = (page, participantId) => page.locator(`[data-participant-row="${participantId}"]`);

async function browser(name) {
  const b = await openBrowser(name);
  browsers.push(b);
  return b;
}

const token = (identity, role) => mintToken(TING_BIN, server, { room: ROOM, identity, name: identity, role });

/**
 * Whether `from`'s video and some audio grow on `page`. Audio comes in the audio slots, which
 * don't say whose it is: call this while `from` is the only other speaker in the room.
 */
async function growingFrom(page, from) {
  const growing = await growingStreams(page, 1500);
  return {
    video: growing.some((s) => s.kind === 'video' && s.participantId === from),
    audio: growing.some((s) => s.kind === 'audio' && s.slot),
    growing,
  };
}

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

test('a host admits an attendee from the lobby, promotes and mutes them', { timeout: 40_000 }, async () => {
  [host, attendee] = await Promise.all([browser('Hanna'), browser('Arne')]);
  const [hostToken, attendeeToken] = await Promise.all([token('Hanna', 'host'), token('Arne', 'attendee')]);

  hostId = await within(15_000, 'the host joins', joinWithToken(host, server.base, ROOM, hostToken));
  const hp = host.page;
  const ap = attendee.page;

  // The host turns the lobby on in the participants panel.
  await hp.click('#toggle-participants');
  assert.ok(await hp.isVisible('#room-controls'), 'a host sees the room controls');
  await hp.check('#lobby-toggle');
  await hp.waitForFunction(() => window.ting.moderation?.settings.lobby === true, null, { timeout: 3000 });

  // The attendee waits: no media connection, no roster.
  await within(15_000, 'the attendee reaches the lobby', joinWithToken(attendee, server.base, ROOM, attendeeToken, { until: 'waiting' }));
  await ap.locator('#waiting').waitFor({ state: 'visible', timeout: 3000 });
  assert.match(await ap.textContent('#waiting'), /Waiting for a moderator to let you in/);
  assert.deepEqual(
    await ap.evaluate(() => ({ pc: window.ting.pc, session: window.ting.session, tiles: document.querySelectorAll('.tile').length, panel: !!document.querySelector('#participants-panel') })),
    { pc: null, session: null, tiles: 0, panel: false },
    'nothing of the meeting is shown in the lobby',
  );

  // The host sees them waiting (badge and lobby row) and admits them.
  const lobbyRow = hp.locator('[data-lobby-row]');
  await lobbyRow.waitFor({ state: 'visible', timeout: 3000 });
  assert.match(await lobbyRow.textContent(), /Arne/);
  assert.equal((await hp.textContent('#lobby-count')).trim(), '1');
  assert.equal((await hp.textContent('#lobby-badge')).trim(), '1');
  if (SCREENSHOTS) await hp.screenshot({ path: join(SCREENSHOTS, 'ting-moderator-lobby.png') });
  await lobbyRow.locator('[data-action="admit"]').click();

  await ap.waitForFunction(() => window.ting.state === 'joined' && window.ting.participantId !== null, null, { timeout: 5000 });
  attendeeId = await ap.evaluate(() => window.ting.participantId);
  await hp.locator('[data-lobby-row]').waitFor({ state: 'detached', timeout: 3000 });
  assert.equal(await hp.isVisible('#lobby-count'), false, 'the lobby badge goes away once nobody waits');
  assert.ok(await ap.isDisabled('#mute-mic'), 'an attendee cannot publish');
  await eventually(15_000, 'the attendee receives the host', async () => {
    const got = await growingFrom(ap, hostId);
    return (got.video && got.audio) || `growing from host: ${JSON.stringify(got.growing)}`;
  });

  // The attendee raises a hand; the host sees it in the panel.
  await ap.click('#raise-hand');
  assert.equal(await ap.getAttribute('#raise-hand', 'aria-pressed'), 'true');
  await rowOf(hp, attendeeId).locator('.hand-raised').waitFor({ state: 'visible', timeout: 3000 });

  // Make speaker: the attendee publishes microphone and camera, the host receives both.
  await rowOf(hp, attendeeId).locator('[data-action="promote"]').click();
  await ap.waitForFunction(() => !document.querySelector('#mute-mic')?.disabled, null, { timeout: 5000 });
  assert.match(await ap.textContent('#banners'), /You can now speak/);
  await eventually(15_000, 'the host receives the promoted attendee', async () => {
    const got = await growingFrom(hp, attendeeId);
    return (got.video && got.audio) || `growing from attendee: ${JSON.stringify(got.growing)}`;
  });
  await rowOf(hp, attendeeId).locator('.hand-raised').waitFor({ state: 'hidden', timeout: 3000 });
  assert.equal(await ap.getAttribute('#raise-hand', 'aria-pressed'), 'false', 'a promotion lowers the hand');
  assert.equal(await ap.getAttribute('#mute-mic', 'aria-pressed'), 'false', 'the promoted attendee is not muted');
  if (SCREENSHOTS) await hp.screenshot({ path: join(SCREENSHOTS, 'ting-moderator-panel.png') });

  // Mute: within 2 s the attendee's mic button and the host's tile show it.
  const started = Date.now();
  await rowOf(hp, attendeeId).locator('[data-action="mute-audio"]').click();
  await Promise.all([
    ap.waitForFunction(() => document.querySelector('#mute-mic')?.getAttribute('aria-pressed') === 'true', null, { timeout: 2000 }),
    tileOf(hp, attendeeId).locator('.mic-muted').waitFor({ state: 'visible', timeout: 2000 }),
  ]);
  assert.ok(Date.now() - started <= 2000, `took ${Date.now() - started} ms`);
  assert.equal(await ap.evaluate(() => window.ting.session.localTrack('microphone')?.enabled), false, 'the muted track sends silence');
  await ap.locator('#banners', { hasText: 'A moderator muted you' }).waitFor({ timeout: 2000 });
  meetingReady = true;
});

test('without self-unmute, a muted speaker stays muted until allowed', { timeout: 15_000 }, async (t) => {
  if (!meetingReady) return t.skip('the first scenario did not get here');
  const hp = host.page;
  const ap = attendee.page;
  await hp.uncheck('#allow-self-unmute');
  await ap.waitForFunction(() => window.ting.moderation.settings.allow_self_unmute === false, null, { timeout: 3000 });

  await ap.click('#mute-mic');
  await ap.locator('#banners [data-key="unmute"]').waitFor({ timeout: 3000 });
  assert.match(await ap.textContent('#banners [data-key="unmute"]'), /moderator muted you/i, 'the server says why');
  assert.equal(await ap.getAttribute('#mute-mic', 'aria-pressed'), 'true', 'still muted');
  assert.equal(await ap.evaluate(() => window.ting.session.localTrack('microphone')?.enabled), false);

  await rowOf(hp, attendeeId).locator('[data-action="allow-unmute"]').click();
  await ap.locator('#banners', { hasText: 'allowed you to unmute' }).waitFor({ timeout: 3000 });
  await ap.click('#mute-mic');
  await tileOf(hp, attendeeId).locator('.mic-muted').waitFor({ state: 'hidden', timeout: 3000 });
  assert.equal(await ap.getAttribute('#mute-mic', 'aria-pressed'), 'false');
});

test('make attendee stops the publishing, remove ends the meeting for them', { timeout: 15_000 }, async (t) => {
  if (!meetingReady) return t.skip('the first scenario did not get here');
  const hp = host.page;
  const ap = attendee.page;
  await rowOf(hp, attendeeId).locator('[data-action="demote"]').click();
  await ap.waitForFunction(() => document.querySelector('#mute-mic')?.disabled === true, null, { timeout: 3000 });
  assert.match(await ap.textContent('#banners'), /You are now an attendee/);
  assert.equal(await ap.evaluate(() => window.ting.session.localTrack('camera')), null, 'the camera is released');
  await tileOf(hp, attendeeId).waitFor({ state: 'detached', timeout: 3000 });

  await rowOf(hp, attendeeId).locator('[data-action="remove"]').click();
  await rowOf(hp, attendeeId).locator('[data-action="confirm-remove"]').click();
  await ap.waitForFunction(() => /removed from the meeting/.test(document.querySelector('#card-title')?.textContent ?? ''), null, { timeout: 3000 });
  await rowOf(hp, attendeeId).waitFor({ state: 'detached', timeout: 3000 });
});

test('a host finds a viewer in the audience and invites them to speak', { timeout: 15_000 }, async () => {
  const hp = host.page;
  const viewer = await browser('Vera');
  const vp = viewer.page;
  const joining = joinWithToken(viewer, server.base, ROOM, await token('Vera', 'viewer'), { until: 'waiting' });
  await within(10_000, 'the viewer reaches the lobby', joining);
  await hp.locator('[data-lobby-row] [data-action="admit"]').click();
  await vp.waitForFunction(() => window.ting?.state === 'joined', null, { timeout: 5000 });
  const veraId = await vp.evaluate(() => window.ting.participantId);
  assert.equal(await rowOf(hp, veraId).count(), 0, 'a viewer is only counted, not listed');

  await hp.fill('#audience-search', 've');
  const invite = hp.locator(`[data-audience-row="${veraId}"] [data-action="promote"]`);
  await invite.waitFor({ timeout: 3000 });
  await invite.click();
  await vp.waitForFunction(() => window.ting.session.self.role === 'speaker', null, { timeout: 3000 });
  await rowOf(hp, veraId).waitFor({ timeout: 3000 });
  await hp.locator(`[data-audience-row="${veraId}"]`).waitFor({ state: 'detached', timeout: 3000 });
});

test('denied from the lobby, then turned away from a locked room', { timeout: 20_000 }, async () => {
  const hp = host.page;
  const guest = await browser('Gus');
  const gp = guest.page;
  await within(10_000, 'the guest reaches the lobby', joinWithToken(guest, server.base, ROOM, await token('Gus', 'speaker'), { until: 'waiting' }));
  await hp.locator('[data-lobby-row] [data-action="deny"]').click();
  await gp.waitForFunction(() => /did not let you in/.test(document.querySelector('#card-title')?.textContent ?? ''), null, { timeout: 3000 });

  await hp.check('#lock-room');
  await hp.waitForFunction(() => window.ting.moderation.settings.locked === true, null, { timeout: 3000 });
  await gp.click('#rejoin');
  await gp.click('#device-check #join:not([disabled])');
  await gp.waitForFunction(() => /meeting is locked/.test(document.querySelector('#card-title')?.textContent ?? ''), null, { timeout: 5000 });
});

setTimeout(() => {
  console.error(`e2e: exceeded ${FILE_BUDGET_MS} ms, aborting`);
  server?.kill();
  process.exit(1);
}, FILE_BUDGET_MS).unref();
