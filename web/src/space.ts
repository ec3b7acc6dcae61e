// A team space: a room's chat, whiteboard, board and files without the meeting (no camera, no
// microphone), on a collab-only WebSocket session: `collab_join` instead of `join`. A reconnect
// simply joins again; the collab client catches up from the last seq of every object.

import { CollabClient } from './collab.js';
import { Signalling, type SignallingEnd } from './signalling.js';
import type { Banners } from './ui/banners.js';
import { CollabPanel } from './ui/collabpanel.js';
import { h } from './ui/dom.js';

export interface SpaceHooks {
  root: HTMLElement;
  banners: Banners;
  setState(state: 'joining' | 'space' | 'reconnecting' | 'ended'): void;
  /** The panel behind `window.ting.collab` (null once the space is closed). */
  setPanel(panel: CollabPanel | null): void;
  /** Shows why the space closed, with ways on. */
  ended(end: SignallingEnd, reopen: () => void): void;
}

const NOTICE_MS = 12_000;

export function startSpace(token: string, room: string, hooks: SpaceHooks): void {
  const { root, banners } = hooks;
  hooks.setState('joining');
  const status = h('span', { className: 'status', role: 'status' }, 'Connecting…');
  const title = h('h1', { className: 'room-name' }, room);
  const close = (end: SignallingEnd) => {
    hooks.setPanel(null);
    hooks.setState('ended');
    banners.clearAll();
    hooks.ended(end, () => startSpace(token, room, hooks));
  };
  const sig = new Signalling(Signalling.urlFor(location), token, {
    joined: () => undefined, // only meetings answer `join`
    collabJoined: (msg) => {
      banners.hide('connection');
      client.joined({ identity: msg.identity, name: msg.name }, msg.moderator);
      panel.room = msg.room;
      title.textContent = msg.room;
      status.textContent = 'Connected';
      hooks.setState('space');
    },
    waiting: () => undefined,
    message: (msg) => void client.handle(msg),
    reconnecting: () => {
      status.textContent = 'Reconnecting…';
      hooks.setState('reconnecting');
      banners.show('connection', 'Lost the connection to the server. Reconnecting…', 'warning');
    },
    resumeFailed: () => undefined,
    ended: close,
  }, room, true);
  const client = new CollabClient(sig);
  const panel = new CollabPanel(client, token, (text) => banners.show('collab', text, 'warning', [], NOTICE_MS), true);
  panel.room = room;
  hooks.setPanel(panel);

  const leave = h('button', { id: 'leave-space', type: 'button', className: 'small', onclick: () => (sig.close(), close({ kind: 'left' })) }, 'Leave');
  root.replaceChildren(
    h('div', { className: 'space', id: 'space' },
      h('header', { className: 'meeting-header' },
        h('span', { className: 'brand small' }, 'Ting'), title, h('span', { className: 'space-tag' }, 'Team space'), status,
        h('a', { className: 'button-link small', id: 'space-to-meeting', href: `/?room=${encodeURIComponent(room)}` }, 'Join the video meeting'),
        leave),
      panel.el),
  );
  window.addEventListener('pagehide', () => sig.close(), { once: true });
  sig.start();
}
