// Chat: a chat room's persistent messages (chat/main, or another room picked at the top) with
// threads, edits, deletions, reactions, typing, older pages, search, file announcements (in
// chat/main) and a read marker. The server's events are the only source of truth: a message
// shows once its `posted` event arrives.

import type { CollabObject, ObjectListener } from '../collab.js';
import { fileUrl } from '../api.js';
import type { Author, CollabEvent } from '../protocol.js';
import type { CollabContext } from './collabpanel.js';
import { h, placeChildren } from './dom.js';
import { formatBytes, type FileInfo } from './files.js';
import { ObjectPicker } from './objects.js';

export interface ChatMessage {
  id: number;
  author: Author;
  at: number;
  text: string;
  /** The thread's root, for replies. */
  thread?: number;
  mentions?: string[];
  edited_at?: number;
  deleted?: { by: string; at: number };
  /** Emoji → identities. */
  reactions?: Record<string, string[]>;
  replies?: number;
  file?: FileInfo;
}

/** The fields of chat events (collab/src/chat.rs `Event`); which are set depends on `event`. */
interface ChatEventBody {
  event: 'posted' | 'edited' | 'deleted' | 'reacted' | 'read';
  id: number;
  text: string;
  thread?: number;
  mentions?: string[];
  file?: FileInfo;
  emoji: string;
  on: boolean;
  up_to: number;
}

const REACTIONS = ['👍', '❤️', '😂', '🎉'];
const PAGE = 50;
const TYPING_SEND_MS = 3000;
const TYPING_SHOW_MS = 5000;
const READ_DELAY_MS = 800;

const time = (at: number) => new Date(at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });

type View = { kind: 'main' } | { kind: 'thread'; root: number } | { kind: 'search'; results: ChatMessage[] };

export class ChatPanel implements ObjectListener {
  readonly el: HTMLElement;
  readonly picker: ObjectPicker;
  private obj: CollabObject;
  /** Every message known, top-level and replies; replaced (not mutated) on change so rows know when to redraw. */
  private readonly messages = new Map<number, ChatMessage>();
  private readUpTo = 0;
  /** The newest message shown while the chat was in sight (sent as `read` shortly after). */
  private seenUpTo = 0;
  /** Where the "new messages" line sits: the read marker when the chat was last opened. */
  private markerAt = 0;
  private hasOlder = false;
  private view: View = { kind: 'main' };
  private editing: number | null = null;
  private visible = false;
  private readonly typing = new Map<string, { name: string; timer: number }>();
  private lastTypingSent = 0;
  private readTimer: number | undefined;
  private renderQueued = false;

  private readonly list = h('ol', { className: 'chat-list', 'data-testid': 'chat-list', 'aria-live': 'polite' });
  private readonly rows = new Map<number, { msg: ChatMessage; el: HTMLLIElement }>();
  private readonly marker = h('li', { className: 'chat-unread-marker', 'data-testid': 'chat-unread' }, 'New messages');
  private readonly older = h('button', { type: 'button', className: 'small', 'data-testid': 'chat-load-older', hidden: true }, 'Load older messages');
  private readonly typingLine = h('div', { className: 'chat-typing', 'data-testid': 'chat-typing', 'aria-live': 'polite' });
  private readonly input = h('textarea', { className: 'chat-input', 'data-testid': 'chat-input', rows: 2, maxlength: 10000, placeholder: 'Message', 'aria-label': 'Message' });
  private readonly mainView: HTMLElement;

  private readonly threadList = h('ol', { className: 'chat-list', 'data-testid': 'thread-list' });
  private readonly threadRows = new Map<number, { msg: ChatMessage; el: HTMLLIElement }>();
  private readonly threadInput = h('textarea', { className: 'chat-input', 'data-testid': 'thread-input', rows: 2, maxlength: 10000, placeholder: 'Reply in thread', 'aria-label': 'Reply in thread' });
  private readonly threadView: HTMLElement;

  private readonly search = h('input', { type: 'search', 'data-testid': 'chat-search', placeholder: 'Search messages', 'aria-label': 'Search messages' });
  private readonly searchList = h('ol', { className: 'chat-list' });
  private readonly searchView: HTMLElement;

  constructor(
    private readonly ctx: CollabContext,
    /** The number of unread messages changed (for the tab's badge). */
    private readonly onUnread: (n: number) => void,
  ) {
    const composer = (input: HTMLTextAreaElement, testid: string, send: () => void) => {
      input.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
          ev.preventDefault();
          send();
        }
      });
      input.addEventListener('input', () => this.sendTyping());
      return h('form', { className: 'chat-composer', onsubmit: (ev) => (ev.preventDefault(), send()) },
        input, h('button', { type: 'submit', className: 'primary small', 'data-testid': testid }, 'Send'));
    };
    this.older.addEventListener('click', () => void this.loadOlder());
    this.mainView = h('div', { className: 'chat-view' },
      this.older, this.list, this.typingLine, composer(this.input, 'chat-send', () => this.post(this.input)));
    this.threadView = h('div', { className: 'chat-view', hidden: true },
      h('button', { type: 'button', className: 'small', 'data-testid': 'thread-close', onclick: () => this.show({ kind: 'main' }) }, '← Back to chat'),
      this.threadList,
      composer(this.threadInput, 'thread-send', () => this.post(this.threadInput)));
    this.searchView = h('div', { className: 'chat-view', hidden: true },
      h('button', { type: 'button', className: 'small', onclick: () => ((this.search.value = ''), this.show({ kind: 'main' })) }, '← Back to chat'),
      this.searchList);
    const searchForm = h('form', { className: 'chat-search', role: 'search', onsubmit: (ev) => (ev.preventDefault(), void this.runSearch()) }, this.search);
    this.picker = new ObjectPicker(ctx, 'chat', (name) => this.switchTo(name));
    this.el = h('section', { className: 'chat', 'aria-label': 'Chat' },
      h('div', { className: 'collab-head' }, this.picker.el, searchForm), this.mainView, this.threadView, this.searchView);
    this.obj = ctx.client.subscribe('chat', 'main', this);
  }

  /** The chat room shown. */
  get object(): string {
    return this.obj.name;
  }

  /** Shows chat room `name` instead: the old one is no longer followed. */
  switchTo(name: string): void {
    if (name === this.obj.name) return;
    // What was seen in the old room is still marked read there.
    if (this.readTimer !== undefined) {
      clearTimeout(this.readTimer);
      this.readTimer = undefined;
      if (this.seenUpTo > this.readUpTo) this.write({ op: 'read', up_to: this.seenUpTo });
    }
    this.ctx.client.unsubscribe(this.obj);
    for (const t of this.typing.values()) clearTimeout(t.timer);
    this.typing.clear();
    this.renderTyping();
    this.messages.clear();
    this.rows.clear();
    this.threadRows.clear();
    this.readUpTo = this.seenUpTo = this.markerAt = 0;
    this.hasOlder = false;
    this.lastTypingSent = 0;
    this.search.value = '';
    this.view = { kind: 'main' };
    this.editing = null;
    this.obj = this.ctx.client.subscribe('chat', name, this);
    this.picker.setCurrent(name);
    this.render();
  }

  /** Read-only copies for tests, oldest first. */
  snapshotMessages(): ChatMessage[] {
    return [...this.messages.values()].sort((a, b) => a.id - b.id).map((m) => structuredClone(m));
  }

  /** The tab is shown or hidden: shown means read. */
  setVisible(visible: boolean): void {
    if (visible && !this.visible) this.markerAt = this.readUpTo;
    this.visible = visible;
    this.schedule();
  }

  /** Opens the thread of `root` in chat/main (board cards are discussed there). */
  openThread(root: number): void {
    this.switchTo('main');
    this.show({ kind: 'thread', root });
  }

  /** Posts a thread root in chat/main and resolves with its message id (a board card links to it). */
  startThread(text: string): Promise<number> {
    this.switchTo('main');
    return this.obj.write({ op: 'post', text });
  }

  // ---- ObjectListener ----

  snapshot(state: unknown): void {
    const s = state as { messages: ChatMessage[]; read_up_to: number };
    this.messages.clear();
    this.rows.clear();
    this.threadRows.clear();
    for (const m of s.messages) this.messages.set(m.id, m);
    this.readUpTo = Math.max(this.readUpTo, s.read_up_to ?? 0);
    if (!this.visible) this.markerAt = this.readUpTo;
    this.hasOlder = s.messages.length >= PAGE;
    if (this.view.kind === 'thread') void this.loadThread(this.view.root);
    this.schedule();
  }

  event(ev: CollabEvent): void {
    const b = ev.body as unknown as ChatEventBody;
    const update = (id: number, f: (m: ChatMessage) => ChatMessage) => {
      const m = this.messages.get(id);
      if (m) this.messages.set(id, f(m));
    };
    switch (b.event) {
      case 'posted': {
        const id = ev.seq as number;
        const m: ChatMessage = { id, author: ev.author, at: ev.at, text: b.text ?? '', thread: b.thread, mentions: b.mentions, file: b.file };
        this.messages.set(id, m);
        if (m.thread !== undefined) update(m.thread, (r) => ({ ...r, replies: (r.replies ?? 0) + 1 }));
        this.stopTyping(ev.author.identity);
        break;
      }
      case 'edited':
        update(b.id, (m) => ({ ...m, text: b.text, edited_at: ev.at }));
        break;
      case 'deleted':
        update(b.id, (m) => ({ ...m, text: '', mentions: [], reactions: {}, file: undefined, deleted: { by: ev.author.identity, at: ev.at } }));
        break;
      case 'reacted':
        update(b.id, (m) => {
          const reactions = { ...m.reactions };
          const who = new Set(reactions[b.emoji] ?? []);
          if (b.on) who.add(ev.author.identity);
          else who.delete(ev.author.identity);
          if (who.size > 0) reactions[b.emoji] = [...who];
          else delete reactions[b.emoji];
          return { ...m, reactions };
        });
        break;
      case 'read':
        if (ev.author.identity === this.ctx.client.self.identity) this.readUpTo = Math.max(this.readUpTo, b.up_to);
        break;
    }
    this.schedule();
  }

  volatile(ev: CollabEvent): void {
    // Read markers are not in the log: the server tells only our own other devices.
    if (ev.body.event === 'read' && ev.author.identity === this.ctx.client.self.identity) {
      this.readUpTo = Math.max(this.readUpTo, Number(ev.body.up_to) || 0);
      this.schedule();
      return;
    }
    if (ev.body.typing !== true || ev.author.identity === this.ctx.client.self.identity) return;
    this.stopTyping(ev.author.identity);
    const timer = window.setTimeout(() => this.stopTyping(ev.author.identity), TYPING_SHOW_MS);
    this.typing.set(ev.author.identity, { name: ev.author.name, timer });
    this.renderTyping();
  }

  error(code: string, message: string): void {
    this.ctx.notify(`Chat: ${message} (${code})`);
  }

  // ---- actions ----

  private post(input: HTMLTextAreaElement): void {
    const text = input.value.trim();
    if (!text) return;
    const thread = input === this.threadInput && this.view.kind === 'thread' ? this.view.root : undefined;
    input.value = '';
    this.lastTypingSent = 0; // the next keystroke is news again
    this.write({ op: 'post', text, ...(thread !== undefined ? { thread } : {}), ...this.mentionsIn(text) }, () => {
      // Not sent: give the text back rather than losing it.
      if (!input.value) input.value = text;
    });
  }

  /** `@Name` of somebody who wrote here mentions them. */
  private mentionsIn(text: string): { mentions?: string[] } {
    const people = new Map<string, string>();
    for (const m of this.messages.values()) people.set(m.author.name, m.author.identity);
    const mentions = [...people].filter(([name]) => text.includes(`@${name}`)).map(([, identity]) => identity);
    return mentions.length > 0 ? { mentions } : {};
  }

  private write(body: Record<string, unknown>, failed?: () => void): void {
    this.obj.write(body).catch((err: Error) => {
      this.ctx.notify(`Chat: ${err.message}`);
      failed?.();
    });
  }

  private sendTyping(): void {
    const now = Date.now();
    if (now - this.lastTypingSent < TYPING_SEND_MS) return;
    this.lastTypingSent = now;
    this.obj.volatile({ typing: true });
  }

  private stopTyping(identity: string): void {
    const t = this.typing.get(identity);
    if (!t) return;
    clearTimeout(t.timer);
    this.typing.delete(identity);
    this.renderTyping();
  }

  private async loadOlder(): Promise<void> {
    const oldest = Math.min(...this.topLevel().map((m) => m.id));
    this.older.disabled = true;
    const obj = this.obj;
    try {
      const page = await obj.query<{ messages: ChatMessage[]; more?: boolean }>({ query: 'history', before: oldest, limit: PAGE });
      if (obj !== this.obj) return; // another room meanwhile
      this.merge(page.messages);
      this.hasOlder = !!page.more;
      const keep = this.list.scrollHeight - this.list.scrollTop;
      this.render();
      this.list.scrollTop = this.list.scrollHeight - keep;
    } catch (err) {
      this.ctx.notify(`Chat: ${(err as Error).message}`);
    } finally {
      this.older.disabled = false;
    }
  }

  private async loadThread(root: number): Promise<void> {
    const obj = this.obj;
    try {
      const page = await obj.query<{ messages: ChatMessage[] }>({ query: 'history', thread: root, limit: 200 });
      if (obj !== this.obj) return;
      this.merge(page.messages);
      this.schedule();
    } catch (err) {
      this.ctx.notify(`Chat: ${(err as Error).message}`);
    }
  }

  private async runSearch(): Promise<void> {
    const q = this.search.value.trim();
    if (!q) return this.show({ kind: 'main' });
    const obj = this.obj;
    try {
      const found = await obj.query<{ messages: ChatMessage[] }>({ query: 'search', q });
      if (obj !== this.obj) return;
      this.show({ kind: 'search', results: found.messages });
    } catch (err) {
      this.ctx.notify(`Chat: ${(err as Error).message}`);
    }
  }

  /** Adds messages from a query; what events already brought is newer. */
  private merge(messages: ChatMessage[]): void {
    for (const m of messages) if (!this.messages.has(m.id)) this.messages.set(m.id, m);
  }

  private show(view: View): void {
    this.view = view;
    this.editing = null;
    if (view.kind === 'thread') void this.loadThread(view.root);
    this.render();
    if (view.kind === 'thread') this.threadInput.focus();
  }

  // ---- rendering ----

  private topLevel(): ChatMessage[] {
    return [...this.messages.values()].filter((m) => m.thread === undefined).sort((a, b) => a.id - b.id);
  }

  private schedule(): void {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  private render(): void {
    this.mainView.hidden = this.view.kind !== 'main';
    this.threadView.hidden = this.view.kind !== 'thread';
    this.searchView.hidden = this.view.kind !== 'search';
    const self = this.ctx.client.self.identity;

    const atBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    const top = this.topLevel();
    const firstUnread = top.find((m) => m.id > this.markerAt && m.author.identity !== self);
    const els: HTMLElement[] = [];
    for (const m of top) {
      if (m === firstUnread) els.push(this.marker);
      els.push(this.row(this.rows, m, true));
    }
    placeChildren(this.list, els);
    if (atBottom) this.list.scrollTop = this.list.scrollHeight;
    this.older.hidden = !this.hasOlder;

    if (this.view.kind === 'thread') {
      const root = this.view.root;
      const thread = [...this.messages.values()].filter((m) => m.id === root || m.thread === root).sort((a, b) => a.id - b.id);
      const threadAtBottom = this.threadList.scrollHeight - this.threadList.scrollTop - this.threadList.clientHeight < 40;
      placeChildren(this.threadList, thread.map((m) => this.row(this.threadRows, m, false)));
      if (threadAtBottom) this.threadList.scrollTop = this.threadList.scrollHeight;
    }
    if (this.view.kind === 'search') {
      placeChildren(this.searchList, this.view.results.map((m) => {
        const el = h('li', { className: 'chat-msg search-hit', 'data-testid': 'chat-search-result', 'data-id': m.id, tabindex: 0 },
          h('div', { className: 'chat-meta' }, h('strong', {}, m.author.name), ' ', time(m.at)),
          h('div', { className: 'chat-text' }, m.text || m.file?.name || ''));
        const open = () => this.show({ kind: 'thread', root: m.thread ?? m.id });
        el.addEventListener('click', open);
        el.addEventListener('keydown', (ev) => ev.key === 'Enter' && open());
        return el;
      }));
    }

    // Read: everything up to the newest message shown while the chat is in sight.
    if (this.visible && document.visibilityState === 'visible') this.seenUpTo = Math.max(this.seenUpTo, ...this.messages.keys());
    const read = Math.max(this.readUpTo, this.seenUpTo);
    this.onUnread([...this.messages.values()].filter((m) => m.id > read && m.author.identity !== self && !m.deleted).length);
    if (this.seenUpTo > this.readUpTo && this.readTimer === undefined) {
      // One `read` per burst of messages, not one per message.
      this.readTimer = window.setTimeout(() => {
        this.readTimer = undefined;
        if (this.seenUpTo <= this.readUpTo) return;
        this.readUpTo = this.seenUpTo;
        this.write({ op: 'read', up_to: this.readUpTo });
      }, READ_DELAY_MS);
    }
  }

  private renderTyping(): void {
    const names = [...this.typing.values()].map((t) => t.name);
    this.typingLine.textContent =
      names.length === 0 ? '' : names.length === 1 ? `${names[0]} is typing…` : `${names.slice(0, -1).join(', ')} and ${names.at(-1)} are typing…`;
  }

  /** The row of `m`, rebuilt only when the message (or its edit state) changed. */
  private row(cache: Map<number, { msg: ChatMessage; el: HTMLLIElement }>, m: ChatMessage, inMain: boolean): HTMLLIElement {
    const cached = cache.get(m.id);
    if (cached?.msg === m) return cached.el;
    // The old row, no longer listed, drops out in placeChildren.
    const el = this.buildRow(m, inMain);
    cache.set(m.id, { msg: m, el });
    return el;
  }

  /** Rebuilds a message's rows (edit mode on or off). */
  private restale(id: number): void {
    this.rows.delete(id);
    this.threadRows.delete(id);
    this.render();
  }

  private buildRow(m: ChatMessage, inMain: boolean): HTMLLIElement {
    const self = this.ctx.client.self.identity;
    const mine = m.author.identity === self;
    const el = h('li', {
      className: `chat-msg${mine ? ' mine' : ''}${m.mentions?.includes(self) ? ' mention' : ''}${m.deleted ? ' deleted' : ''}`,
      'data-testid': 'chat-message',
      'data-id': m.id,
      ...(m.thread !== undefined ? { 'data-thread': m.thread } : {}),
    });
    el.append(h('div', { className: 'chat-meta' }, h('strong', {}, m.author.name), ' ', h('time', { datetime: new Date(m.at).toISOString() }, time(m.at)), m.edited_at && !m.deleted ? ' (edited)' : ''));
    if (m.deleted) {
      el.append(h('div', { className: 'chat-text' }, 'Message deleted'));
      return el;
    }
    if (this.editing === m.id) {
      const edit = h('textarea', { className: 'chat-input', 'data-testid': 'chat-edit-input', rows: 2, 'aria-label': 'Edit message' });
      edit.value = m.text;
      const save = () => {
        const text = edit.value.trim();
        this.editing = null;
        if (text && text !== m.text) this.write({ op: 'edit', id: m.id, text });
        this.restale(m.id);
      };
      edit.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter' && !ev.shiftKey) (ev.preventDefault(), save());
        if (ev.key === 'Escape') (this.editing = null), this.restale(m.id);
      });
      el.append(edit, h('div', { className: 'chat-actions' }, h('button', { type: 'button', className: 'small', 'data-testid': 'chat-edit-save', onclick: save }, 'Save')));
      requestAnimationFrame(() => edit.focus());
      return el;
    }
    if (m.text) el.append(h('div', { className: 'chat-text' }, m.text));
    if (m.file) {
      const f = m.file;
      el.append(h('a', { className: 'chat-file', 'data-testid': 'chat-file', 'data-file-id': f.id, href: fileUrl(this.ctx.room, f.id, this.ctx.token), download: f.name },
        `📎 ${f.name} (${formatBytes(f.size)})`));
    }
    const reactions = Object.entries(m.reactions ?? {});
    if (reactions.length > 0) {
      el.append(h('div', { className: 'chat-reactions' }, ...reactions.map(([emoji, who]) => {
        const on = who.includes(self);
        return h('button', { type: 'button', className: 'small reaction', 'data-testid': 'chat-reaction', 'aria-pressed': String(on), title: `${who.length} reacted`,
          onclick: () => this.write({ op: 'react', id: m.id, emoji, on: !on }) }, `${emoji} ${who.length}`);
      })));
    }
    const actions = h('div', { className: 'chat-actions' });
    if (inMain) {
      const n = m.replies ?? 0;
      actions.append(h('button', { type: 'button', className: 'small', 'data-testid': 'thread-reply', onclick: () => this.show({ kind: 'thread', root: m.id }) },
        n === 0 ? 'Reply' : n === 1 ? '1 reply' : `${n} replies`));
    }
    for (const emoji of REACTIONS) {
      if (m.reactions?.[emoji]?.includes(self)) continue;
      actions.append(h('button', { type: 'button', className: 'small ghost', 'data-testid': 'chat-react', 'aria-label': `React with ${emoji}`, onclick: () => this.write({ op: 'react', id: m.id, emoji }) }, emoji));
    }
    if (mine && !m.file) {
      actions.append(h('button', { type: 'button', className: 'small ghost', 'data-testid': 'chat-edit', onclick: () => ((this.editing = m.id), this.restale(m.id)) }, 'Edit'));
    }
    if (mine || this.ctx.client.moderator) {
      actions.append(h('button', { type: 'button', className: 'small ghost danger-text', 'data-testid': 'chat-delete', onclick: () => this.write({ op: 'delete', id: m.id }) }, 'Delete'));
    }
    el.append(actions);
    return el;
  }
}
