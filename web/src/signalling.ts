// The signalling WebSocket: joins, keeps the socket alive, and resumes the same participant
// after an unexpected drop. It knows nothing about media; it hands messages to its handlers.

import {
  PROTOCOL_VERSION,
  type ClientMessage,
  type CollabJoinedMessage,
  type ErrorCode,
  type JoinedMessage,
  type LeaveReason,
  type ServerMessage,
} from './protocol.js';

/** Why the signalling session ended for good (no more reconnects). */
export type SignallingEnd =
  | { kind: 'bye'; reason: LeaveReason }
  | { kind: 'error'; code: ErrorCode; message: string }
  | { kind: 'gave_up' }
  | { kind: 'left' };

export interface SignallingHandlers {
  /** A `joined` arrived: first join, a resume (`msg.resumed`), or a fresh join after a failed resume. */
  joined(msg: JoinedMessage): void;
  /** Collab-only sessions: `collab_joined` arrived (again after every reconnect). */
  collabJoined?(msg: CollabJoinedMessage): void;
  /** The room's lobby is on: wait until a moderator admits (`joined` follows) or denies (`ended`). */
  waiting(room: string): void;
  /** Any other server message once joined (pongs are handled here). */
  message(msg: ServerMessage): void;
  /** The socket dropped unexpectedly; a reconnect is scheduled in `delayMs`. */
  reconnecting(attempt: number, delayMs: number): void;
  /** The server no longer knows us (grace period over): the next `joined` is a fresh participant. */
  resumeFailed(): void;
  ended(end: SignallingEnd): void;
}

const PING_INTERVAL_MS = 10_000;
/** A socket that heard nothing (not even a pong) for this long is treated as dead. */
const SILENCE_LIMIT_MS = 25_000;
const FIRST_BACKOFF_MS = 500;
/** Used until the server told us its grace period (e.g. when the very first connect fails). */
const DEFAULT_GRACE_SECS = 30;
/** A team space has no participant to lose: it keeps trying for longer. */
const COLLAB_GRACE_SECS = 600;
/** How many `moved` answers one join follows. */
const MAX_MOVES = 3;
/**
 * Failed reconnects to the node we were moved to before going back to our origin: none. The
 * origin sends us straight back if that node is alive (our resume still works there), and
 * finds the meeting elsewhere if it is not.
 */
const FAILOVER_AFTER_ATTEMPTS = 0;
/** Spread of the retries of many clients who lost the same node. */
const RETRY_JITTER_MS = 250;
/** Delay before going back to the origin: it answers at once whatever became of the node. */
const FAILOVER_BACKOFF_MS = 100;
/** Errors that answer `join` and make retrying pointless. */
const FATAL_JOIN_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'invalid_token',
  'token_expired',
  'wrong_room',
  'unsupported_version',
  'not_allowed',
  'bad_message',
  'room_locked',
]);

export class Signalling {
  private ws: WebSocket | null = null;
  private joinedOnSocket = false;
  /** In the lobby on the current socket: only `ping` and `leave` make sense. */
  private waitingOnSocket = false;
  private resumeToken: string | null = null;
  private graceSecs = DEFAULT_GRACE_SECS;
  private attempt = 0;
  /** When the current outage began; reconnecting stops once it exceeds the grace period. */
  private outageSince: number | null = null;
  private reconnectTimer: number | undefined;
  private pingTimer: number | undefined;
  private lastHeard = 0;
  private nonce = 0;
  private finished = false;

  /** `moved` answers followed since the last successful join (a loop would be a misconfigured cluster). */
  private moves = 0;
  /** Where this page's signalling started (in a cluster, often a load balancer). */
  private readonly origin: string;

  constructor(
    private url: string,
    private readonly token: string,
    private readonly handlers: SignallingHandlers,
    /** The room the user means to join; the server refuses a token for another room. */
    private readonly room?: string,
    /** A team space: `collab_join` instead of `join` (no media, no resume token: collab catches up by seq). */
    private readonly collabOnly = false,
  ) {
    this.origin = url;
    if (collabOnly) this.graceSecs = COLLAB_GRACE_SECS;
  }

  /** The WebSocket URL in use: where the last `moved` sent us, or where we started. */
  get currentUrl(): string {
    return this.url;
  }

  static urlFor(location: Location): string {
    return `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`;
  }

  start(): void {
    this.open();
  }

  /** True while a joined socket is open: messages sent now reach the server. */
  get connected(): boolean {
    return this.joinedOnSocket && this.ws?.readyState === WebSocket.OPEN;
  }

  /** Sends if connected; otherwise drops the message (the session resends its state after a resume). */
  send(msg: ClientMessage): boolean {
    if (!this.connected || !this.ws) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /** Leaves the room (or the lobby): the server answers `bye` and closes; don't wait for it forever. */
  leave(): void {
    if (this.finished) return;
    const sent = this.send({ type: 'leave' }) || this.sendWhileWaiting({ type: 'leave' });
    this.finish({ kind: 'left' }, sent ? 1500 : 0);
  }

  /** Stops everything without telling the server (page teardown, fatal client error). */
  close(): void {
    this.finish({ kind: 'left' }, 0, false);
  }

  private sendWhileWaiting(msg: ClientMessage): boolean {
    if (!this.waitingOnSocket || this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  private open(): void {
    clearTimeout(this.reconnectTimer);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    this.joinedOnSocket = false;
    this.waitingOnSocket = false;
    ws.onopen = () => {
      this.lastHeard = Date.now();
      if (this.collabOnly) {
        ws.send(JSON.stringify({ type: 'collab_join', version: PROTOCOL_VERSION, token: this.token } satisfies ClientMessage));
        return;
      }
      const join: ClientMessage = { type: 'join', version: PROTOCOL_VERSION, token: this.token };
      if (this.room) join.room = this.room;
      if (this.resumeToken) join.resume = this.resumeToken;
      ws.send(JSON.stringify(join));
    };
    ws.onmessage = (ev) => {
      if (ws !== this.ws) return;
      this.lastHeard = Date.now();
      let msg: ServerMessage;
      try {
        msg = JSON.parse(String(ev.data)) as ServerMessage;
      } catch {
        console.warn('ting: ignoring a non-JSON signalling message');
        return;
      }
      this.onMessage(msg);
    };
    ws.onclose = () => {
      if (ws === this.ws) this.onDrop();
    };
  }

  private onMessage(msg: ServerMessage): void {
    switch (msg.type) {
      case 'waiting':
        // The server took us (no resume token exists before `joined`); the wait may be long.
        this.waitingOnSocket = true;
        this.attempt = 0;
        this.outageSince = null;
        this.startPing();
        this.handlers.waiting(msg.room);
        return;
      case 'moved':
        if (++this.moves > MAX_MOVES) {
          this.finish({ kind: 'error', code: 'unavailable', message: 'the cluster keeps sending this room elsewhere' }, 0, false);
          return;
        }
        // The node that serves this room is elsewhere in the cluster: join there instead. In a
        // meeting this is a node stopping after handing the meeting over: rejoin there as a new
        // participant (the resume token belonged to the old node).
        this.url = msg.url;
        if (this.joinedOnSocket) {
          this.resumeToken = null;
          this.handlers.resumeFailed();
        }
        this.detachSocket();
        this.open();
        return;
      case 'joined':
        this.moves = 0;
        this.waitingOnSocket = false;
        this.joinedOnSocket = true;
        this.resumeToken = msg.resume_token;
        this.graceSecs = msg.resume_grace_secs || DEFAULT_GRACE_SECS;
        this.attempt = 0;
        this.outageSince = null;
        this.startPing();
        this.handlers.joined(msg);
        return;
      case 'collab_joined':
        this.moves = 0;
        this.joinedOnSocket = true;
        this.attempt = 0;
        this.outageSince = null;
        this.startPing();
        this.handlers.collabJoined?.(msg);
        return;
      case 'bye':
        this.finish({ kind: 'bye', reason: msg.reason }, 0, false);
        return;
      case 'pong':
        return;
      case 'error':
        if (!this.joinedOnSocket) {
          this.onJoinError(msg.code, msg.message);
          return;
        }
        break;
    }
    if (this.joinedOnSocket) this.handlers.message(msg);
  }

  private onJoinError(code: ErrorCode, message: string): void {
    if (code === 'resume_failed') {
      // The server forgot us: come back as a new participant on a new socket.
      this.resumeToken = null;
      this.handlers.resumeFailed();
      this.detachSocket();
      this.open();
      return;
    }
    if (FATAL_JOIN_ERRORS.has(code)) {
      this.finish({ kind: 'error', code, message }, 0, false);
      return;
    }
    // 'unavailable', 'internal', ...: worth another try with backoff.
    this.detachSocket();
    this.onDrop();
  }

  private onDrop(): void {
    this.stopPing();
    this.joinedOnSocket = false;
    this.waitingOnSocket = false;
    this.ws = null;
    if (this.finished) return;
    const now = Date.now();
    this.outageSince ??= now;
    const left = this.graceSecs * 1000 - (now - this.outageSince);
    if (left <= 0) {
      this.finish({ kind: 'gave_up' }, 0, false);
      return;
    }
    let backoff = FIRST_BACKOFF_MS * 2 ** this.attempt;
    this.attempt += 1;
    // The node we were moved to is gone (a crash, not a clean stop): go back to where we
    // started, soon; that node finds the meeting (or re-forms it once the dead node's entry
    // expires) and sends us on. Only retries of the origin itself back off further.
    if (this.attempt > FAILOVER_AFTER_ATTEMPTS && this.url !== this.origin) {
      this.url = this.origin;
      backoff = FAILOVER_BACKOFF_MS;
    }
    const delay = Math.min(backoff + Math.random() * RETRY_JITTER_MS, left);
    // A drop is not a redirect loop: count `moved` afresh.
    this.moves = 0;
    this.handlers.reconnecting(this.attempt, delay);
    this.reconnectTimer = window.setTimeout(() => this.open(), delay);
  }

  private startPing(): void {
    this.stopPing();
    this.pingTimer = window.setInterval(() => {
      if (Date.now() - this.lastHeard > SILENCE_LIMIT_MS) {
        // A half-open TCP connection may never fire `close`: drop it ourselves.
        this.detachSocket();
        this.onDrop();
        return;
      }
      const ping: ClientMessage = { type: 'ping', nonce: ++this.nonce };
      if (!this.send(ping)) this.sendWhileWaiting(ping);
    }, PING_INTERVAL_MS);
  }

  private stopPing(): void {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
  }

  /** Forgets the current socket so its late events are ignored, and closes it. */
  private detachSocket(): void {
    const ws = this.ws;
    this.ws = null;
    this.joinedOnSocket = false;
    this.waitingOnSocket = false;
    this.stopPing();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close();
      } catch {
        /* already closed */
      }
    }
  }

  private finish(end: SignallingEnd, closeAfterMs: number, notify = true): void {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.reconnectTimer);
    this.stopPing();
    const ws = this.ws;
    if (closeAfterMs > 0 && ws) {
      // Let the server's `bye` arrive; the socket's close ends it early.
      window.setTimeout(() => ws.close(), closeAfterMs);
    } else {
      this.detachSocket();
    }
    // `close()` is a local teardown: nobody needs to hear about it.
    if (notify || end.kind !== 'left') this.handlers.ended(end);
  }
}
