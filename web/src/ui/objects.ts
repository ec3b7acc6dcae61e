// Several chat rooms, whiteboards and boards per room: a compact picker of a channel's objects.
// It lists `main`, the objects that hold data (GET /api/rooms/{room}/objects, asked again when
// the tab is shown or the picker gets the focus) and the ones opened here, plus "New…", which
// asks for a name. An object exists on the server once something is written to it.

import type { CollabChannel } from '../protocol.js';
import type { CollabContext } from './collabpanel.js';
import { h } from './dom.js';

/** The channels with several objects in the UI (the file drop stays `files/main`). */
export type PickedChannel = Exclude<CollabChannel, 'files'>;

/** The server's rule for object names: 1–64 of A-Z a-z 0-9 . _ -, not starting with '.'. */
export const validObjectName = (name: string): boolean => /^(?!\.)[A-Za-z0-9._-]{1,64}$/.test(name);

/** Not a valid object name, so it cannot clash with one. */
const NEW = '.new';

const NOUN: Record<PickedChannel, string> = { chat: 'Chat room', whiteboard: 'Whiteboard', board: 'Board' };

export class ObjectPicker {
  readonly el: HTMLElement;
  private readonly select: HTMLSelectElement;
  private readonly form: HTMLFormElement;
  private readonly input: HTMLInputElement;
  private readonly problem: HTMLElement;
  private readonly known = new Set<string>(['main']);
  private current = 'main';

  constructor(
    private readonly ctx: CollabContext,
    private readonly channel: PickedChannel,
    /** The person picked another object (the panel switches, then calls `setCurrent`). */
    private readonly onPick: (name: string) => void,
  ) {
    const noun = NOUN[channel];
    this.select = h('select', { className: 'object-select', 'data-testid': `${channel}-objects`, 'aria-label': noun, title: noun });
    const refresh = () => this.refresh();
    this.select.addEventListener('focus', refresh);
    this.select.addEventListener('pointerdown', refresh);
    this.select.addEventListener('change', () => {
      const name = this.select.value;
      if (name === NEW) {
        this.select.value = this.current;
        this.askName(true);
      } else if (name !== this.current) {
        this.onPick(name);
      }
    });
    this.input = h('input', { 'data-testid': `${channel}-object-name`, placeholder: `New ${noun.toLowerCase()} name`, 'aria-label': `New ${noun.toLowerCase()} name`, maxlength: 64, spellcheck: false });
    this.problem = h('span', { className: 'object-problem', role: 'alert', 'data-testid': `${channel}-object-error` });
    this.input.addEventListener('input', () => (this.problem.textContent = ''));
    this.input.addEventListener('keydown', (ev) => ev.key === 'Escape' && this.askName(false));
    this.form = h('form', { className: 'object-new', hidden: true, onsubmit: (ev) => (ev.preventDefault(), this.create()) },
      this.input,
      h('button', { type: 'submit', className: 'small', 'data-testid': `${channel}-object-open` }, 'Open'),
      h('button', { type: 'button', className: 'small ghost', onclick: () => this.askName(false) }, 'Cancel'),
      this.problem);
    this.el = h('div', { className: 'object-picker' }, this.select, this.form);
    this.render();
  }

  /** The object shown now (after a switch, also one opened from elsewhere). */
  setCurrent(name: string): void {
    this.current = name;
    this.known.add(name);
    this.render();
  }

  /** Asks the server which objects of the channel hold data. */
  refresh(): void {
    if (!this.ctx.room) return;
    this.ctx.listObjects().then(
      (list) => {
        const before = this.known.size;
        for (const o of list) if (o.channel === this.channel && validObjectName(o.name)) this.known.add(o.name);
        if (this.known.size !== before) this.render();
      },
      () => undefined, // the names known here stay usable
    );
  }

  private askName(open: boolean): void {
    this.form.hidden = !open;
    this.problem.textContent = '';
    if (open) {
      this.input.value = '';
      this.input.focus();
    }
  }

  private create(): void {
    const name = this.input.value.trim();
    if (!validObjectName(name)) {
      this.problem.textContent = "1–64 letters, digits, '.', '_' or '-', not starting with '.'";
      this.input.focus();
      return;
    }
    this.askName(false);
    this.known.add(name);
    if (name === this.current) this.render();
    else this.onPick(name);
  }

  private render(): void {
    const names = [...this.known].filter((n) => n !== 'main').sort((a, b) => a.localeCompare(b));
    const options = ['main', ...names].map((n) => h('option', { value: n }, n));
    this.select.replaceChildren(...options, h('option', { value: NEW }, 'New…'));
    this.select.value = this.current;
  }
}
