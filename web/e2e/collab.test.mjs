// End-to-end test of the collaboration add-ons in a meeting: two headless Chromium participants
// chat in a thread, draw on the whiteboard, move a card on the board and share a file.
//
//   TING_BIN=target/debug/ting node --test --test-concurrency=1 web/e2e/collab.test.mjs

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { joinViaLanding, openBrowser, startServer, within } from './harness.mjs';

const TING_BIN = process.env.TING_BIN;
const ROOM = 'e2e-collab';
const FILE_BUDGET_MS = 115_000;

let server = null;
/** @type {Awaited<ReturnType<typeof openBrowser>>[]} */
const people = [];

/** Waits until `fn(arg)` is truthy in the page, naming the step if it never is. */
const until = (page, what, fn, arg, ms = 10_000) =>
  within(ms, what, page.waitForFunction(fn, arg, { timeout: ms + 1000, polling: 100 }));

const testid = (id) => `[data-testid="${id}"]`;

before(async () => {
  assert.ok(TING_BIN, 'TING_BIN is not set: point it at the ting server binary');
  server = await startServer(TING_BIN);
}, { timeout: 35_000 });

after(async () => {
  await Promise.all(people.map((p) => p.close()));
  if (process.exitCode && people.length > 0) console.log(people.flatMap((p) => p.logs).slice(-80).join('\n'));
  if (server) await server.stop();
}, { timeout: 30_000 });

test('two participants chat in a thread, draw, move a card and share a file', { timeout: 100_000 }, async () => {
  people.push(...(await Promise.all(['Alice', 'Bob'].map((n) => openBrowser(n)))));
  const [alice, bob] = people;
  for (const p of people) await within(20_000, `${p.name} joins`, joinViaLanding(p, server.base, ROOM));
  for (const p of people) {
    await p.page.click(testid('collab-toggle'));
    await until(p.page, `${p.name}'s chat is synced`, () => window.ting.collab?.synced('chat'));
  }

  // --- chat: a message, a reply in its thread, seen on both sides ---
  await alice.page.fill(testid('chat-input'), 'Hello from Alice');
  await alice.page.click(testid('chat-send'));
  const rootMsg = bob.page.locator(`${testid('chat-list')} ${testid('chat-message')}`, { hasText: 'Hello from Alice' });
  await within(10_000, 'Bob sees Alice\'s message', rootMsg.waitFor());
  const rootId = Number(await rootMsg.getAttribute('data-id'));
  assert.ok(rootId > 0, 'a message id is its seq');
  await rootMsg.locator(testid('thread-reply')).click();
  await bob.page.fill(testid('thread-input'), 'Reply from Bob');
  await bob.page.click(testid('thread-send'));
  await until(alice.page, 'Alice has Bob\'s reply in the thread',
    (root) => window.ting.collab.chatMessages().some((m) => m.thread === root && m.text === 'Reply from Bob' && m.author.name === 'Bob'), rootId);
  const aliceRoot = alice.page.locator(`${testid('chat-list')} ${testid('chat-message')}[data-id="${rootId}"]`);
  await within(5000, 'Alice\'s message shows one reply', aliceRoot.locator(testid('thread-reply'), { hasText: '1 reply' }).waitFor());
  await aliceRoot.locator(testid('thread-reply')).click();
  await within(5000, 'Alice opens the thread', alice.page.locator(`${testid('thread-list')} ${testid('chat-message')}`, { hasText: 'Reply from Bob' }).waitFor());
  await alice.page.click(testid('thread-close'));

  // --- whiteboard: Alice draws a stroke, Bob gets the element ---
  for (const p of people) {
    await p.page.click(testid('tab-whiteboard'));
    await until(p.page, `${p.name}'s whiteboard is synced`, () => window.ting.collab.synced('whiteboard'));
  }
  await alice.page.click(testid('wb-tool-freedraw'));
  const box = await alice.page.locator(testid('whiteboard-canvas')).boundingBox();
  assert.ok(box && box.width > 100 && box.height > 100, `the canvas has room to draw: ${JSON.stringify(box)}`);
  const { mouse } = alice.page;
  await mouse.move(box.x + 40, box.y + 40);
  await mouse.down();
  await mouse.move(box.x + 120, box.y + 90, { steps: 10 });
  await mouse.move(box.x + 200, box.y + 60, { steps: 10 });
  await mouse.up();
  await until(alice.page, 'Alice\'s stroke is stored', () => {
    const els = window.ting.collab.whiteboardElements();
    return els.length === 1 && els[0].type === 'freedraw' && els[0].points.length > 5 && els[0].created_seq > 0;
  });
  const stroke = await alice.page.evaluate(() => window.ting.collab.whiteboardElements()[0]);
  await until(bob.page, 'Bob\'s whiteboard has Alice\'s stroke',
    (s) => window.ting.collab.whiteboardElements().some((e) => e.id === s.id && e.version === s.version && e.points.length === s.points.length), stroke);

  // --- board: Bob makes two columns and two cards, then moves them; Alice sees the result ---
  await bob.page.click(testid('tab-board'));
  await until(bob.page, 'Bob\'s board is synced', () => window.ting.collab.synced('board'));
  for (const title of ['Todo', 'Done']) {
    await bob.page.fill(testid('board-column-title'), title);
    await bob.page.click(testid('board-add-column'));
    await until(bob.page, `column ${title} exists`, (t) => window.ting.collab.boardColumns().some((c) => c.title === t), title);
  }
  const columns = await bob.page.evaluate(() => window.ting.collab.boardColumns());
  assert.deepEqual(columns.map((c) => c.title), ['Todo', 'Done']);
  const [todo, done] = columns.map((c) => c.id);
  const todoColumn = bob.page.locator(`${testid('board-column')}[data-id="${todo}"]`);
  for (const title of ['Write tests', 'Ship it']) {
    await todoColumn.locator(testid('board-card-title')).fill(title);
    await todoColumn.locator(testid('board-add-card')).click();
    await until(bob.page, `card ${title} exists`, (t) => window.ting.collab.boardCards().some((c) => c.title === t), title);
  }
  const cardId = async (title) => bob.page.evaluate((t) => window.ting.collab.boardCards().find((c) => c.title === t).id, title);
  const [write, ship] = [await cardId('Write tests'), await cardId('Ship it')];
  // Within the column: "Ship it" up, above "Write tests".
  await bob.page.locator(`${testid('board-card')}[data-id="${ship}"] ${testid('card-move-up')}`).click();
  await until(bob.page, 'Ship it is first in Todo', ({ id, col }) => window.ting.collab.boardCards().find((c) => c.column === col)?.id === id, { id: ship, col: todo });
  // Across columns: "Write tests" to Done.
  await bob.page.locator(`${testid('board-card')}[data-id="${write}"] ${testid('card-move-right')}`).click();
  await until(bob.page, 'Write tests is in Done', ({ id, col }) => window.ting.collab.boardCards().some((c) => c.id === id && c.column === col), { id: write, col: done });

  await alice.page.click(testid('tab-board'));
  await until(alice.page, 'Alice sees Ship it alone in Todo and Write tests in Done',
    ({ todo, done, write, ship }) => {
      const cards = window.ting.collab.boardCards();
      const inTodo = cards.filter((c) => c.column === todo).map((c) => c.id);
      const inDone = cards.filter((c) => c.column === done).map((c) => c.id);
      return inTodo.join() === ship && inDone.join() === write;
    }, { todo, done, write, ship });
  await within(5000, 'Alice\'s board shows the card in Done',
    alice.page.locator(`${testid('board-column')}[data-id="${done}"] ${testid('board-card')}[data-id="${write}"]`).waitFor());

  // --- files: Alice uploads, Bob downloads the same bytes; the chat announces the file ---
  const bytes = randomBytes(300 * 1024);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  await alice.page.click(testid('tab-files'));
  await alice.page.setInputFiles(testid('file-input'), { name: 'random.bin', mimeType: 'application/octet-stream', buffer: bytes });
  await until(alice.page, 'Alice\'s file is listed', () => window.ting.collab.files().some((f) => f.name === 'random.bin'), undefined, 20_000);
  const file = await alice.page.evaluate(() => window.ting.collab.files().find((f) => f.name === 'random.bin'));
  assert.equal(file.size, bytes.length);
  assert.equal(file.sha256, sha256, 'the server hashed the bytes sent');

  await bob.page.click(testid('tab-files'));
  const row = bob.page.locator(`${testid('file-row')}[data-id="${file.id}"]`);
  await within(10_000, 'Bob sees the file in the list', row.waitFor());
  const href = await row.locator(testid('file-download')).getAttribute('href');
  const downloaded = await within(15_000, 'Bob downloads the file', bob.page.evaluate(async (url) => {
    const res = await fetch(url);
    if (!res.ok) return { status: res.status };
    const digest = await crypto.subtle.digest('SHA-256', await res.arrayBuffer());
    return { status: res.status, sha256: Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('') };
  }, href));
  assert.deepEqual(downloaded, { status: 200, sha256 });

  await alice.page.click(testid('tab-chat'));
  await until(alice.page, 'the chat announces the upload to its uploader', (id) => window.ting.collab.chatMessages().some((m) => m.file?.id === id), file.id);
  await within(5000, 'the announcement links the file', alice.page.locator(`${testid('chat-file')}[data-file-id="${file.id}"]`).waitFor());
});

setTimeout(() => {
  console.error(`e2e: exceeded ${FILE_BUDGET_MS} ms, aborting`);
  server?.kill();
  process.exit(1);
}, FILE_BUDGET_MS).unref();
