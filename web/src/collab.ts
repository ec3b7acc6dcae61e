// The collaboration client core: follows objects (chat/main, whiteboard/main, ...) on the
// signalling socket, keeps each one's last seq so a reconnect catches up with exactly what was
// missed, and keeps writes until the server acknowledges them (resent with the same op id after
// a reconnect: the server applies each op id once). Panels only see ordered events.

import type { Author, ClientMessage, CollabChannel, CollabErrorCode, CollabEvent, ServerMessage } from './protocol.js';
import type { SignalSender } from './session.js';

export interface ObjectListener {
  /** The object's whole state (a first subscribe, or too much missed for events alone). */
  snapshot(state: unknown): void;
  /** A stored event, in seq order, each exactly once. */
  event(ev: CollabEvent): void;
  /** Cursors, typing: never stored, may be dropped. */
  volatile?(ev: CollabEvent): void;
  /** Up to date: live events follow. */
  synced?(): void;
  /** A failure not tied to one write (e.g. the subscribe was refused). */
  error?(code: CollabErrorCode, message: string): void;
}

export class CollabError extends Error {
  constructor(
    readonly code: CollabErrorCode,
    message: string,
  ) {
    super(message);
  }
}

interface Pending {
  object: CollabObject;
  kind: 'collab' | 'collab_query';
  body: unknown;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

/** How long before a write the server could not store (`unavailable`) is tried again. */
const RETRY_UNAVAILABLE_MS = 2000;

// A per-page prefix plus a counter: unique op ids without a secure context (randomUUID needs one).
const PAGE_ID = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, '0')).join('');
let opCounter = 0;
export const newOpId = (): string => `${PAGE_ID}-${(++opCounter).toString(36)}`;

/** One followed object. */
export class CollabObject {
  /** Last stored event seen (from a snapshot, an event or `collab_synced`). */
  lastSeq: number | null = null;
  synced = false;

  constructor(
    private readonly client: CollabClient,
    readonly channel: CollabChannel,
    readonly name: string,
    readonly listener: ObjectListener,
  ) {}

  /** Sends a command; resolves with its seq once stored, rejects with a CollabError. */
  write(body: Record<string, unknown>): Promise<number> {
    return this.client.request(this, 'collab', body) as Promise<number>;
  }

  query<T>(body: Record<string, unknown>): Promise<T> {
    return this.client.request(this, 'collab_query', body) as Promise<T>;
  }

  /** Best effort, never queued. */
  volatile(body: Record<string, unknown>): void {
    this.client.send({ type: 'collab', channel: this.channel, object: this.name, volatile: true, body });
  }

  /** @internal */
  receive(msg: ServerMessage): void {
    switch (msg.type) {
      case 'collab_snapshot':
        this.lastSeq = msg.seq;
        this.listener.snapshot(msg.state);
        return;
      case 'collab_synced':
        this.lastSeq = Math.max(this.lastSeq ?? 0, msg.seq);
        this.synced = true;
        this.listener.synced?.();
        return;
      case 'collab':
        if (msg.volatile || msg.seq === undefined) {
          this.listener.volatile?.(msg);
          return;
        }
        // A resubscribe may replay what we saw already: each event counts once.
        if (this.lastSeq !== null && msg.seq <= this.lastSeq) return;
        this.lastSeq = msg.seq;
        this.listener.event(msg);
        return;
      case 'collab_error':
        this.listener.error?.(msg.code, msg.message);
        return;
      default:
        return;
    }
  }
}

export class CollabClient {
  private readonly objects = new Map<string, CollabObject>();
  /** Writes and queries not answered yet, in the order they were made (Map keeps it). */
  private readonly pending = new Map<string, Pending>();
  /** Who we are in the room (set on every join). */
  self: Author = { identity: '', name: '' };
  moderator = false;

  constructor(private readonly sig: SignalSender) {}

  /** Follows `channel/name`; calling again returns the same object. */
  subscribe(channel: CollabChannel, name: string, listener: ObjectListener): CollabObject {
    const key = `${channel}/${name}`;
    let obj = this.objects.get(key);
    if (!obj) {
      obj = new CollabObject(this, channel, name, listener);
      this.objects.set(key, obj);
      this.sendSubscribe(obj);
    }
    return obj;
  }

  unsubscribe(obj: CollabObject): void {
    this.objects.delete(`${obj.channel}/${obj.name}`);
    this.send({ type: 'collab_unsubscribe', channel: obj.channel, object: obj.name });
  }

  /**
   * The socket (re)joined — a resume, a fresh join, or a team space reconnect: follow every
   * object again from its last seq, then resend what was never acknowledged.
   */
  joined(self: Author, moderator: boolean): void {
    this.self = self;
    this.moderator = moderator;
    for (const obj of this.objects.values()) {
      obj.synced = false;
      this.sendSubscribe(obj);
    }
    for (const [opId, p] of this.pending) this.sendPending(opId, p);
  }

  /** Routes a server message; false when it is not a collab message. */
  handle(msg: ServerMessage): boolean {
    switch (msg.type) {
      case 'collab_ack':
        this.settle(msg.op_id)?.resolve(msg.seq);
        return true;
      case 'collab_result':
        this.settle(msg.op_id)?.resolve(msg.body);
        return true;
      case 'collab_error': {
        const opId = msg.op_id;
        const p = opId === undefined ? undefined : this.pending.get(opId);
        if (!p || opId === undefined) {
          this.objects.get(`${msg.channel}/${msg.object}`)?.receive(msg);
        } else if (msg.code === 'unavailable') {
          // Not stored: the same op id again later (and after any reconnect) is safe.
          window.setTimeout(() => this.pending.has(opId) && this.sendPending(opId, p), RETRY_UNAVAILABLE_MS);
        } else {
          this.settle(opId)?.reject(new CollabError(msg.code, msg.message));
        }
        return true;
      }
      case 'collab':
      case 'collab_snapshot':
      case 'collab_synced':
        this.objects.get(`${msg.channel}/${msg.object}`)?.receive(msg);
        return true;
      default:
        return false;
    }
  }

  /** @internal */
  request(object: CollabObject, kind: Pending['kind'], body: unknown): Promise<unknown> {
    const opId = newOpId();
    return new Promise((resolve, reject) => {
      const p: Pending = { object, kind, body, resolve, reject };
      this.pending.set(opId, p);
      // Not connected: it goes out with the next join.
      this.sendPending(opId, p);
    });
  }

  /** @internal */
  send(msg: ClientMessage): boolean {
    return this.sig.send(msg);
  }

  isSynced(channel: CollabChannel, name: string): boolean {
    return this.objects.get(`${channel}/${name}`)?.synced ?? false;
  }

  private settle(opId: string): Pending | undefined {
    const p = this.pending.get(opId);
    this.pending.delete(opId);
    return p;
  }

  private sendPending(opId: string, p: Pending): void {
    const { channel, name: object } = p.object;
    if (p.kind === 'collab') this.send({ type: 'collab', channel, object, op_id: opId, body: p.body });
    else this.send({ type: 'collab_query', channel, object, op_id: opId, body: p.body });
  }

  private sendSubscribe(obj: CollabObject): void {
    this.send({
      type: 'collab_subscribe',
      channel: obj.channel,
      object: obj.name,
      ...(obj.lastSeq !== null ? { since: obj.lastSeq } : {}),
    });
  }
}
