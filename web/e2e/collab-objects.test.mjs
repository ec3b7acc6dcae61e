// End-to-end test of several objects per channel and whiteboard images, in the team space
// (`/?space=`): Alice opens a second board and a second chat room, Bob picks them and sees what
// she put there; Alice uploads a PNG from the whiteboard's image tool and places it, Bob's
// whiteboard has the image element and draws its pixel.
//
//   TING_BIN=target/debug/ting node --test --test-concurrency=1 web/e2e/collab-objects.test.mjs

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { mintToken, openBrowser, sleep, startServer, within } from './harness.mjs';

const TING_BIN = process.env.TING_BIN;
const ROOM = 'e2e-objects';
const FILE_BUDGET_MS = 100_000;
/** A 1×1 PNG, one red pixel. */
const RED_PIXEL_PNG = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC', 'base64');

let server = null;
/** @type {Awaited<ReturnType<typeof openBrowser>>[]} */
const people = [];

const until = (page, what, fn, arg, ms = 10_000) =>
  within(ms, what, page.waitForFunction(fn, arg, { timeout: ms + 1000, polling: 100 }));

const testid = (id) => `[data-testid="${id}"]`;

/** Opens a new object of `channel` through the picker's "New…". */
async function create(page, channel, name) {
  await page.selectOption(testid(`${channel}-objects`), '.new');
  await page.fill(testid(`${channel}-object-name`), name);
  await page.click(testid(`${channel}-object-open`));
  await until(page, `${channel} ${name} is shown and synced`, ({ channel, name }) =>
    window.ting.collab.object(channel) === name && window.ting.collab.synced(channel), { channel, name });
}

/** Picks an existing object of `channel`, once the server lists it (the focus asks again). */
async function pick(page, channel, name) {
  const select = page.locator(testid(`${channel}-objects`));
  const deadline = Date.now() + 10_000;
  while ((await select.locator(`option[value="${name}"]`).count()) === 0) {
    assert.ok(Date.now() < deadline, `${channel} ${name} is never listed`);
    await select.blur();
    await select.focus();
    await sleep(300);
  }
  await select.selectOption(name);
  await until(page, `${channel} ${name} is shown and synced`, ({ channel, name }) =>
    window.ting.collab.object(channel) === name && window.ting.collab.synced(channel), { channel, name });
}

before(async () => {
  assert.ok(TING_BIN, 'TING_BIN is not set: point it at the ting server binary');
  server = await startServer(TING_BIN);
}, { timeout: 35_000 });

after(async () => {
  await Promise.all(people.map((p) => p.close()));
  if (process.exitCode && people.length > 0) console.log(people.flatMap((p) => p.logs).slice(-80).join('\n'));
  if (server) await server.stop();
}, { timeout: 30_000 });

test('a second board and chat room, and an image on the whiteboard', { timeout: 90_000 }, async () => {
  people.push(...(await Promise.all(['Alice', 'Bob'].map((n) => openBrowser(n)))));
  const [alice, bob] = people;
  for (const p of people) {
    const token = await mintToken(TING_BIN, server, { room: ROOM, identity: p.name.toLowerCase(), name: p.name });
    await p.page.goto(`${server.base}/?space=${ROOM}&token=${encodeURIComponent(token)}`);
    await until(p.page, `${p.name}'s team space is open`, () => window.ting?.state === 'space' && window.ting.collab?.synced('chat'), undefined, 15_000);
  }

  // --- boards: Alice opens sprint-2 (an invalid name first), adds a card there ---
  await alice.page.click(testid('tab-board'));
  await until(alice.page, 'Alice\'s board is synced', () => window.ting.collab.object('board') === 'main' && window.ting.collab.synced('board'));
  await alice.page.selectOption(testid('board-objects'), '.new');
  await alice.page.fill(testid('board-object-name'), '.hidden');
  await alice.page.click(testid('board-object-open'));
  await within(5000, 'an invalid name is refused', alice.page.locator(testid('board-object-error'), { hasText: 'not starting with' }).waitFor());
  assert.equal(await alice.page.evaluate(() => window.ting.collab.object('board')), 'main');
  await create(alice.page, 'board', 'sprint-2');
  await alice.page.fill(testid('board-column-title'), 'Sprint 2');
  await alice.page.click(testid('board-add-column'));
  await until(alice.page, 'column Sprint 2 exists', () => window.ting.collab.boardColumns('sprint-2')?.some((c) => c.title === 'Sprint 2'));
  await alice.page.fill(testid('board-card-title'), 'Demo the pickers');
  await alice.page.click(testid('board-add-card'));
  await until(alice.page, 'the card exists on sprint-2', () => window.ting.collab.boardCards('sprint-2')?.some((c) => c.title === 'Demo the pickers'));
  const card = await alice.page.evaluate(() => window.ting.collab.boardCards().find((c) => c.title === 'Demo the pickers'));
  // Back to main (empty), then sprint-2 again: a fresh snapshot brings the card back.
  await alice.page.selectOption(testid('board-objects'), 'main');
  await until(alice.page, 'main is shown, without the card', () =>
    window.ting.collab.object('board') === 'main' && window.ting.collab.synced('board') && window.ting.collab.boardCards().length === 0);
  assert.equal(await alice.page.evaluate(() => window.ting.collab.boardCards('sprint-2')), null, 'only the board shown is readable');
  await alice.page.selectOption(testid('board-objects'), 'sprint-2');
  await until(alice.page, 'sprint-2 again has the card', (id) => window.ting.collab.boardCards('sprint-2')?.some((c) => c.id === id), card.id);

  await bob.page.click(testid('tab-board'));
  await until(bob.page, 'Bob\'s board is synced', () => window.ting.collab.synced('board'));
  await pick(bob.page, 'board', 'sprint-2');
  await until(bob.page, 'Bob sees Alice\'s card on sprint-2', (id) => window.ting.collab.boardCards('sprint-2')?.some((c) => c.id === id), card.id);
  await within(5000, 'Bob\'s board shows the card', bob.page.locator(`${testid('board-card')}[data-id="${card.id}"]`).waitFor());

  // --- chat rooms: Alice posts in "design", Bob reads it there, chat/main stays without it ---
  await alice.page.click(testid('tab-chat'));
  await create(alice.page, 'chat', 'design');
  await alice.page.fill(testid('chat-input'), 'Only in design');
  await alice.page.click(testid('chat-send'));
  await until(alice.page, 'Alice\'s message is in design', () => window.ting.collab.chatMessages('design')?.some((m) => m.text === 'Only in design'));
  await bob.page.click(testid('tab-chat'));
  assert.ok(!(await bob.page.evaluate(() => window.ting.collab.chatMessages('main').some((m) => m.text === 'Only in design'))), 'not in chat/main');
  await pick(bob.page, 'chat', 'design');
  await within(5000, 'Bob sees the message in design', bob.page.locator(`${testid('chat-list')} ${testid('chat-message')}`, { hasText: 'Only in design' }).waitFor());

  // --- whiteboard: a line, then an uploaded image placed by a click ---
  for (const p of people) {
    await p.page.click(testid('tab-whiteboard'));
    await until(p.page, `${p.name}'s whiteboard is synced`, () => window.ting.collab.synced('whiteboard'));
  }
  const box = await alice.page.locator(testid('whiteboard-canvas')).boundingBox();
  assert.ok(box && box.width > 300 && box.height > 200, `the canvas has room: ${JSON.stringify(box)}`);
  await alice.page.click(testid('wb-tool-line'));
  await alice.page.mouse.move(box.x + 40, box.y + 40);
  await alice.page.mouse.down();
  await alice.page.mouse.move(box.x + 140, box.y + 100, { steps: 5 });
  await alice.page.mouse.up();
  await until(alice.page, 'Alice\'s line is stored', () =>
    window.ting.collab.whiteboardElements().some((e) => e.type === 'line' && e.points.length === 2 && e.created_seq > 0));

  await alice.page.click(testid('wb-tool-image'));
  await within(5000, 'the image picker opens', alice.page.locator(testid('wb-image-picker')).waitFor());
  await alice.page.setInputFiles(testid('wb-image-upload'), { name: 'red.png', mimeType: 'image/png', buffer: RED_PIXEL_PNG });
  await until(alice.page, 'the upload is in the file drop', () => window.ting.collab.files().some((f) => f.name === 'red.png'), undefined, 20_000);
  const file = await alice.page.evaluate(() => window.ting.collab.files().find((f) => f.name === 'red.png'));
  assert.equal(file.mime, 'image/png');
  await within(10_000, 'the uploaded image is picked',
    alice.page.locator(`${testid('wb-image-option')}[data-file-id="${file.id}"][aria-pressed="true"]`).waitFor());
  await alice.page.mouse.click(box.x + 250, box.y + 150);
  await until(alice.page, 'Alice\'s image is stored', (id) =>
    window.ting.collab.whiteboardElements().some((e) => e.type === 'image' && e.file_id === id && e.created_seq > 0), file.id);
  const image = await alice.page.evaluate((id) => window.ting.collab.whiteboardElements().find((e) => e.file_id === id), file.id);
  assert.deepEqual([image.width, image.height], [1, 1], 'placed at its natural size');

  await until(bob.page, 'Bob\'s whiteboard has the image', ({ id, file }) =>
    window.ting.collab.whiteboardElements().some((e) => e.id === id && e.type === 'image' && e.file_id === file), { id: image.id, file: file.id });
  await until(bob.page, 'Bob\'s canvas draws the red pixel', ({ x, y }) => {
    const canvas = document.querySelector('[data-testid="whiteboard-canvas"]');
    const dpr = canvas.width / canvas.getBoundingClientRect().width;
    const [r, g, b] = canvas.getContext('2d').getImageData(Math.floor((x + 0.5) * dpr), Math.floor((y + 0.5) * dpr), 1, 1).data;
    return r > 200 && g < 60 && b < 60;
  }, { x: image.x, y: image.y });
});

setTimeout(() => {
  console.error(`e2e: exceeded ${FILE_BUDGET_MS} ms, aborting`);
  server?.kill();
  process.exit(1);
}, FILE_BUDGET_MS).unref();
