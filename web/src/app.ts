// Wiring: landing → device check → meeting, and the banners that explain what goes wrong.

import { getConfig, tokenClaims } from './api.js';
import { acquire, describeMediaError } from './media.js';
import { describeLeaveReason, type JoinedMessage } from './protocol.js';
import { Session, type LocalMedia, type SessionListener } from './session.js';
import { Signalling, type SignallingEnd } from './signalling.js';
import { Banners } from './ui/banners.js';
import { showDeviceCheck } from './ui/devicecheck.js';
import { h } from './ui/dom.js';
import { showLanding } from './ui/landing.js';
import { MeetingView } from './ui/meeting.js';

type AppState = 'landing' | 'device-check' | 'joining' | 'joined' | 'reconnecting' | 'ended';

declare global {
  interface Window {
    /** Hooks for tests and debugging. */
    ting: {
      readonly pc: RTCPeerConnection | null;
      readonly participantId: number | null;
      readonly state: AppState;
      readonly session: Session | null;
    };
  }
}

const root = document.getElementById('app') as HTMLElement;
const banners = new Banners(document.getElementById('banners') as HTMLElement);

let state: AppState = 'landing';
let session: Session | null = null;
let signalling: Signalling | null = null;
let view: MeetingView | null = null;
let renderQueued = false;

window.ting = {
  get pc() {
    return session?.pc ?? null;
  },
  get participantId() {
    return session?.self.id ?? null;
  },
  get state() {
    return state;
  },
  get session() {
    return session;
  },
};

function setState(next: AppState): void {
  state = next;
  document.body.dataset.state = next;
  updateStatus();
}

function updateStatus(): void {
  if (!view) return;
  const media = session?.mediaStatus;
  view.setStatus(
    state === 'reconnecting'
      ? 'Reconnecting…'
      : media === 'connected'
        ? 'Connected'
        : media === 'new'
          ? 'Connected' // nothing to send or receive yet
          : media === 'failed'
          ? 'Media failed'
          : media === 'disconnected'
            ? 'Media interrupted'
            : 'Connecting…',
  );
}

/** Renders once per burst of changes (a `joined` snapshot fires many). */
function scheduleRender(): void {
  if (renderQueued) return;
  renderQueued = true;
  queueMicrotask(() => {
    renderQueued = false;
    if (session && view) view.render(session);
    updateStatus();
  });
}

const listener: SessionListener = {
  changed: scheduleRender,
  problem(key, message, level = 'warning') {
    if (message) banners.show(key, message, level);
    else banners.hide(key);
  },
};

function watchDevice(track: MediaStreamTrack | null, what: 'camera' | 'microphone'): void {
  track?.addEventListener('ended', () => {
    if (state === 'ended') return;
    banners.show(`device-${what}`, `Your ${what} stopped working (unplugged or taken by another application).`, 'error');
  });
}

function params(): { room: string; token: string } {
  const query = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  return {
    room: query.get('room') ?? hash.get('room') ?? '',
    token: query.get('token') ?? hash.get('token') ?? '',
  };
}

function showCard(title: string, text: string, ...actions: HTMLElement[]): void {
  root.replaceChildren(
    h(
      'main',
      { className: 'card message-card', 'aria-labelledby': 'card-title' },
      h('h1', { id: 'card-title' }, title),
      h('p', { id: 'card-text' }, text),
      actions.length > 0 && h('div', { className: 'actions' }, ...actions),
    ),
  );
}

function toDeviceCheck(token: string, room: string, name: string, back: (() => void) | null): void {
  setState('device-check');
  showDeviceCheck(root, { room, name, onBack: back, onJoin: (media) => startMeeting(token, room, name, media) });
}

function startMeeting(token: string, room: string, name: string, local: LocalMedia): void {
  setState('joining');
  banners.clearAll();
  showCard('Joining…', `Connecting to room ${room}.`);
  watchDevice(local.microphone, 'microphone');
  watchDevice(local.camera, 'camera');
  let media = local;

  const onJoined = (msg: JoinedMessage) => {
    banners.hide('connection');
    if (session && msg.resumed) {
      session.resumed(msg);
    } else {
      if (session) {
        // The server forgot us: start over on a new peer connection, with the same devices.
        media = carryMedia(session);
        session.close(false);
      }
      view ??= new MeetingView(root, actions);
      session = new Session(sig, msg, media, listener);
      const v = view;
      session.tileHeight = (id) => v.tileHeight(id);
      if (!session.canPublish) {
        banners.show('role', `You joined as ${msg.participant.role}: you can watch and listen.`, 'info');
      }
    }
    setState('joined');
    scheduleRender();
  };

  const actions = {
    toggleMic: () => void toggleDevice('microphone'),
    toggleCamera: () => void toggleDevice('camera'),
    toggleScreen: () => void toggleScreen(),
    leave: () => signalling?.leave(),
  };

  const sig = new Signalling(Signalling.urlFor(location), token, {
    joined: onJoined,
    message: (msg) => session?.handle(msg),
    reconnecting: (attempt) => {
      if (session) setState('reconnecting');
      session?.disconnected();
      banners.show(
        'connection',
        session ? 'Lost the connection to the server. Reconnecting…' : 'Cannot reach the server. Retrying…',
        'warning',
      );
      if (attempt > 1) console.info(`ting: reconnect attempt ${attempt}`);
    },
    resumeFailed: () => banners.show('connection', 'Rejoining the meeting…', 'warning'),
    ended: (end) => endMeeting(end, () => toDeviceCheck(token, room, name, null)),
  }, room);
  signalling = sig;
  sig.start();
}

/** The devices of a session being replaced, kept running for the next one. */
function carryMedia(s: Session): LocalMedia {
  return {
    microphone: s.localTrack('microphone'),
    camera: s.localTrack('camera'),
    micMuted: s.isMuted('microphone'),
    cameraMuted: s.isMuted('camera'),
  };
}

function endMeeting(end: SignallingEnd, rejoin: () => void): void {
  setState('ended');
  session?.close();
  session = null;
  view?.destroy();
  view = null;
  signalling = null;
  banners.clearAll();
  const again = h('button', { id: 'rejoin', type: 'button', className: 'primary', onclick: rejoin }, 'Rejoin');
  const home = h('a', { href: '/', className: 'button-link' }, 'Start page');
  switch (end.kind) {
    case 'left':
      return showCard('You left the meeting', 'See you next time.', again, home);
    case 'bye':
      return showCard('The meeting ended for you', describeLeaveReason(end.reason), again, home);
    case 'gave_up':
      return showCard(
        'Connection lost',
        'Could not reconnect to the server in time. Check your network, then rejoin.',
        again,
        home,
      );
    case 'error':
      return showCard('Could not join', errorText(end.code, end.message), home);
  }
}

function errorText(code: string, message: string): string {
  switch (code) {
    case 'token_expired':
      return 'This invite link has expired. Ask for a new one.';
    case 'invalid_token':
      return 'This invite link is not valid. Check that it was copied completely.';
    case 'wrong_room':
      return 'This invite link is for a different room.';
    case 'unsupported_version':
      return 'This page is out of date for the server. Reload the page.';
    default:
      return message || `The server refused to let you join (${code}).`;
  }
}

async function toggleDevice(kind: 'microphone' | 'camera'): Promise<void> {
  const s = session;
  if (!s) return;
  if (s.localTrack(kind)) {
    s.setMuted(kind, !s.isMuted(kind));
    return;
  }
  // Joined without this device: open it now.
  const got = await acquire({ [kind]: true });
  const track = got[kind];
  if (!track) {
    banners.show(`device-${kind}`, got.errors[kind] ?? `Could not start the ${kind}.`, 'error');
    return;
  }
  if (session !== s) {
    track.stop();
    return;
  }
  banners.hide(`device-${kind}`);
  watchDevice(track, kind);
  s.addDevice(kind, track);
}

async function toggleScreen(): Promise<void> {
  const s = session;
  if (!s) return;
  if (s.sharingScreen) {
    s.stopScreenShare();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: true });
    if (session !== s) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    banners.hide('screen');
    s.startScreenShare(stream);
  } catch (err) {
    const cancelled = err instanceof DOMException && err.name === 'NotAllowedError';
    banners.show('screen', describeMediaError(err, 'screen'), cancelled ? 'info' : 'error');
  }
}

async function main(): Promise<void> {
  const { room, token } = params();
  // Best effort: tell the server we are gone so others don't wait out the resume grace period.
  window.addEventListener('pagehide', () => signalling?.leave());
  if (token) {
    // An invite link: the token already names the room and the person.
    const claims = tokenClaims(token);
    const name = String(claims['name'] ?? claims['sub'] ?? 'Guest');
    toDeviceCheck(token, room || String(claims['room'] ?? ''), name, null);
    return;
  }
  const config = await getConfig().catch(() => null);
  const landing = () => {
    setState('landing');
    showLanding(root, {
      room,
      name: localStorage.getItem('ting.name') ?? '',
      config,
      onToken: (tok, joinedRoom, name) => {
        localStorage.setItem('ting.name', name);
        toDeviceCheck(tok, joinedRoom, name, landing);
      },
    });
  };
  landing();
}

void main();
