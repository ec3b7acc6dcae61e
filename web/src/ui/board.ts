// A kanban board (board/main, or another board picked at the top): columns and cards in fractional-index order (position strings
// compared as plain strings, then ids; never renumbered: the server picks a moved item's new
// position between its neighbours). Cards move by drag and drop or by the move buttons; a card
// opens in an editor for its details, checklist, comments, attachments and chat thread.

import { fileUrl } from '../api.js';
import type { CollabObject, ObjectListener } from '../collab.js';
import type { Author, CollabEvent } from '../protocol.js';
import type { CollabContext } from './collabpanel.js';
import { h, placeChildren } from './dom.js';
import { ObjectPicker } from './objects.js';

export interface Column {
  id: string;
  title: string;
  position: string;
}

export interface Label {
  id: string;
  name: string;
  color: string;
}

export interface ChecklistItem {
  id: string;
  text: string;
  done: boolean;
}

export interface Card {
  id: string;
  column: string;
  position: string;
  title: string;
  description: string;
  labels: string[];
  assignees: string[];
  /** YYYY-MM-DD. */
  due: string | null;
  checklist: ChecklistItem[];
  comments: { id: number; author: Author; at: number; text: string }[];
  /** File ids from the room's file drop. */
  attachments: string[];
  meeting: string | null;
  /** The chat thread (its root message id) the card is discussed in. */
  thread: number | null;
  created_by: string;
}

export type CardPatch = Partial<Pick<Card, 'title' | 'description' | 'labels' | 'assignees' | 'checklist' | 'attachments'>> & {
  /** "" clears. */
  due?: string;
  meeting?: string;
  thread?: number;
};

interface BoardState {
  title: string;
  columns: Record<string, Column>;
  cards: Record<string, Card>;
  labels: Record<string, Label>;
}

/** Fractional index order: plain string comparison of positions, then ids. */
const byPosition = (a: { position: string; id: string }, b: { position: string; id: string }) =>
  a.position < b.position ? -1 : a.position > b.position ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;

/** A label colour fit for a style attribute. */
const colour = (c: string) => (/^#[0-9a-f]{6}$/i.test(c) ? c : '#888888');

const shortId = () => Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(36).padStart(2, '0')).join('');

interface ColumnView {
  el: HTMLElement;
  title: HTMLInputElement;
  list: HTMLOListElement;
  remove: HTMLButtonElement;
}

export class BoardPanel implements ObjectListener {
  readonly el: HTMLElement;
  readonly picker: ObjectPicker;
  private obj: CollabObject;
  private state: BoardState = { title: '', columns: {}, cards: {}, labels: {} };
  private readonly columnsEl = h('div', { className: 'board-columns' });
  private readonly columnViews = new Map<string, ColumnView>();
  private readonly cardViews = new Map<string, { sig: string; el: HTMLLIElement }>();
  private readonly editor = h('aside', { className: 'card-editor', 'data-testid': 'card-editor', hidden: true, 'aria-label': 'Card details' });
  private openCard: string | null = null;
  private editorStale = false;
  /** The card being dragged: no re-render under the pointer until it is dropped. */
  private dragging: string | null = null;
  private renderQueued = false;

  constructor(private readonly ctx: CollabContext) {
    const title = h('input', { 'data-testid': 'board-column-title', placeholder: 'New column', 'aria-label': 'New column title', maxlength: 500 });
    const addColumn = h('form', { className: 'board-add-column', onsubmit: (ev) => {
      ev.preventDefault();
      if (!title.value.trim()) return;
      this.write({ op: 'add_column', title: title.value.trim() });
      title.value = '';
    } }, title, h('button', { type: 'submit', className: 'small', 'data-testid': 'board-add-column' }, 'Add column'));
    this.editor.addEventListener('focusout', () => {
      // Re-render what changed meanwhile once the person is done with the field they were in.
      window.setTimeout(() => this.editorStale && !this.typing() && this.renderEditor(), 0);
    });
    this.picker = new ObjectPicker(ctx, 'board', (name) => this.switchTo(name));
    this.el = h('section', { className: 'board', 'aria-label': 'Board' },
      h('div', { className: 'collab-head' }, this.picker.el, addColumn), this.columnsEl, this.editor);
    this.obj = ctx.client.subscribe('board', 'main', this);
  }

  /** The board shown. */
  get object(): string {
    return this.obj.name;
  }

  /** Shows board `name` instead: the old one is no longer followed. */
  switchTo(name: string): void {
    if (name === this.obj.name) return;
    this.ctx.client.unsubscribe(this.obj);
    this.state = { title: '', columns: {}, cards: {}, labels: {} };
    this.columnViews.clear();
    this.cardViews.clear();
    this.openCard = null;
    this.dragging = null;
    this.editorStale = true;
    this.obj = this.ctx.client.subscribe('board', name, this);
    this.picker.setCurrent(name);
    this.render();
  }

  columns(): Column[] {
    return Object.values(this.state.columns).sort(byPosition);
  }

  cardsOf(column: string): Card[] {
    return Object.values(this.state.cards).filter((c) => c.column === column).sort(byPosition);
  }

  /** Read-only copies of every card, column by column in order (tests). */
  allCards(): Card[] {
    return this.columns().flatMap((c) => this.cardsOf(c.id)).map((c) => structuredClone(c));
  }

  /** The files changed: attachment choices in an open editor follow. */
  filesChanged(): void {
    if (!this.openCard) return;
    this.editorStale = true;
    this.schedule();
  }

  // ---- ObjectListener ----

  snapshot(state: unknown): void {
    const s = state as Partial<BoardState>;
    this.state = { title: s.title ?? '', columns: s.columns ?? {}, cards: s.cards ?? {}, labels: s.labels ?? {} };
    this.editorStale = true;
    this.schedule();
  }

  event(ev: CollabEvent): void {
    const b = ev.body as Record<string, unknown> & { event: string };
    const s = this.state;
    const card = (id: unknown) => s.cards[String(id)];
    switch (b.event) {
      case 'title_set':
        s.title = String(b.title);
        break;
      case 'column_added': {
        const c = b.column as Column;
        s.columns[c.id] = c;
        break;
      }
      case 'column_renamed':
      case 'column_moved': {
        const c = s.columns[String(b.id)];
        if (c) Object.assign(c, b.event === 'column_renamed' ? { title: b.title } : { position: b.position });
        break;
      }
      case 'column_deleted':
        delete s.columns[String(b.id)];
        break;
      case 'label_set': {
        const l = b.label as Label;
        s.labels[l.id] = l;
        break;
      }
      case 'card_added': {
        const c = b.card as Card;
        s.cards[c.id] = c;
        break;
      }
      case 'card_updated': {
        const c = card(b.id);
        const p = b.patch as CardPatch;
        if (!c) break;
        const { due, meeting, ...rest } = p;
        Object.assign(c, rest);
        if (due !== undefined) c.due = due || null;
        if (meeting !== undefined) c.meeting = meeting || null;
        break;
      }
      case 'card_moved': {
        const c = card(b.id);
        if (c) Object.assign(c, { column: b.column, position: b.position });
        break;
      }
      case 'card_deleted':
        delete s.cards[String(b.id)];
        break;
      case 'commented':
        card(b.card)?.comments.push({ id: ev.seq ?? 0, author: ev.author, at: ev.at, text: String(b.text) });
        break;
    }
    if (this.openCard && (b.id === this.openCard || b.card === this.openCard || b.event === 'label_set')) this.editorStale = true;
    this.schedule();
  }

  error(code: string, message: string): void {
    this.ctx.notify(`Board: ${message} (${code})`);
  }

  private write(body: Record<string, unknown>): Promise<number | void> {
    return this.obj.write(body).catch((err: Error) => this.ctx.notify(`Board: ${err.message}`));
  }

  private patch(id: string, patch: CardPatch): void {
    void this.write({ op: 'update_card', id, patch });
  }

  // ---- moving ----

  /** Moves a card to `column`, before `before` (a card id) or at the end. */
  private moveCard(id: string, column: string, before: string | null): void {
    const siblings = this.cardsOf(column).filter((c) => c.id !== id);
    const last = siblings[siblings.length - 1];
    const place = before ? { before } : last ? { after: last.id } : {};
    void this.write({ op: 'move_card', id, column, ...place });
  }

  /** The move buttons: one step up or down, or to the end of the next column. */
  private step(card: Card, dir: 'up' | 'down' | 'left' | 'right'): void {
    const cards = this.cardsOf(card.column);
    const i = cards.findIndex((c) => c.id === card.id);
    if (dir === 'up' && i > 0) return void this.write({ op: 'move_card', id: card.id, column: card.column, before: cards[i - 1]!.id });
    if (dir === 'down' && i < cards.length - 1) return void this.write({ op: 'move_card', id: card.id, column: card.column, after: cards[i + 1]!.id });
    const cols = this.columns();
    const target = cols[cols.findIndex((c) => c.id === card.column) + (dir === 'left' ? -1 : 1)];
    if ((dir === 'left' || dir === 'right') && target) this.moveCard(card.id, target.id, null);
  }

  private stepColumn(col: Column, dir: -1 | 1): void {
    const cols = this.columns();
    const i = cols.findIndex((c) => c.id === col.id);
    const other = cols[i + dir];
    if (other) void this.write({ op: 'move_column', id: col.id, ...(dir < 0 ? { before: other.id } : { after: other.id }) });
  }

  /** Where a drop at `y` lands in a column's list: before the first card whose middle is below it. */
  private dropBefore(list: HTMLElement, y: number): string | null {
    for (const el of list.querySelectorAll<HTMLElement>('[data-testid="board-card"]')) {
      if (el.dataset.id === this.dragging) continue;
      const r = el.getBoundingClientRect();
      if (y < r.top + r.height / 2) return el.dataset.id ?? null;
    }
    return null;
  }

  // ---- rendering ----

  private schedule(): void {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      if (!this.dragging) this.render();
    });
  }

  private render(): void {
    const cols = this.columns();
    placeChildren(this.columnsEl, cols.map((col, ci) => {
      const view = this.columnViews.get(col.id) ?? this.buildColumn(col);
      this.columnViews.set(col.id, view);
      if (document.activeElement !== view.title) view.title.value = col.title;
      const cards = this.cardsOf(col.id);
      view.remove.disabled = cards.length > 0;
      view.remove.title = cards.length > 0 ? 'Move or delete its cards first' : 'Delete this column';
      placeChildren(view.list, cards.map((card, i) => this.cardEl(card, i === 0, i === cards.length - 1, ci === 0, ci === cols.length - 1)));
      return view.el;
    }));
    for (const id of this.columnViews.keys()) if (!this.state.columns[id]) this.columnViews.delete(id);
    for (const id of this.cardViews.keys()) if (!this.state.cards[id]) this.cardViews.delete(id);
    if (this.editorStale && !this.typing()) this.renderEditor();
  }

  /** Whether someone is typing in the editor (a re-render would take their text away). */
  private typing(): boolean {
    const el = document.activeElement;
    if (!el || !this.editor.contains(el)) return false;
    return el instanceof HTMLTextAreaElement || (el instanceof HTMLInputElement && !['checkbox', 'color'].includes(el.type));
  }

  private buildColumn(col: Column): ColumnView {
    const id = col.id;
    const title = h('input', { className: 'column-title', 'aria-label': 'Column title', maxlength: 500 });
    title.addEventListener('change', () => {
      const t = title.value.trim();
      if (t && t !== this.state.columns[id]?.title) void this.write({ op: 'rename_column', id, title: t });
    });
    const current = () => this.state.columns[id];
    const remove = h('button', { type: 'button', className: 'small ghost', 'data-testid': 'column-delete', onclick: () => this.write({ op: 'delete_column', id }) }, '✕');
    const list = h('ol', { className: 'board-cards' });
    list.addEventListener('dragover', (ev) => {
      if (!this.dragging) return;
      ev.preventDefault();
      if (ev.dataTransfer) ev.dataTransfer.dropEffect = 'move';
      list.classList.add('drop-target');
    });
    list.addEventListener('dragleave', () => list.classList.remove('drop-target'));
    list.addEventListener('drop', (ev) => {
      ev.preventDefault();
      list.classList.remove('drop-target');
      const card = this.dragging ?? ev.dataTransfer?.getData('text/plain');
      if (card && this.state.cards[card]) this.moveCard(card, id, this.dropBefore(list, ev.clientY));
    });
    const cardTitle = h('input', { 'data-testid': 'board-card-title', placeholder: 'New card', 'aria-label': 'New card title', maxlength: 500 });
    const addCard = h('form', { className: 'board-add-card', onsubmit: (ev) => {
      ev.preventDefault();
      if (!cardTitle.value.trim()) return;
      void this.write({ op: 'add_card', column: id, title: cardTitle.value.trim() });
      cardTitle.value = '';
    } }, cardTitle, h('button', { type: 'submit', className: 'small', 'data-testid': 'board-add-card' }, 'Add'));
    const el = h('section', { className: 'board-column', 'data-testid': 'board-column', 'data-id': id },
      h('header', {},
        title,
        h('button', { type: 'button', className: 'small ghost', 'aria-label': 'Move column left', onclick: () => { const c = current(); if (c) this.stepColumn(c, -1); } }, '◀'),
        h('button', { type: 'button', className: 'small ghost', 'aria-label': 'Move column right', onclick: () => { const c = current(); if (c) this.stepColumn(c, 1); } }, '▶'),
        remove),
      list, addCard);
    return { el, title, list, remove };
  }

  private cardEl(card: Card, first: boolean, last: boolean, firstCol: boolean, lastCol: boolean): HTMLLIElement {
    const done = card.checklist.filter((i) => i.done).length;
    const sig = JSON.stringify([card.title, card.labels, card.due, done, card.checklist.length, card.comments.length, card.attachments.length, card.assignees, first, last, firstCol, lastCol, this.state.labels]);
    const known = this.cardViews.get(card.id);
    if (known?.sig === sig) return known.el;
    const id = card.id;
    const move = (dir: 'up' | 'down' | 'left' | 'right', label: string, glyph: string, disabled: boolean) =>
      h('button', { type: 'button', className: 'small ghost', 'data-testid': `card-move-${dir}`, 'aria-label': `${label}: ${card.title}`, disabled,
        onclick: () => { const c = this.state.cards[id]; if (c) this.step(c, dir); } }, glyph);
    const chips = h('div', { className: 'card-chips' },
      ...card.labels.map((l) => this.state.labels[l]).filter((l): l is Label => !!l)
        .map((l) => h('span', { className: 'chip', style: `--chip:${colour(l.color)}` }, l.name)),
      card.due && h('span', { className: 'chip due' }, `📅 ${card.due}`),
      card.checklist.length > 0 && h('span', { className: 'chip' }, `☑ ${done}/${card.checklist.length}`),
      card.comments.length > 0 && h('span', { className: 'chip' }, `💬 ${card.comments.length}`),
      card.attachments.length > 0 && h('span', { className: 'chip' }, `📎 ${card.attachments.length}`),
      card.assignees.length > 0 && h('span', { className: 'chip' }, `👤 ${card.assignees.join(', ')}`));
    const el = h('li', { className: 'board-card', 'data-testid': 'board-card', 'data-id': id, draggable: 'true' },
      h('button', { type: 'button', className: 'card-open', 'data-testid': 'card-open', onclick: () => this.open(id) }, card.title),
      chips,
      h('div', { className: 'card-move' },
        move('up', 'Move up', '↑', first), move('down', 'Move down', '↓', last),
        move('left', 'Move to the previous column', '←', firstCol), move('right', 'Move to the next column', '→', lastCol)));
    el.addEventListener('dragstart', (ev) => {
      this.dragging = id;
      ev.dataTransfer?.setData('text/plain', id);
      if (ev.dataTransfer) ev.dataTransfer.effectAllowed = 'move';
      el.classList.add('dragging');
    });
    el.addEventListener('dragend', () => {
      this.dragging = null;
      el.classList.remove('dragging');
      this.schedule();
    });
    this.cardViews.set(id, { sig, el });
    return el;
  }

  // ---- the card editor ----

  private open(id: string | null): void {
    this.openCard = id;
    this.renderEditor();
    this.editor.querySelector<HTMLElement>('input, textarea')?.focus();
  }

  private renderEditor(): void {
    this.editorStale = false;
    const card = this.openCard ? this.state.cards[this.openCard] : undefined;
    this.editor.hidden = !card;
    if (!card) return this.editor.replaceChildren();
    const id = card.id;
    /** The card as it is now (handlers outlive this render). */
    const cur = (): Card => this.state.cards[id] ?? card;
    const field = (label: string, control: HTMLElement) => h('label', { className: 'field' }, h('span', {}, label), control);

    const title = h('input', { value: card.title, maxlength: 500, 'data-testid': 'card-title' });
    title.addEventListener('change', () => title.value.trim() && this.patch(id, { title: title.value.trim() }));
    const description = h('textarea', { rows: 4, maxlength: 20000, 'data-testid': 'card-description' });
    description.value = card.description;
    description.addEventListener('change', () => this.patch(id, { description: description.value }));
    const due = h('input', { type: 'date', value: card.due ?? '', 'data-testid': 'card-due' });
    due.addEventListener('change', () => this.patch(id, { due: due.value }));
    const assignees = h('input', { value: card.assignees.join(', '), placeholder: 'names, comma separated', 'data-testid': 'card-assignees' });
    const setAssignees = (list: string[]) => this.patch(id, { assignees: [...new Set(list.map((s) => s.trim()).filter(Boolean))] });
    assignees.addEventListener('change', () => setAssignees(assignees.value.split(',')));
    const me = this.ctx.client.self.identity;

    // Labels: the board's labels as toggles, and a new one.
    const labels = h('div', { className: 'card-labels' }, ...Object.values(this.state.labels).map((l) => {
      const box = h('input', { type: 'checkbox', checked: card.labels.includes(l.id) });
      box.addEventListener('change', () => this.patch(id, { labels: box.checked ? [...cur().labels, l.id] : cur().labels.filter((x) => x !== l.id) }));
      return h('label', { className: 'chip', style: `--chip:${colour(l.color)}` }, box, l.name);
    }));
    const labelName = h('input', { placeholder: 'New label', maxlength: 100, 'aria-label': 'New label name' });
    const labelColour = h('input', { type: 'color', value: '#4f8cff', 'aria-label': 'Label colour' });
    const addLabel = h('button', { type: 'button', className: 'small', onclick: () => {
      const name = labelName.value.trim();
      if (!name) return;
      const labelId = `l${shortId()}`;
      void this.write({ op: 'set_label', id: labelId, name, color: labelColour.value }).then(() => this.patch(id, { labels: [...cur().labels, labelId] }));
    } }, 'Add label');

    // Checklist: the whole list goes in each patch.
    const checklist = h('ul', { className: 'checklist' }, ...card.checklist.map((item) => {
      const box = h('input', { type: 'checkbox', checked: item.done, 'aria-label': item.text });
      box.addEventListener('change', () => this.patch(id, { checklist: cur().checklist.map((x) => (x.id === item.id ? { ...x, done: box.checked } : x)) }));
      const remove = h('button', { type: 'button', className: 'small ghost', 'aria-label': `Remove ${item.text}`, onclick: () => this.patch(id, { checklist: cur().checklist.filter((x) => x.id !== item.id) }) }, '✕');
      return h('li', {}, box, h('span', {}, item.text), remove);
    }));
    const newItem = h('input', { placeholder: 'Add an item', maxlength: 500, 'data-testid': 'card-checklist-input' });
    newItem.addEventListener('keydown', (ev) => {
      if (ev.key !== 'Enter' || !newItem.value.trim()) return;
      ev.preventDefault();
      this.patch(id, { checklist: [...cur().checklist, { id: shortId(), text: newItem.value.trim(), done: false }] });
      newItem.value = '';
    });

    // Attachments: picked from the room's files.
    const files = this.ctx.files();
    const attachments = h('ul', { className: 'attachments' }, ...files.map((f) => {
      const box = h('input', { type: 'checkbox', checked: card.attachments.includes(f.id) });
      box.addEventListener('change', () => this.patch(id, { attachments: box.checked ? [...cur().attachments, f.id] : cur().attachments.filter((x) => x !== f.id) }));
      return h('li', {}, h('label', {}, box, ' '), h('a', { href: fileUrl(this.ctx.room, f.id, this.ctx.token), download: f.name }, f.name));
    }));
    const missing = card.attachments.filter((a) => !files.some((f) => f.id === a)).length;

    // Discussion: the card's chat thread, started on first use.
    const discuss = h('button', { type: 'button', className: 'small', 'data-testid': 'card-thread', onclick: () => {
      const thread = cur().thread;
      if (thread) return this.ctx.openThread(thread);
      void this.ctx.startThread(`Card: ${cur().title}`).then((root) => (this.patch(id, { thread: root }), this.ctx.openThread(root)), (err: Error) => this.ctx.notify(err.message));
    } }, card.thread ? 'Open the chat thread' : 'Discuss in chat');

    const comment = h('textarea', { rows: 2, placeholder: 'Comment', maxlength: 20000, 'data-testid': 'card-comment-input' });
    const comments = h('ol', { className: 'comments' }, ...card.comments.map((c) =>
      h('li', {}, h('strong', {}, c.author.name), ` ${new Date(c.at).toLocaleString()}`, h('div', {}, c.text))));

    const del = h('button', { type: 'button', className: 'small ghost danger-text', 'data-testid': 'card-delete' }, 'Delete card');
    del.addEventListener('click', () => {
      if (del.dataset.armed) return void this.write({ op: 'delete_card', id }).then(() => this.open(null));
      del.dataset.armed = 'true';
      del.textContent = 'Really delete?';
    });

    this.editor.replaceChildren(
      h('div', { className: 'editor-head' }, h('h3', {}, 'Card'), h('button', { type: 'button', className: 'small', 'data-testid': 'card-close', onclick: () => this.open(null) }, 'Close')),
      field('Title', title),
      field('Description', description),
      field('Due', due),
      h('div', { className: 'field' }, h('span', {}, 'Assignees'), assignees,
        !card.assignees.includes(me) && me && h('button', { type: 'button', className: 'small ghost', onclick: () => setAssignees([...cur().assignees, me]) }, 'Assign me')),
      h('div', { className: 'field' }, h('span', {}, 'Labels'), labels, h('div', { className: 'row' }, labelName, labelColour, addLabel)),
      h('div', { className: 'field' }, h('span', {}, 'Checklist'), checklist, newItem),
      h('div', { className: 'field' }, h('span', {}, 'Attachments'), files.length ? attachments : h('p', { className: 'hint' }, 'Upload files in the Files tab to attach them.'),
        missing > 0 && h('p', { className: 'hint' }, `${missing} attached file(s) no longer in the room.`)),
      h('div', { className: 'field' }, h('span', {}, 'Meeting'),
        card.meeting ? h('a', { href: `/?room=${encodeURIComponent(card.meeting)}` }, card.meeting) : h('button', { type: 'button', className: 'small ghost', onclick: () => this.patch(id, { meeting: this.ctx.room }) }, `Link to ${this.ctx.room}`),
        discuss),
      h('div', { className: 'field' }, h('span', {}, 'Comments'), comments, comment,
        h('button', { type: 'button', className: 'small', 'data-testid': 'card-comment', onclick: () => {
          if (!comment.value.trim()) return;
          void this.write({ op: 'comment', card: id, text: comment.value.trim() });
          comment.value = '';
        } }, 'Comment')),
      del,
    );
  }
}
