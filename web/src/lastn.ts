// Last-N video: which remote cameras to receive when there are more than we want to decode.
// A pure function, so it can be tested without a browser (e2e/lastn.test.mjs).

/** At most this many remote cameras are received at once; screen shares don't count. */
export const MAX_VIDEO_TILES = 16;

/**
 * Picks up to `cap` of `candidates` (participant ids with a camera worth receiving, in roster
 * order): the pinned one first, then the most recent speakers (`recent`, most recent first),
 * then those already shown (`current`), so that nothing moves while nothing changed, then the
 * rest in roster order. Returns the chosen ids in that order of priority.
 */
export function selectVideos<Id>(
  candidates: readonly Id[],
  pinned: Id | null,
  recent: readonly Id[],
  cap: number,
  current: Iterable<Id> = [],
): Id[] {
  const allowed = new Set(candidates);
  const shown = new Set(current);
  const chosen = new Set<Id>();
  const take = (id: Id) => {
    if (chosen.size < cap && allowed.has(id)) chosen.add(id);
  };
  if (pinned !== null) take(pinned);
  for (const id of recent) take(id);
  for (const id of candidates) if (shown.has(id)) take(id);
  for (const id of candidates) take(id);
  return [...chosen];
}

/** Moves `id` to the front of the recency list `recent` (most recent first), in place. */
export function noteSpeaker<Id>(recent: Id[], id: Id): void {
  const i = recent.indexOf(id);
  if (i === 0) return;
  if (i > 0) recent.splice(i, 1);
  recent.unshift(id);
}
