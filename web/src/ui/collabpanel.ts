// The collaboration side area: tabs for Chat, Whiteboard, Board and Files, beside the video grid
// in a meeting or on its own in a team space. Chat and files are followed from the start (unread
// counts, file links); the whiteboard and the board only once their tab is first opened. Chat,
// whiteboard and board each show one object at a time (`main` first), picked in their tab.

import { roomObjects, type ObjectEntry } from '../api.js';
import type { CollabClient } from '../collab.js';
import type { CollabChannel } from '../protocol.js';
import { BoardPanel, type Card, type Column } from './board.js';
import { ChatPanel, type ChatMessage } from './chat.js';
import { h, icon } from './dom.js';
import { FilesPanel, type FileInfo } from './files.js';
import { icons } from './icons.js';
import type { ObjectPicker, PickedChannel } from './objects.js';
import { WhiteboardPanel, type WbElement } from './whiteboard.js';

/** What the panels share. */
export interface CollabContext {
  readonly client: CollabClient;
  /** The room (for HTTP paths); known once joined. */
  readonly room: string;
  readonly token: string;
  files(): FileInfo[];
  openThread(root: number): void;
  /** Posts a chat message to discuss something in; resolves with its id. */
  startThread(text: string): Promise<number>;
  notify(text: string): void;
  /** The room's objects that hold data (one request shared by the pickers). */
  listObjects(): Promise<ObjectEntry[]>;
  /** Resolves with the first file of the file drop that `match`es (now or once it is added). */
  whenFile(match: (f: FileInfo) => boolean, timeoutMs: number): Promise<FileInfo>;
}

/**
 * `window.ting.collab`: read-only copies of what the panels show, for tests. Each tab shows one
 * object (`main` unless another one was picked): with `object`, the copies are null unless that
 * object is the one shown.
 */
export interface CollabView {
  chatMessages(object?: string): ChatMessage[] | null;
  whiteboardElements(object?: string): WbElement[] | null;
  boardColumns(object?: string): Column[] | null;
  boardCards(object?: string): Card[] | null;
  files(): FileInfo[];
  /** The object a tab shows ('main' for files). */
  object(channel: CollabChannel): string;
  /** Up to date with the server (after `collab_synced`): the object shown, or `object`. */
  synced(channel: CollabChannel, object?: string): boolean;
}

/** How long one answer of GET …/objects serves all pickers. */
const OBJECTS_TTL_MS = 1500;

type Tab = 'chat' | 'whiteboard' | 'board' | 'files';
const TABS: [Tab, string][] = [
  ['chat', 'Chat'],
  ['whiteboard', 'Whiteboard'],
  ['board', 'Board'],
  ['files', 'Files'],
];

export class CollabPanel implements CollabContext {
  readonly el: HTMLElement;
  /** The meeting's control that shows and hides the panel. */
  readonly toggle: HTMLButtonElement;
  room = '';
  private readonly chat: ChatPanel;
  private readonly filesPanel: FilesPanel;
  private whiteboard: WhiteboardPanel | null = null;
  private board: BoardPanel | null = null;
  private readonly tabs = new Map<Tab, HTMLButtonElement>();
  private readonly bodies = new Map<Tab, HTMLElement>();
  private tab: Tab = 'chat';
  private readonly unreadBadge = h('span', { className: 'badge', 'data-testid': 'chat-unread-count', hidden: true });
  private readonly controlBadge = h('span', { className: 'badge badge-attention', hidden: true });
  private objectList: { at: number; list: Promise<ObjectEntry[]> } | null = null;
  private readonly fileWaiters = new Set<() => void>();

  constructor(
    readonly client: CollabClient,
    readonly token: string,
    readonly notify: (text: string) => void,
    /** A team space: always open, the whole page. */
    standalone = false,
  ) {
    const bar = h('div', { className: 'collab-tabs', role: 'tablist', 'aria-label': 'Collaboration' });
    for (const [tab, label] of TABS) {
      const b = h('button', { type: 'button', role: 'tab', id: `collab-tab-${tab}`, 'data-testid': `tab-${tab}`, 'aria-controls': `collab-${tab}`, onclick: () => this.show(tab) }, label);
      if (tab === 'chat') b.append(this.unreadBadge);
      this.tabs.set(tab, b);
      bar.append(b);
      this.bodies.set(tab, h('div', { className: 'collab-body', role: 'tabpanel', id: `collab-${tab}`, 'aria-labelledby': `collab-tab-${tab}`, hidden: true }));
    }
    this.chat = new ChatPanel(this, (n) => this.setUnread(n));
    this.filesPanel = new FilesPanel(this, () => {
      this.board?.filesChanged();
      this.whiteboard?.filesChanged();
      for (const check of this.fileWaiters) check();
    });
    this.bodies.get('chat')!.append(this.chat.el);
    this.bodies.get('files')!.append(this.filesPanel.el);
    this.el = h('aside', { id: 'collab-panel', className: `collab-panel${standalone ? ' standalone' : ''}`, hidden: !standalone, 'aria-label': 'Chat, whiteboard, board and files' },
      bar, ...this.bodies.values());
    this.toggle = h('button', { id: 'toggle-collab', type: 'button', className: 'control', 'data-testid': 'collab-toggle', 'aria-expanded': 'false', 'aria-controls': 'collab-panel', title: 'Chat, whiteboard, board and files', onclick: () => this.setOpen(this.el.hidden) },
      icon(icons.chat), h('span', { className: 'control-label' }, 'Collaborate'), this.controlBadge);
    this.show('chat');
  }

  get open(): boolean {
    return !this.el.hidden;
  }

  setOpen(open: boolean): void {
    this.el.hidden = !open;
    this.toggle.setAttribute('aria-expanded', String(open));
    this.show(this.tab);
  }

  show(tab: Tab): void {
    this.tab = tab;
    if (tab === 'whiteboard') this.whiteboard ??= this.mount('whiteboard', new WhiteboardPanel(this));
    if (tab === 'board') this.board ??= this.mount('board', new BoardPanel(this));
    for (const [t, b] of this.tabs) {
      b.setAttribute('aria-selected', String(t === tab));
      b.tabIndex = t === tab ? 0 : -1;
      this.bodies.get(t)!.hidden = t !== tab;
    }
    // The whiteboard and the board need room; chat and files fit a narrow column.
    this.el.classList.toggle('wide', tab === 'whiteboard' || tab === 'board');
    this.chat.setVisible(this.open && tab === 'chat');
    this.whiteboard?.setVisible(this.open && tab === 'whiteboard');
    if (this.open) this.picker(tab)?.refresh();
  }

  private picker(tab: Tab): ObjectPicker | undefined {
    return tab === 'chat' ? this.chat.picker : tab === 'whiteboard' ? this.whiteboard?.picker : tab === 'board' ? this.board?.picker : undefined;
  }

  /** The object a tab shows. */
  private objectOf(channel: CollabChannel): string {
    const shown: Record<PickedChannel, string | undefined> = { chat: this.chat.object, whiteboard: this.whiteboard?.object, board: this.board?.object };
    return channel === 'files' ? 'main' : (shown[channel] ?? 'main');
  }

  private mount<T extends { el: HTMLElement }>(tab: Tab, panel: T): T {
    this.bodies.get(tab)!.append(panel.el);
    return panel;
  }

  private setUnread(n: number): void {
    for (const badge of [this.unreadBadge, this.controlBadge]) {
      badge.hidden = n === 0;
      badge.textContent = n > 99 ? '99+' : String(n);
    }
    this.controlBadge.hidden ||= this.open && this.tab === 'chat';
    this.controlBadge.title = `${n} unread`;
  }

  // ---- CollabContext ----

  files(): FileInfo[] {
    return this.filesPanel.all();
  }

  openThread(root: number): void {
    if (!this.open) this.setOpen(true);
    this.show('chat');
    this.chat.openThread(root);
  }

  startThread(text: string): Promise<number> {
    return this.chat.startThread(text);
  }

  listObjects(): Promise<ObjectEntry[]> {
    if (!this.objectList || Date.now() - this.objectList.at > OBJECTS_TTL_MS) {
      this.objectList = { at: Date.now(), list: roomObjects(this.room, this.token) };
    }
    return this.objectList.list;
  }

  whenFile(match: (f: FileInfo) => boolean, timeoutMs: number): Promise<FileInfo> {
    return new Promise((resolve, reject) => {
      const done = () => {
        this.fileWaiters.delete(check);
        clearTimeout(timer);
      };
      const check = () => {
        const found = this.filesPanel.all().find(match);
        if (found) (done(), resolve(found));
      };
      const timer = window.setTimeout(() => (done(), reject(new Error('the file did not show up in the file drop'))), timeoutMs);
      this.fileWaiters.add(check);
      check();
    });
  }

  /** The read-only view behind `window.ting.collab`. */
  view(): CollabView {
    /** `read()` when `object` is unset or the one `channel` shows, else null. */
    const shown = <T>(channel: PickedChannel, object: string | undefined, read: () => T): T | null =>
      object === undefined || object === this.objectOf(channel) ? read() : null;
    return {
      chatMessages: (object) => shown('chat', object, () => this.chat.snapshotMessages()),
      whiteboardElements: (object) => shown('whiteboard', object, () => this.whiteboard?.visibleElements() ?? []),
      boardColumns: (object) => shown('board', object, () => (this.board?.columns() ?? []).map((c) => ({ ...c }))),
      boardCards: (object) => shown('board', object, () => this.board?.allCards() ?? []),
      files: () => this.filesPanel.all().map((f) => structuredClone(f)),
      object: (channel) => this.objectOf(channel),
      synced: (channel, object) => this.client.isSynced(channel, object ?? this.objectOf(channel)),
    };
  }
}
