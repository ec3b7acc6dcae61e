// The landing page: display name and room, then a quick-join token from the server.

import { ApiError, quickJoin, type ServerConfig } from '../api.js';
import { isValidRoomName } from '../protocol.js';
import { h } from './dom.js';

export interface LandingOptions {
  room: string;
  name: string;
  /** null when /api/config could not be read; joining is still attempted. */
  config: ServerConfig | null;
  /** Came for the team space (`?space=`): that button gets the focus. */
  preferSpace?: boolean;
  /** `space`: the room's chat, whiteboard, board and files without the meeting. */
  onToken(token: string, room: string, name: string, mode: 'meeting' | 'space'): void;
}

export function showLanding(root: HTMLElement, opts: LandingOptions): void {
  const nameInput = h('input', {
    id: 'name',
    name: 'name',
    autocomplete: 'name',
    required: true,
    maxlength: 64,
    value: opts.name,
  });
  const roomInput = h('input', {
    id: 'room',
    name: 'room',
    required: true,
    maxlength: 64,
    autocapitalize: 'off',
    spellcheck: 'false',
    'aria-describedby': 'room-hint',
    value: opts.room,
  });
  const error = h('p', { id: 'landing-error', className: 'form-error', role: 'alert', hidden: true });
  const join = h('button', { id: 'join', type: 'submit', className: 'primary' }, 'Join');
  const space = h('button', { id: 'open-space', type: 'button', title: "The room's chat, whiteboard, board and files, without video" }, 'Team space');
  let mode: 'meeting' | 'space' = 'meeting';
  space.addEventListener('click', () => {
    mode = 'space';
    form.requestSubmit();
  });
  const quickStartOff = opts.config?.quick_start === false;

  const fail = (message: string, field?: HTMLInputElement) => {
    error.textContent = message;
    error.hidden = false;
    field?.setAttribute('aria-invalid', 'true');
    field?.focus();
  };

  const form = h(
    'form',
    { id: 'landing-form', novalidate: true },
    h('label', { for: 'name' }, 'Your name'),
    nameInput,
    h('label', { for: 'room' }, 'Room'),
    roomInput,
    h('p', { id: 'room-hint', className: 'hint' }, "Letters, digits, '-', '_' and '.' (up to 64)."),
    error,
    h('div', { className: 'landing-actions' }, join, space),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const chosen = mode;
    mode = 'meeting';
    error.hidden = true;
    nameInput.removeAttribute('aria-invalid');
    roomInput.removeAttribute('aria-invalid');
    const name = nameInput.value.trim();
    const room = roomInput.value.trim();
    if (!name) return fail('Please enter your name.', nameInput);
    if (!isValidRoomName(room)) {
      return fail("That room name is not valid: use 1–64 letters, digits, '-', '_' or '.'.", roomInput);
    }
    const busy = chosen === 'space' ? space : join;
    const label = busy.textContent;
    join.disabled = space.disabled = true;
    busy.textContent = 'Joining…';
    quickJoin(room, name)
      .then((res) => opts.onToken(res.token, res.room || room, name, chosen))
      .catch((err: unknown) => {
        join.disabled = space.disabled = false;
        busy.textContent = label;
        const message = err instanceof Error && err.message ? err.message : 'Could not join.';
        // Server messages are lower-case fragments ("quick start is turned off …"): make a sentence.
        const sentence = message[0]?.toUpperCase() + message.slice(1) + (/[.!?]$/.test(message) ? '' : '.');
        fail(sentence, err instanceof ApiError && err.code === 'bad_message' ? roomInput : undefined);
      });
  });

  root.replaceChildren(
    h(
      'main',
      { className: 'card landing', 'aria-labelledby': 'landing-title' },
      h('h1', { id: 'landing-title', className: 'brand' }, 'Ting'),
      h('p', { className: 'subtitle' }, 'Video meetings on your own server.'),
      quickStartOff &&
        h(
          'p',
          { className: 'notice', role: 'status' },
          'This server admits people with an invite link only. Open the link you were sent.',
        ),
      form,
    ),
  );
  (opts.room && !opts.name ? nameInput : opts.room ? (opts.preferSpace ? space : join) : nameInput).focus();
}
