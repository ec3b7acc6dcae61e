// Helpers for the end-to-end tests: start the Ting server, drive headless Chromium, read stats.

import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** Proven flags for WebRTC in headless Chromium against a server on 127.0.0.1 (TESTING-WEBRTC.md). */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
];

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects after `ms` with `what` in the message, so a hang names itself. */
export function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Starts `$TING_BIN serve` on free ports in a fresh data dir and waits for its
 * "listening on http://127.0.0.1:PORT" line.
 */
export async function startServer(bin, extraArgs = []) {
  const dataDir = mkdtempSync(join(tmpdir(), 'ting-e2e-data-'));
  const args = ['serve', '--http-port', '0', '--udp-port', '0', '--bind', '127.0.0.1', '--public-ip', '127.0.0.1', '--data-dir', dataDir, ...extraArgs];
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  let output = '';
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const base = await within(
    30_000,
    `"listening on http://127.0.0.1:PORT" from ${bin}`,
    new Promise((resolve, reject) => {
      const onData = (chunk) => {
        output += chunk;
        const m = /listening on (http:\/\/127\.0\.0\.1:(\d+))/.exec(output);
        if (m) resolve(m[1]);
      };
      child.stdout.setEncoding('utf8').on('data', onData);
      child.stderr.setEncoding('utf8').on('data', (c) => {
        output += c;
      });
      child.once('error', (e) => reject(new Error(`cannot start ${bin}: ${e.message}`)));
      exited.then(({ code, signal }) =>
        reject(new Error(`${bin} exited (code ${code}, signal ${signal}) before listening:\n${output.slice(-3000)}`)),
      );
    }),
  ).catch((e) => {
    child.kill('SIGKILL');
    throw e;
  });
  // Keep draining the pipes so the server never blocks on a full one.
  child.stdout.resume();
  child.stderr.resume();
  return {
    base,
    /** The server's data dir (its token secret lives here: `mintToken` signs with it). */
    dataDir,
    output: () => output,
    /** Last resort when the test process must exit now. */
    kill: () => child.kill('SIGKILL'),
    /** SIGTERM, then the exit status (SIGKILL after 10 s so a hung server can't hang the test). */
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const status = await exited;
      clearTimeout(timer);
      rmSync(dataDir, { recursive: true, force: true });
      return status;
    },
  };
}

/** One browser (a persistent context in a fresh profile) per participant. */
export async function openBrowser(name) {
  const profile = mkdtempSync(join(tmpdir(), `ting-e2e-${name}-`));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_FLAGS,
    viewport: { width: 1000, height: 700 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(15_000);
  const logs = [];
  page.on('console', (m) => logs.push(`[${name}] ${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[${name}] pageerror: ${e.message}`));
  return {
    name,
    context,
    page,
    logs,
    async close() {
      await context.close().catch(() => {});
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Joins `room` the way a person does: landing page, then the device check. Returns the participant id. */
export async function joinViaLanding(browser, base, room) {
  const { page, name } = browser;
  await page.goto(`${base}/?room=${encodeURIComponent(room)}`);
  await page.fill('#name', name);
  if ((await page.inputValue('#room')) !== room) throw new Error('room was not prefilled from ?room=');
  await page.click('#join');
  await page.waitForSelector('#device-check');
  // The device check's own Join button is enabled once the devices are open.
  await page.click('#device-check #join:not([disabled])');
  await page.waitForFunction(() => window.ting?.state === 'joined' && window.ting.participantId !== null);
  return page.evaluate(() => window.ting.participantId);
}

/**
 * Mints a join token with `ting token` for the server started by `startServer` (same data dir,
 * hence same secret). Quick-join only hands out `speaker` tokens; this gives any role.
 */
export function mintToken(bin, server, { room, identity, name = identity, role = 'speaker' }) {
  const args = ['token', '--data-dir', server.dataDir, '--room', room, '--identity', identity, '--name', name, '--role', role];
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: 10_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${bin} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

/**
 * Opens an invite link (`/?room=…&token=…`) and passes the device check. Resolves once the page
 * is `joined` (returns the participant id) or, with `until: 'waiting'`, in the lobby (returns null).
 */
export async function joinWithToken(browser, base, room, token, { until = 'joined' } = {}) {
  const { page } = browser;
  await page.goto(`${base}/?room=${encodeURIComponent(room)}&token=${encodeURIComponent(token)}`);
  await page.click('#device-check #join:not([disabled])');
  await page.waitForFunction(
    (want) => window.ting?.state === want && (want !== 'joined' || window.ting.participantId !== null),
    until,
  );
  return page.evaluate(() => window.ting.participantId);
}

/**
 * Inbound RTP counters of the page's peer connection, labelled with who and what they carry.
 * Videos are subscribed per track (`participantId`, `source`); audio arrives in the audio slots
 * (`slot: true`), which the server fills with the loudest speakers without saying who.
 */
export async function inbound(page) {
  return page.evaluate(async () => {
    const { pc, session } = window.ting;
    if (!pc || !session) return [];
    const byMid = new Map(session.receiving().map((r) => [r.mid, r]));
    const slots = new Set(session.audioSlotMedia().map((s) => s.mid));
    const out = [];
    (await pc.getStats()).forEach((r) => {
      if (r.type !== 'inbound-rtp') return;
      const what = byMid.get(r.mid);
      out.push({
        id: r.id,
        kind: r.kind,
        mid: r.mid,
        participantId: what?.participantId ?? null,
        source: what?.source ?? null,
        slot: slots.has(r.mid),
        count: r.kind === 'video' ? (r.framesDecoded ?? 0) : (r.totalSamplesReceived ?? 0),
        packets: r.packetsReceived ?? 0,
      });
    });
    return out;
  });
}

/**
 * Streams whose counter (framesDecoded / totalSamplesReceived) and packet count grew over `ms`
 * (a receiver conceals missing audio, so samples alone don't prove that anything arrives).
 */
export async function growingStreams(page, ms = 2000) {
  const before = new Map((await inbound(page)).map((s) => [s.id, s]));
  await sleep(ms);
  return (await inbound(page)).filter((s) => {
    const b = before.get(s.id);
    return b !== undefined && s.count > b.count && s.packets > b.packets;
  });
}

/** Outbound RTP counters of the page's peer connection (one per simulcast layer, by `rid`). */
export async function outbound(page) {
  return page.evaluate(async () => {
    const pc = window.ting.pc;
    if (!pc) return [];
    const out = [];
    (await pc.getStats()).forEach((r) => {
      if (r.type !== 'outbound-rtp') return;
      out.push({
        id: r.id,
        kind: r.kind,
        mid: r.mid,
        rid: r.rid ?? null,
        framesEncoded: r.framesEncoded ?? 0,
        bytesSent: r.bytesSent ?? 0,
        frameHeight: r.frameHeight ?? null,
        active: r.active ?? null,
      });
    });
    return out;
  });
}

/** Polls `check` (which returns true or a description of what is missing) until it passes. */
export async function eventually(ms, what, check) {
  const deadline = Date.now() + ms;
  let last = 'never checked';
  while (Date.now() < deadline) {
    const result = await check();
    if (result === true) return;
    last = result;
    await sleep(250);
  }
  throw new Error(`${what} not reached within ${ms} ms; last: ${last}`);
}
