// Wiring: landing → device check → meeting, and the banners that explain what goes wrong.

import { getConfig, listRecordings, recordingFileUrl, tokenClaims } from './api.js';
import { CollabClient } from './collab.js';
import { acquire, describeMediaError } from './media.js';
import { describeRoleChange, Moderation, type ModerationListener } from './moderation.js';
import { describeLeaveReason, mayPublish, moderates, type JoinedMessage, type Role } from './protocol.js';
import { Session, type LocalMedia, type SessionListener } from './session.js';
import { Signalling, type SignallingEnd } from './signalling.js';
import { startSpace } from './space.js';
import { Banners } from './ui/banners.js';
import { CollabPanel, type CollabView } from './ui/collabpanel.js';
import { showDeviceCheck } from './ui/devicecheck.js';
import { h } from './ui/dom.js';
import { showLanding } from './ui/landing.js';
import { MeetingView } from './ui/meeting.js';

type AppState = 'landing' | 'device-check' | 'joining' | 'waiting' | 'joined' | 'reconnecting' | 'ended' | 'space';

declare global {
  interface Window {
    /** Hooks for tests and debugging. */
    ting: {
      readonly pc: RTCPeerConnection | null;
      readonly participantId: number | null;
      readonly state: AppState;
      readonly session: Session | null;
      readonly moderation: Moderation | null;
      /** The WebSocket URL in use (in a cluster, the node that serves the room). */
      readonly signallingUrl: string | null;
      /** Chat, whiteboard, board and files as the page has them (null before joining). */
      readonly collab: CollabView | null;
      /** Whether the meeting is being recorded (false outside a meeting). */
      readonly recording: boolean;
    };
  }
}

const root = document.getElementById('app') as HTMLElement;
const banners = new Banners(document.getElementById('banners') as HTMLElement);

let state: AppState = 'landing';
let session: Session | null = null;
let signalling: Signalling | null = null;
let view: MeetingView | null = null;
let moderation: Moderation | null = null;
/** The collaboration panels: one per meeting (kept across rejoins), or the team space's. */
let collabPanel: CollabPanel | null = null;
let renderQueued = false;
/** How long a passing notice (role change, moderator action) stays up. */
const NOTICE_MS = 12_000;

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
  get moderation() {
    return moderation;
  },
  get signallingUrl() {
    return signalling?.currentUrl ?? null;
  },
  get collab() {
    return collabPanel?.view() ?? null;
  },
  get recording() {
    return moderation?.recording ?? false;
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
    if (session && view && moderation) view.render(session, moderation);
    updateStatus();
  });
}

const listener: SessionListener = {
  changed: scheduleRender,
  problem(key, message, level = 'warning') {
    if (message) banners.show(key, message, level);
    else banners.hide(key);
  },
  roleChanged(before: Role, after: Role) {
    banners.hide('publish');
    banners.show('role', describeRoleChange(before, after), 'info', [], NOTICE_MS);
    const s = session;
    if (collabPanel) collabPanel.client.moderator = moderates(after);
    if (s && !mayPublish(before) && mayPublish(after)) void publishAfterPromotion(s);
    if (!mayPublish(after)) banners.hide('screen');
  },
};

/** Notices about what the participants panel shows anyway. */
const PANEL_NOTICES = new Set(['hands', 'lobby']);

const moderationListener: ModerationListener = {
  changed: scheduleRender,
  notice(key, text, level = 'info', actions = []) {
    // Hands and the lobby are in plain sight while the participants panel is open.
    if (!text || (PANEL_NOTICES.has(key) && view?.panelOpen)) return banners.hide(key);
    const run = actions.map((a) => ({ label: a.label, run: () => (banners.hide(key), a.run()) }));
    // Lobby and hand notices stay until handled; moderator actions on oneself pass.
    banners.show(key, text, level, run, key === 'moderated' ? NOTICE_MS : undefined);
  },
  showPanel: () => view?.openPanel(),
};

/** What the device check opened, so a promoted attendee can start the same devices. */
interface DeviceChoice {
  microphone: string | true | null;
  camera: string | true | null;
  micMuted: boolean;
}

let deviceChoice: DeviceChoice = { microphone: null, camera: null, micMuted: false };

function rememberDevices(local: LocalMedia): DeviceChoice {
  const id = (t: MediaStreamTrack | null) => (t ? t.getSettings().deviceId || true : null);
  return { microphone: id(local.microphone), camera: id(local.camera), micMuted: local.micMuted };
}

/** An attendee became a speaker: publish the microphone and camera allowed in the device check. */
async function publishAfterPromotion(s: Session): Promise<void> {
  const choice = deviceChoice;
  const kinds = (['microphone', 'camera'] as const).filter((k) => choice[k] !== null && !s.localTrack(k));
  if (kinds.length === 0) return;
  const want: { microphone?: string | true; camera?: string | true } = {};
  for (const k of kinds) want[k] = choice[k] ?? true;
  let got = await acquire(want);
  for (const k of kinds) {
    // The chosen device may be gone: any device of the kind will do.
    if (!got[k] && typeof want[k] === 'string') {
      const retry = await acquire({ [k]: true });
      got = { ...got, [k]: retry[k], errors: { ...got.errors, [k]: retry.errors[k] } };
    }
  }
  for (const k of kinds) {
    const track = got[k];
    if (!track) {
      banners.show(`device-${k}`, got.errors[k] ?? `Could not start the ${k}.`, 'error');
      continue;
    }
    if (session !== s || !s.canPublish) {
      track.stop();
      continue;
    }
    watchDevice(track, k);
    s.addDevice(k, track, k === 'microphone' && choice.micMuted);
  }
}

function watchDevice(track: MediaStreamTrack | null, what: 'camera' | 'microphone'): void {
  track?.addEventListener('ended', () => {
    if (state === 'ended') return;
    banners.show(`device-${what}`, `Your ${what} stopped working (unplugged or taken by another application).`, 'error');
  });
}

function params(): { room: string; token: string; space: string | null } {
  const query = new URLSearchParams(location.search);
  const hash = new URLSearchParams(location.hash.replace(/^#/, ''));
  return {
    room: query.get('room') ?? hash.get('room') ?? '',
    token: query.get('token') ?? hash.get('token') ?? '',
    // `?space=<room>` (or `#space=<room>`): the room's team space instead of its meeting.
    space: query.get('space') ?? hash.get('space'),
  };
}

/** A room's team space (chat, whiteboard, board, files; no media). */
function openSpace(token: string, room: string): void {
  banners.clearAll();
  startSpace(token, room, {
    root,
    banners,
    setState,
    setPanel: (panel) => (collabPanel = panel),
    ended: (end, reopen) => {
      const again = h('button', { id: 'rejoin', type: 'button', className: 'primary', onclick: reopen }, 'Open again');
      const home = h('a', { href: '/', className: 'button-link' }, 'Start page');
      if (end.kind === 'left') return showCard('You left the team space', 'Everything stays here for next time.', again, home);
      if (end.kind === 'error') return showCard('Could not open the team space', errorText(end.code, end.message), home);
      showCard('Connection lost', 'Could not reach the server in time. Check your network, then try again.', again, home);
    },
  });
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
  deviceChoice = rememberDevices(local);
  let media = local;

  /** The server forgot us (or sent us to the lobby): drop the session, keep the devices. */
  const dropSession = () => {
    if (!session) return;
    media = carryMedia(session);
    session.close(false);
    session = null;
    moderation = null;
  };

  const onJoined = (msg: JoinedMessage) => {
    banners.hide('connection');
    banners.hide('lobby-wait');
    if (session && moderation && msg.resumed) {
      session.resumed(msg);
      moderation.resumed(msg);
    } else {
      // A fresh participant (maybe after the server forgot us): a new peer connection.
      dropSession();
      if (!view) {
        view = new MeetingView(root, actions);
        if (collabPanel) view.addSidePanel(collabPanel.el, collabPanel.toggle);
      }
      const s = new Session(sig, msg, media, listener);
      const m = new Moderation(sig, s, msg, moderationListener);
      const v = view;
      s.tileHeight = (id) => v.tileHeight(id);
      s.unmuteLocked = (kind) => m.unmuteLocked(kind);
      session = s;
      moderation = m;
      if (!s.canPublish) {
        const role = msg.participant.role === 'attendee' ? 'an attendee' : `a ${msg.participant.role}`;
        banners.show('role', `You joined as ${role}: you can watch and listen. Raise your hand to ask to speak.`, 'info');
      }
    }
    // Chat, whiteboard, board, files: follow again from the last seq seen, resend unacknowledged writes.
    collab.joined({ identity: msg.participant.identity, name: msg.participant.name }, moderates(msg.participant.role));
    if (!collabPanel) {
      collabPanel = new CollabPanel(collab, token, (text) => banners.show('collab', text, 'warning', [], NOTICE_MS));
      view?.addSidePanel(collabPanel.el, collabPanel.toggle);
    }
    collabPanel.room = msg.room;
    setState('joined');
    scheduleRender();
  };

  const onWaiting = (waitingRoom: string) => {
    // A rejoin can land in the lobby too: the old session's media is of no use there.
    dropSession();
    view?.destroy();
    view = null;
    banners.clearAll();
    setState('waiting');
    showWaiting(waitingRoom || room);
  };

  const actions = {
    toggleMic: () => void toggleDevice('microphone'),
    toggleCamera: () => void toggleDevice('camera'),
    toggleScreen: () => void toggleScreen(),
    toggleHand: () => moderation?.raiseHand(!moderation.handRaised),
    leave: () => signalling?.leave(),
    panelToggled: (open: boolean) => {
      if (open) for (const key of PANEL_NOTICES) banners.hide(key);
    },
    recordings: {
      // The room the server put us in (an invite link may not name it).
      list: () => listRecordings(session?.room ?? room, token),
      url: (id: string, file: string) => recordingFileUrl(session?.room ?? room, id, file, token),
    },
  };

  const sig = new Signalling(Signalling.urlFor(location), token, {
    joined: onJoined,
    waiting: onWaiting,
    message: (msg) => {
      if (collab.handle(msg)) return;
      session?.handle(msg);
      moderation?.handle(msg);
    },
    reconnecting: (attempt) => {
      if (state === 'waiting') {
        // Back to the end of the queue: the lobby does not keep places for dropped sockets.
        banners.show('lobby-wait', 'Lost the connection to the server. Reconnecting…', 'warning');
        return;
      }
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
  const collab = new CollabClient(sig);
  collabPanel = null;
  signalling = sig;
  sig.start();
}

function showWaiting(room: string): void {
  const leave = h('button', { id: 'leave-lobby', type: 'button', onclick: () => signalling?.leave() }, 'Leave');
  root.replaceChildren(
    h(
      'main',
      { id: 'waiting', className: 'card message-card waiting', 'aria-labelledby': 'card-title', 'aria-describedby': 'card-text' },
      h('div', { className: 'waiting-dots', 'aria-hidden': 'true' }, h('span', {}), h('span', {}), h('span', {})),
      h('h1', { id: 'card-title', role: 'status' }, 'Waiting for a moderator to let you in…'),
      h('p', { id: 'card-text' }, 'You are in the lobby of ', h('strong', {}, room), '. The meeting opens here as soon as a moderator admits you.'),
      h('div', { className: 'actions' }, leave),
    ),
  );
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
  moderation = null;
  collabPanel = null;
  view?.destroy();
  view = null;
  signalling = null;
  banners.clearAll();
  const button = (label: string) => h('button', { id: 'rejoin', type: 'button', className: 'primary', onclick: rejoin }, label);
  const again = button('Rejoin');
  const home = h('a', { href: '/', className: 'button-link' }, 'Start page');
  switch (end.kind) {
    case 'left':
      return showCard('You left the meeting', 'See you next time.', again, home);
    case 'bye':
      if (end.reason === 'removed') {
        return showCard('You were removed from the meeting', 'A moderator removed you. You cannot rejoin this meeting.', home);
      }
      if (end.reason === 'denied') {
        return showCard('The moderator did not let you in', 'You were not admitted from the lobby.', button('Ask again'), home);
      }
      return showCard('The meeting ended for you', describeLeaveReason(end.reason), again, home);
    case 'gave_up':
      return showCard(
        'Connection lost',
        'Could not reconnect to the server in time. Check your network, then rejoin.',
        again,
        home,
      );
    case 'error':
      if (end.code === 'room_locked') {
        return showCard(
          'This meeting is locked',
          'Nobody new can join right now. Ask the host to unlock it, then try again.',
          button('Try again'),
          home,
        );
      }
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
    case 'room_locked':
      return 'This meeting is locked.';
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
  const { room, token, space } = params();
  // Best effort: tell the server we are gone so others don't wait out the resume grace period.
  window.addEventListener('pagehide', () => signalling?.leave());
  if (token && space !== null) {
    openSpace(token, space || String(tokenClaims(token)['room'] ?? ''));
    return;
  }
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
      room: space || room,
      name: localStorage.getItem('ting.name') ?? '',
      config,
      preferSpace: space !== null,
      onToken: (tok, joinedRoom, name, mode) => {
        localStorage.setItem('ting.name', name);
        if (mode === 'space') openSpace(tok, joinedRoom);
        else toDeviceCheck(tok, joinedRoom, name, landing);
      },
    });
  };
  landing();
}

void main();
