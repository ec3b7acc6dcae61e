// The participants panel: everybody in the room with their hand, role and mic/camera state;
// for hosts and moderators also the room settings, the lobby and per-person actions. Rows are
// kept per participant and updated in place, so a click or the keyboard focus survives the
// frequent re-renders (active speaker, mute changes).

import type { Recording } from '../api.js';
import type { Moderation } from '../moderation.js';
import { mayPublish, type ParticipantId, type ParticipantInfo, type Role, type TrackKind } from '../protocol.js';
import type { Session } from '../session.js';
import { h, icon } from './dom.js';
import { formatBytes } from './files.js';
import { icons } from './icons.js';

/** The room's recordings over HTTP (the token stays with the caller). */
export interface RecordingsSource {
  list(): Promise<Recording[]>;
  /** A download link for one file of a recording. */
  url(id: string, file: string): string;
}

/** After a recording stops, wait this long before listing (the last files are being closed). */
const RECORDINGS_RELIST_MS = 1000;

type Action = 'promote' | 'demote' | 'mute-audio' | 'stop-video' | 'allow-unmute' | 'remove';

interface Row {
  el: HTMLLIElement;
  hand: HTMLSpanElement;
  name: HTMLSpanElement;
  role: HTMLSpanElement;
  stateText: HTMLSpanElement;
  mic: HTMLSpanElement;
  camera: HTMLSpanElement;
  actions: HTMLDivElement;
  buttons: Record<Action, HTMLButtonElement>;
  confirm: HTMLDivElement;
  confirmText: HTMLSpanElement;
}

interface LobbyRow {
  el: HTMLLIElement;
  name: HTMLSpanElement;
}

const ROLE_LABELS: Record<Role, string> = {
  host: 'Host',
  moderator: 'Moderator',
  speaker: '',
  attendee: 'Attendee',
  viewer: 'Viewer',
};

/** Sets an icon's markup only when it changes (keeps the DOM quiet). */
function setIcon(el: HTMLElement, svg: string, off: boolean): void {
  if (el.innerHTML !== svg) el.innerHTML = svg;
  el.classList.toggle('off', off);
}

/** A recording's id is its start in unix ms: show when it started. */
function describeRecording(id: string): string {
  const ms = Number(id);
  if (!/^\d{12,14}$/.test(id) || !Number.isFinite(ms)) return id;
  return `Started ${new Date(ms).toLocaleString()}`;
}

export class ParticipantsPanel {
  readonly el: HTMLElement;
  private readonly count = h('span', {});
  private readonly list = h('ul', { className: 'participant-list' });
  private readonly rows = new Map<ParticipantId, Row>();
  private readonly lobbyRows = new Map<ParticipantId, LobbyRow>();
  /** Rows asking "Remove …?". */
  private readonly confirming = new Set<ParticipantId>();

  private readonly lockRoom = h('input', { type: 'checkbox', id: 'lock-room' });
  private readonly lobbyToggle = h('input', { type: 'checkbox', id: 'lobby-toggle' });
  private readonly selfUnmute = h('input', { type: 'checkbox', id: 'allow-self-unmute' });
  private readonly muteAll = h('button', { id: 'mute-all', type: 'button', className: 'small' }, icon(icons.micOff), 'Mute all');
  private readonly recordToggle = h('button', { id: 'recording-toggle', type: 'button', className: 'small record-toggle', 'data-testid': 'recording-toggle' });
  private readonly roomControls: HTMLElement;

  private readonly recordingsList = h('ul', { className: 'recordings-list', 'data-testid': 'recordings-list' });
  private readonly recordingsNote = h('p', { className: 'recordings-note', role: 'status' });
  private readonly recordingsSection: HTMLElement;
  /** Whether the list was fetched since the panel was opened (or since the last change). */
  private recordingsLoaded = false;
  /** Answers to older requests are dropped. */
  private recordingsRequest = 0;
  private wasRecording: boolean | null = null;

  private readonly lobbyList = h('ul', { className: 'lobby-list' });
  private readonly lobbyBadge = h('span', { className: 'count-badge', id: 'lobby-badge' });
  private readonly admitAll = h('button', { id: 'admit-all', type: 'button', className: 'small' }, 'Admit all');
  private readonly lobbySection: HTMLElement;

  private readonly audienceSearch = h('input', {
    type: 'search',
    id: 'audience-search',
    placeholder: 'Find a viewer by name',
    'aria-label': 'Find a viewer by name',
  });
  private readonly audienceList = h('ul', { className: 'audience-list', id: 'audience-results' });
  private readonly audienceSection: HTMLElement;
  private readonly audienceRows = new Map<ParticipantId, HTMLLIElement>();
  private audienceTimer: number | undefined;

  private moderation: Moderation | null = null;
  private session: Session | null = null;

  constructor(private readonly recordings: RecordingsSource) {
    const toggle = (input: HTMLInputElement, label: string, hint: string) =>
      h('label', { className: 'switch', title: hint }, input, h('span', {}, label));
    this.lockRoom.addEventListener('change', () => this.moderation?.updateRoom({ locked: this.lockRoom.checked }));
    this.lobbyToggle.addEventListener('change', () => this.moderation?.updateRoom({ lobby: this.lobbyToggle.checked }));
    this.selfUnmute.addEventListener('change', () =>
      this.moderation?.updateRoom({ allow_self_unmute: this.selfUnmute.checked }),
    );
    this.muteAll.addEventListener('click', () => this.moderation?.muteAll('audio'));
    this.muteAll.title = 'Mute everybody except hosts and moderators';
    this.roomControls = h(
      'section',
      { id: 'room-controls', className: 'room-controls', 'aria-label': 'Room settings', hidden: true },
      toggle(this.lockRoom, 'Lock room', 'Nobody new can join (hosts and moderators still can)'),
      toggle(this.lobbyToggle, 'Lobby', 'New people wait until a moderator admits them'),
      toggle(this.selfUnmute, 'Allow self-unmute', 'People muted by a moderator may unmute themselves'),
      h('div', { className: 'room-actions' }, this.muteAll, this.recordToggle),
    );
    this.recordToggle.addEventListener('click', () => {
      const m = this.moderation;
      if (m) m.setRecording(!m.recording);
    });

    const refresh = h('button', { type: 'button', className: 'small', 'data-testid': 'recordings-refresh' }, 'Refresh');
    refresh.addEventListener('click', () => void this.loadRecordings());
    this.recordingsSection = h(
      'section',
      { id: 'recordings', className: 'recordings', 'aria-labelledby': 'recordings-title', hidden: true },
      h('div', { className: 'section-title' }, h('h3', { id: 'recordings-title' }, 'Recordings'), refresh),
      this.recordingsNote,
      this.recordingsList,
    );

    this.admitAll.addEventListener('click', () => {
      for (const p of this.moderation?.lobby ?? []) this.moderation?.admit(p.id);
    });
    this.lobbySection = h(
      'section',
      { id: 'lobby', className: 'lobby', 'aria-labelledby': 'lobby-title', hidden: true },
      h('div', { className: 'section-title' }, h('h3', { id: 'lobby-title' }, 'Waiting in the lobby'), this.lobbyBadge, this.admitAll),
      this.lobbyList,
    );

    this.audienceSearch.addEventListener('input', () => {
      window.clearTimeout(this.audienceTimer);
      this.audienceTimer = window.setTimeout(() => this.moderation?.searchAudience(this.audienceSearch.value), 250);
    });
    this.audienceSection = h(
      'section',
      { id: 'audience', className: 'audience', 'aria-labelledby': 'audience-title', hidden: true },
      h('div', { className: 'section-title' }, h('h3', { id: 'audience-title' }, 'Audience (viewers)')),
      this.audienceSearch,
      this.audienceList,
    );

    this.el = h(
      'aside',
      { id: 'participants-panel', className: 'panel', hidden: true, 'aria-labelledby': 'participants-title' },
      h('h2', { id: 'participants-title' }, 'Participants (', this.count, ')'),
      this.roomControls,
      this.recordingsSection,
      this.lobbySection,
      this.list,
      this.audienceSection,
    );
  }

  /** How many wait in the lobby, for the badge on the People button (0 for non-moderators). */
  get waiting(): number {
    return this.moderation?.isModerator ? this.moderation.lobby.length : 0;
  }

  render(s: Session, m: Moderation): void {
    this.session = s;
    this.moderation = m;
    const people = [s.self, ...[...s.participants.values()].sort((a, b) => a.id - b.id)];
    this.count.textContent = String(s.participantCount);
    this.renderRoomControls(m);
    this.renderLobby(m);
    this.renderAudience(s, m);
    // Raised hands first (after oneself): whoever asks to speak should not be hard to find.
    const ordered = [people[0] as ParticipantInfo, ...people.slice(1).sort((a, b) => Number(b.hand_raised) - Number(a.hand_raised))];
    const wanted = new Set(ordered.map((p) => p.id));
    for (const [id, row] of this.rows) {
      if (wanted.has(id)) continue;
      row.el.remove();
      this.rows.delete(id);
      this.confirming.delete(id);
    }
    ordered.forEach((p, i) => {
      const row = this.rows.get(p.id) ?? this.createRow(p.id);
      this.updateRow(row, p, s, m);
      if (this.list.children[i] !== row.el) this.list.insertBefore(row.el, this.list.children[i] ?? null);
    });
  }

  /** The panel was opened: moderators get a fresh list of recordings. */
  opened(): void {
    this.recordingsLoaded = false;
    if (this.moderation?.isModerator) void this.loadRecordings();
  }

  /** Shows the lobby (or the list) at the top of the panel. */
  reveal(): void {
    (this.lobbySection.hidden ? this.list : this.lobbySection).scrollIntoView({ block: 'nearest' });
  }

  private renderRoomControls(m: Moderation): void {
    this.roomControls.hidden = !m.isModerator;
    this.recordingsSection.hidden = !m.isModerator;
    const recording = m.recording;
    const stopped = this.wasRecording === true && !recording;
    this.wasRecording = recording;
    if (!m.isModerator) return;
    this.lockRoom.checked = m.settings.locked;
    this.lobbyToggle.checked = m.settings.lobby;
    this.selfUnmute.checked = m.settings.allow_self_unmute;
    this.recordToggle.replaceChildren(
      h('span', { className: recording ? 'record-stop' : 'record-dot', 'aria-hidden': 'true' }),
      recording ? 'Stop recording' : 'Record',
    );
    this.recordToggle.classList.toggle('active', recording);
    this.recordToggle.title = recording
      ? 'Stop recording the meeting'
      : 'Record the meeting: everyone who publishes is recorded, and everyone sees that it runs';
    if (this.el.hidden) return;
    if (stopped) window.setTimeout(() => void this.loadRecordings(), RECORDINGS_RELIST_MS);
    // Opened before this participant became a moderator.
    else if (!this.recordingsLoaded) void this.loadRecordings();
  }

  /** Fetches the room's recordings and lists them with download links (newest first). */
  private async loadRecordings(): Promise<void> {
    const request = ++this.recordingsRequest;
    this.recordingsLoaded = true;
    this.recordingsNote.textContent = 'Loading…';
    let list: Recording[];
    try {
      list = await this.recordings.list();
    } catch (err) {
      if (request !== this.recordingsRequest) return;
      this.recordingsNote.textContent = `Could not list the recordings: ${(err as Error).message}`;
      return;
    }
    if (request !== this.recordingsRequest) return;
    const sorted = [...list].sort((a, b) => (b.id.length - a.id.length) || b.id.localeCompare(a.id));
    this.recordingsNote.textContent = sorted.length === 0 ? 'No recordings yet.' : '';
    this.recordingsList.replaceChildren(
      ...sorted.map((r) =>
        h(
          'li',
          { 'data-recording-id': r.id },
          h('span', { className: 'recording-when' }, describeRecording(r.id)),
          r.files.length === 0
            ? h('span', { className: 'recording-empty' }, 'No files')
            : h(
                'ul',
                { className: 'recording-files' },
                ...r.files.map((f) =>
                  h(
                    'li',
                    {},
                    h(
                      'a',
                      { href: f.url ?? this.recordings.url(r.id, f.name), download: f.name, 'data-testid': 'recording-file' },
                      f.name,
                    ),
                    h('span', { className: 'file-meta' }, ` ${formatBytes(f.size)}`),
                  ),
                ),
              ),
        ),
      ),
    );
  }

  /** Moderators find viewers (who are only counted) by name and invite them to speak. */
  private renderAudience(s: Session, m: Moderation): void {
    this.audienceSection.hidden = !m.isModerator;
    // Someone promoted since the search is in the list above now.
    const found = m.isModerator ? m.audience.filter((p) => !s.participants.has(p.id)) : [];
    const wanted = new Set(found.map((p) => p.id));
    for (const [id, row] of this.audienceRows) {
      if (wanted.has(id)) continue;
      row.remove();
      this.audienceRows.delete(id);
    }
    // Rows are kept across renders so that a click is never on a replaced button.
    found.forEach((p, i) => {
      let row = this.audienceRows.get(p.id);
      if (!row) {
        const invite = h('button', { type: 'button', className: 'small', 'data-action': 'promote' }, 'Invite to speak');
        invite.setAttribute('aria-label', `Invite ${p.name} to speak`);
        invite.addEventListener('click', () => this.moderation?.setRole(p.id, 'speaker'));
        row = h('li', { 'data-audience-row': String(p.id) }, h('span', { className: 'name' }, p.name), invite);
        this.audienceRows.set(p.id, row);
      }
      if (this.audienceList.children[i] !== row) this.audienceList.insertBefore(row, this.audienceList.children[i] ?? null);
    });
  }

  private renderLobby(m: Moderation): void {
    const waiting = m.isModerator ? m.lobby : [];
    this.lobbySection.hidden = waiting.length === 0;
    this.lobbyBadge.textContent = String(waiting.length);
    this.lobbyBadge.setAttribute('aria-label', `${waiting.length} waiting`);
    this.admitAll.hidden = waiting.length < 2;
    const wanted = new Set(waiting.map((p) => p.id));
    for (const [id, row] of this.lobbyRows) {
      if (wanted.has(id)) continue;
      row.el.remove();
      this.lobbyRows.delete(id);
    }
    waiting.forEach((p, i) => {
      let row = this.lobbyRows.get(p.id);
      if (!row) {
        const name = h('span', { className: 'participant-name' });
        const el = h(
          'li',
          { 'data-lobby-row': p.id },
          name,
          h('button', { type: 'button', className: 'small primary', 'data-action': 'admit', onclick: () => this.moderation?.admit(p.id) }, 'Admit'),
          h('button', { type: 'button', className: 'small', 'data-action': 'deny', onclick: () => this.moderation?.deny(p.id) }, 'Deny'),
        );
        row = { el, name };
        this.lobbyRows.set(p.id, row);
      }
      row.name.textContent = p.name;
      for (const b of row.el.querySelectorAll('button')) b.setAttribute('aria-label', `${b.textContent} ${p.name}`);
      if (this.lobbyList.children[i] !== row.el) this.lobbyList.insertBefore(row.el, this.lobbyList.children[i] ?? null);
    });
  }

  private createRow(id: ParticipantId): Row {
    const button = (action: Action, label: string, className = 'small') =>
      h('button', { type: 'button', className, 'data-action': action, onclick: () => this.act(id, action) }, label);
    const buttons: Record<Action, HTMLButtonElement> = {
      promote: button('promote', 'Make speaker'),
      demote: button('demote', 'Make attendee'),
      'mute-audio': button('mute-audio', 'Mute'),
      'stop-video': button('stop-video', 'Stop video'),
      'allow-unmute': button('allow-unmute', 'Allow to unmute'),
      remove: button('remove', 'Remove', 'small danger-text'),
    };
    const confirmText = h('span', { className: 'confirm-text' });
    const confirm = h(
      'div',
      { className: 'confirm', role: 'group', hidden: true },
      confirmText,
      h('button', { type: 'button', className: 'small danger', 'data-action': 'confirm-remove', onclick: () => this.confirmRemove(id) }, 'Remove'),
      h('button', { type: 'button', className: 'small', 'data-action': 'cancel-remove', onclick: () => this.cancelRemove(id) }, 'Cancel'),
    );
    const hand = h('span', { className: 'hand-raised', title: 'Hand raised', hidden: true });
    hand.append(icon(icons.hand), h('span', { className: 'visually-hidden' }, 'Hand raised'));
    const row: Row = {
      el: h('li', { 'data-participant-row': id, 'data-participant-id': id }),
      hand,
      name: h('span', { className: 'participant-name' }),
      role: h('span', { className: 'role-tag' }),
      stateText: h('span', { className: 'visually-hidden' }),
      mic: icon(icons.mic),
      camera: icon(icons.camera),
      actions: h('div', { className: 'participant-actions', role: 'group' }, ...Object.values(buttons)),
      buttons,
      confirm,
      confirmText,
    };
    row.el.append(
      h('div', { className: 'participant-main' }, row.hand, row.name, row.role,
        h('span', { className: 'participant-state' }, row.stateText, row.mic, row.camera)),
      row.actions,
      row.confirm,
    );
    this.rows.set(id, row);
    return row;
  }

  private updateRow(row: Row, p: ParticipantInfo, s: Session, m: Moderation): void {
    const self = p.id === s.self.id;
    const mic = self ? (s.localTrack('microphone') ? { muted: s.isMuted('microphone') } : undefined) : p.tracks.find((t) => t.source === 'microphone');
    const cam = self ? (s.localTrack('camera') ? { muted: s.isMuted('camera') } : undefined) : p.tracks.find((t) => t.source === 'camera');
    row.el.classList.toggle('speaking', s.activeSpeaker === p.id);
    row.el.classList.toggle('hand-up', !!p.hand_raised);
    row.hand.hidden = !p.hand_raised;
    row.name.textContent = self ? `${p.name} (you)` : p.name;
    row.role.textContent = ROLE_LABELS[p.role];
    row.role.hidden = ROLE_LABELS[p.role] === '';
    row.stateText.textContent = `${!mic ? 'no microphone' : mic.muted ? 'muted' : 'microphone on'}, ${!cam ? 'no camera' : cam.muted ? 'camera off' : 'camera on'}${p.hand_raised ? ', hand raised' : ''}`;
    setIcon(row.mic, !mic || mic.muted ? icons.micOff : icons.mic, !mic || mic.muted);
    setIcon(row.camera, !cam || cam.muted ? icons.cameraOff : icons.camera, !cam || cam.muted);

    const canAct = m.isModerator && m.canModerate(p);
    row.actions.hidden = !canAct || this.confirming.has(p.id);
    row.confirm.hidden = !canAct || !this.confirming.has(p.id);
    if (!canAct) {
      this.confirming.delete(p.id);
      return;
    }
    const b = row.buttons;
    const publishes = mayPublish(p.role);
    b.promote.hidden = publishes;
    // Hosts can take the floor from moderators too; a moderator row then says what it becomes.
    b.demote.hidden = !publishes;
    b['mute-audio'].hidden = !mic;
    b['mute-audio'].disabled = !!mic?.muted;
    b['stop-video'].hidden = !cam;
    b['stop-video'].disabled = !!cam?.muted;
    // Only meaningful where muted people may not unmute themselves.
    b['allow-unmute'].hidden = m.settings.allow_self_unmute || !(mic?.muted || cam?.muted);
    for (const [action, button] of Object.entries(b)) {
      button.setAttribute('aria-label', `${button.textContent} ${p.name}`);
      if (action === 'mute-audio') button.title = mic?.muted ? `${p.name} is muted` : `Mute ${p.name}`;
      if (action === 'stop-video') button.title = cam?.muted ? `${p.name}'s camera is off` : `Stop ${p.name}'s video`;
    }
    row.confirmText.textContent = `Remove ${p.name}? They cannot rejoin this meeting.`;
  }

  private act(id: ParticipantId, action: Action): void {
    const m = this.moderation;
    const p = this.session?.participants.get(id);
    if (!m || !p) return;
    const allowUnmute = (kind: TrackKind, source: 'microphone' | 'camera') => {
      if (p.tracks.some((t) => t.source === source && t.muted)) m.allowUnmute(id, kind);
    };
    switch (action) {
      case 'promote':
        return m.setRole(id, 'speaker');
      case 'demote':
        return m.setRole(id, 'attendee');
      case 'mute-audio':
        return m.mute(id, 'audio');
      case 'stop-video':
        return m.mute(id, 'video');
      case 'allow-unmute':
        allowUnmute('audio', 'microphone');
        allowUnmute('video', 'camera');
        return;
      case 'remove':
        this.confirming.add(id);
        this.rerender();
        this.rows.get(id)?.confirm.querySelector<HTMLButtonElement>('[data-action="cancel-remove"]')?.focus();
        return;
    }
  }

  private confirmRemove(id: ParticipantId): void {
    this.confirming.delete(id);
    this.moderation?.remove(id);
    this.rerender();
  }

  private cancelRemove(id: ParticipantId): void {
    this.confirming.delete(id);
    this.rerender();
    this.rows.get(id)?.buttons.remove.focus();
  }

  private rerender(): void {
    if (this.session && this.moderation) this.render(this.session, this.moderation);
  }
}
