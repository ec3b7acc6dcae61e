// The collaboration side area: tabs for Chat, Whiteboard, Board and Files, beside the video grid
// in a meeting or on its own in a team space. Chat and files are followed from the start (unread
// counts, file links); the whiteboard and the board only once their tab is first opened.

import type { CollabClient } from '../collab.js';
import type { CollabChannel } from '../protocol.js';
import { BoardPanel, type Card, type Column } from './board.js';
import { ChatPanel, type ChatMessage } from './chat.js';
import { h, icon } from './dom.js';
import { FilesPanel, type FileInfo } from './files.js';
import { icons } from './icons.js';
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
}

/** `window.ting.collab`: read-only copies of what the panels show, for tests. */
export interface CollabView {
  chatMessages(): ChatMessage[];
  whiteboardElements(): WbElement[];
  boardColumns(): Column[];
  boardCards(): Card[];
  files(): FileInfo[];
  /** Up to date with the server (after `collab_synced`). */
  synced(channel: CollabChannel): boolean;
}

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
    this.filesPanel = new FilesPanel(this, () => this.board?.filesChanged());
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

  /** The read-only view behind `window.ting.collab`. */
  view(): CollabView {
    return {
      chatMessages: () => this.chat.snapshotMessages(),
      whiteboardElements: () => this.whiteboard?.visibleElements() ?? [],
      boardColumns: () => (this.board?.columns() ?? []).map((c) => ({ ...c })),
      boardCards: () => this.board?.allCards() ?? [],
      files: () => this.filesPanel.all().map((f) => structuredClone(f)),
      synced: (channel) => this.client.isSynced(channel, 'main'),
    };
  }
}
