// Unit checks of the last-N video selection (the pure function in src/lastn.ts, compiled to
// dist/lastn.js by `npm run build`); no browser or server needed.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_VIDEO_TILES, noteSpeaker, selectVideos } from '../dist/lastn.js';

const range = (n, from = 1) => Array.from({ length: n }, (_, i) => from + i);
const sorted = (ids) => [...ids].sort((a, b) => a - b);

test('under the cap, everybody is received', () => {
  assert.deepEqual(selectVideos([1, 2, 3], null, [], MAX_VIDEO_TILES), [1, 2, 3]);
  assert.equal(MAX_VIDEO_TILES, 16);
});

test('over the cap: pinned, then recent speakers, then roster order', () => {
  const people = range(50);
  const got = selectVideos(people, 40, [30, 45, 2], 16);
  assert.equal(got.length, 16);
  assert.deepEqual(got.slice(0, 4), [40, 30, 45, 2]);
  assert.deepEqual(got.slice(4), [1, ...range(11, 3)]);
});

test('those already shown stay while nothing changed, whatever the roster order', () => {
  const people = range(50);
  const shown = range(16, 20);
  assert.deepEqual(sorted(selectVideos(people, null, [], 16, shown)), shown);
  // A speaker who is already shown changes nothing; a new one replaces one of the others.
  assert.deepEqual(sorted(selectVideos(people, null, [25], 16, shown)), shown);
  const next = selectVideos(people, null, [3], 16, shown);
  assert.ok(next.includes(3));
  assert.equal(next.filter((id) => shown.includes(id)).length, 15);
});

test('only candidates are chosen: left, muted or camera-less ids are skipped', () => {
  assert.deepEqual(selectVideos([1, 2], 9, [8, 2], 16), [2, 1]);
  assert.deepEqual(selectVideos([], 1, [1], 16), []);
});

test('noteSpeaker keeps a most-recent-first list without duplicates', () => {
  const recent = [];
  for (const id of [1, 2, 3, 2, 1]) noteSpeaker(recent, id);
  assert.deepEqual(recent, [1, 2, 3]);
});
