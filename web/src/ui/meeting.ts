// The meeting view: tile grid, screen-share stage, controls and participants panel. It renders
// from the Session's state on every change, keeping DOM nodes (and their playing videos) keyed.

import type { Moderation } from '../moderation.js';
import { mayPublish, type ParticipantId, type ParticipantInfo, type TrackId, type TrackInfo } from '../protocol.js';
import type { Session } from '../session.js';
import { h, icon } from './dom.js';
import { icons } from './icons.js';
import { ParticipantsPanel, type RecordingsSource } from './participants.js';

export interface MeetingActions {
  toggleMic(): void;
  toggleCamera(): void;
  toggleScreen(): void;
  toggleHand(): void;
  leave(): void;
  /** The participants panel was opened or closed. */
  panelToggled(open: boolean): void;
  /** The room's recordings (listed for moderators in the participants panel). */
  recordings: RecordingsSource;
}

interface TileModel {
  key: string;
  participantId: ParticipantId;
  source: 'camera' | 'screen';
  name: string;
  self: boolean;
  /** The remote track shown (for subscription heights); null for own tiles. */
  trackId: TrackId | null;
  media: MediaStreamTrack | null;
  micMuted: boolean;
  speaking: boolean;
  handRaised: boolean;
  /** Pinned (its camera always received); null when the tile can't be pinned (own, screens). */
  pinned: boolean | null;
}

interface Tile {
  el: HTMLDivElement;
  video: HTMLVideoElement;
  name: HTMLSpanElement;
  avatar: HTMLDivElement;
  micMuted: HTMLSpanElement;
  hand: HTMLSpanElement;
  pin: HTMLButtonElement;
  media: MediaStreamTrack | null;
  trackId: TrackId | null;
}

/** Only re-subscribe when a tile's height changed by more than this share. */
const HEIGHT_CHANGE = 0.2;
const LAYOUT_DEBOUNCE_MS = 400;

function initials(name: string): string {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  return ((parts[0]?.[0] ?? '?') + (parts.length > 1 ? (parts[parts.length - 1]?.[0] ?? '') : '')).toUpperCase();
}

function trackOf(p: ParticipantInfo, source: TrackInfo['source']): TrackInfo | undefined {
  return p.tracks.find((t) => t.source === source);
}

export class MeetingView {
  private readonly tiles = new Map<string, Tile>();
  /** One hidden <audio> per audio slot, by the slot's receiving track. */
  private readonly audio = new Map<MediaStreamTrack, HTMLAudioElement>();
  private readonly grid = h('div', { className: 'grid', role: 'list', 'aria-label': 'Participants' });
  private readonly screens = h('div', { className: 'screens', 'aria-label': 'Screen shares' });
  private readonly stage = h('main', { className: 'stage' }, this.screens, this.grid);
  private readonly audioBox = h('div', { hidden: true });
  private readonly roomTitle = h('h1', { className: 'room-name' });
  private readonly status = h('span', { className: 'status', role: 'status' });
  private readonly count = h('span', { className: 'badge', id: 'participant-count' }, '1');
  /** People waiting in the lobby (moderators only). */
  private readonly lobbyCount = h('span', { className: 'badge badge-attention', id: 'lobby-count', hidden: true });
  /** Announces recording starting and stopping; holds the badge while it runs. */
  private readonly recordingLive = h('span', { className: 'recording-live', role: 'status', 'aria-live': 'polite' });
  private readonly recordingBadge = h(
    'span',
    { className: 'recording-indicator', 'data-testid': 'recording-indicator', title: 'This meeting is being recorded' },
    h('span', { className: 'recording-dot', 'aria-hidden': 'true' }),
    'Recording',
  );
  /** null until the first render (nothing to announce for the state one joins in, but the badge). */
  private recording: boolean | null = null;
  private readonly participants: ParticipantsPanel;
  private readonly panel: HTMLElement;
  private readonly micButton: HTMLButtonElement;
  private readonly handButton: HTMLButtonElement;
  private readonly cameraButton: HTMLButtonElement;
  private readonly screenButton: HTMLButtonElement;
  private readonly peopleButton: HTMLButtonElement;
  private readonly leaveButton: HTMLButtonElement;
  /** Rendered heights of remote video tiles, by the track they show. */
  private readonly heights = new Map<TrackId, number>();
  private readonly reported = new Map<TrackId, number>();
  private readonly resize: ResizeObserver;
  private layoutTimer: number | undefined;
  private session: Session | null = null;
  private readonly onPanelToggled: (open: boolean) => void;

  constructor(root: HTMLElement, actions: MeetingActions) {
    this.onPanelToggled = actions.panelToggled;
    this.participants = new ParticipantsPanel(actions.recordings);
    this.panel = this.participants.el;
    // Toggle buttons keep one name; aria-pressed (and the styling) tells the state.
    const toggle = (id: string, label: string, svg: string, run: () => void) =>
      h('button', { id, type: 'button', className: 'control', 'aria-pressed': 'false', title: label, onclick: run },
        icon(svg), h('span', { className: 'control-label' }, label));
    this.micButton = toggle('mute-mic', 'Mute', icons.mic, actions.toggleMic);
    this.cameraButton = toggle('mute-camera', 'Stop video', icons.camera, actions.toggleCamera);
    this.screenButton = toggle('share-screen', 'Share screen', icons.screen, actions.toggleScreen);
    this.handButton = toggle('raise-hand', 'Raise hand', icons.hand, actions.toggleHand);
    this.peopleButton = h(
      'button',
      { id: 'toggle-participants', type: 'button', className: 'control', 'aria-expanded': 'false', 'aria-controls': 'participants-panel', title: 'Participants', onclick: () => this.togglePanel() },
      icon(icons.people),
      h('span', { className: 'control-label' }, 'People'),
      this.count,
      this.lobbyCount,
    );
    this.leaveButton = h(
      'button',
      { id: 'leave', type: 'button', className: 'control danger', title: 'Leave the meeting', onclick: actions.leave },
      icon(icons.leave),
      h('span', { className: 'control-label' }, 'Leave'),
    );
    this.resize = new ResizeObserver((entries) => this.onResize(entries));
    root.replaceChildren(
      h(
        'div',
        { className: 'meeting', id: 'meeting' },
        h('header', { className: 'meeting-header' }, h('span', { className: 'brand small' }, 'Ting'), this.roomTitle, this.recordingLive, this.status),
        h('div', { className: 'meeting-body' }, this.stage, this.panel),
        h(
          'nav',
          { className: 'controls', 'aria-label': 'Meeting controls' },
          this.micButton,
          this.cameraButton,
          this.screenButton,
          this.handButton,
          this.peopleButton,
          this.leaveButton,
        ),
        this.audioBox,
      ),
    );
    this.resize.observe(this.grid);
  }

  /** Height of the tile showing remote track `trackId`, scaled for high-density screens. */
  tileHeight(trackId: TrackId): number | undefined {
    // The last height reported to the session, so small jitter does not change subscriptions.
    const css = this.reported.get(trackId) ?? this.heights.get(trackId);
    // Up to 2× device pixels: a sharper layer on HiDPI screens, but not a 4K one for a phone.
    return css === undefined ? undefined : css * Math.min(window.devicePixelRatio || 1, 2);
  }

  /** An add-on's side panel (chat, whiteboard, ...) beside the stage, its toggle among the controls. */
  addSidePanel(panel: HTMLElement, toggle: HTMLElement): void {
    this.panel.before(panel);
    this.leaveButton.before(toggle);
  }

  setStatus(text: string): void {
    this.status.textContent = text;
  }

  render(session: Session, moderation: Moderation): void {
    this.session = session;
    this.roomTitle.textContent = session.room;
    const models = this.tileModels(session);
    this.renderTiles(models);
    this.renderAudio(session);
    this.renderControls(session);
    this.renderRecording(moderation.recording);
    this.renderPanel(session, moderation);
    this.layoutGrid();
    this.measureNewTiles();
  }

  /** New tiles get a height right away, before the ResizeObserver reports, for the first subscription. */
  private measureNewTiles(): void {
    for (const tile of this.tiles.values()) {
      if (tile.trackId !== null && !this.heights.get(tile.trackId)) {
        this.heights.set(tile.trackId, tile.el.clientHeight);
      }
    }
  }

  destroy(): void {
    this.resize.disconnect();
    clearTimeout(this.layoutTimer);
    for (const a of this.audio.values()) a.srcObject = null;
    for (const t of this.tiles.values()) t.video.srcObject = null;
  }

  private tileModels(s: Session): TileModel[] {
    const speaking = s.activeSpeaker;
    const selfMic = s.localTrack('microphone');
    const models: TileModel[] = [
      {
        key: 'self:camera',
        participantId: s.self.id,
        source: 'camera',
        name: `${s.self.name} (you)`,
        self: true,
        trackId: null,
        media: s.localTrack('camera') && !s.isMuted('camera') ? s.localTrack('camera') : null,
        micMuted: selfMic !== null && s.isMuted('microphone'),
        speaking: speaking === s.self.id,
        handRaised: !!s.self.hand_raised,
        pinned: null,
      },
    ];
    const ownScreen = s.localTrack('screen');
    if (ownScreen) {
      models.push({
        key: 'self:screen',
        participantId: s.self.id,
        source: 'screen',
        name: 'Your screen',
        self: true,
        trackId: null,
        media: ownScreen,
        micMuted: false,
        speaking: false,
        handRaised: false,
        pinned: null,
      });
    }
    const people = [...s.participants.values()].sort((a, b) => a.id - b.id);
    for (const p of people) {
      // Receive-only roles get no tile (a webinar audience would bury the speakers); they are
      // listed in the participants panel.
      if (!mayPublish(p.role) && p.tracks.length === 0) continue;
      const cam = trackOf(p, 'camera');
      const mic = trackOf(p, 'microphone');
      models.push({
        key: `${p.id}:camera`,
        participantId: p.id,
        source: 'camera',
        name: p.name,
        self: false,
        trackId: cam?.id ?? null,
        media: cam && !cam.muted ? s.remoteMedia(cam.id) : null,
        micMuted: mic?.muted ?? false,
        speaking: speaking === p.id,
        handRaised: !!p.hand_raised,
        pinned: s.pinned === p.id,
      });
      for (const screen of p.tracks.filter((t) => t.source === 'screen')) {
        models.push({
          key: `${p.id}:screen:${screen.id}`,
          participantId: p.id,
          source: 'screen',
          name: `${p.name} (screen)`,
          self: false,
          trackId: screen.id,
          media: screen.muted ? null : s.remoteMedia(screen.id),
          micMuted: false,
          speaking: false,
          handRaised: false,
          pinned: null,
        });
      }
    }
    return models;
  }

  private renderTiles(models: TileModel[]): void {
    const wanted = new Set(models.map((m) => m.key));
    for (const [key, tile] of this.tiles) {
      if (wanted.has(key)) continue;
      this.resize.unobserve(tile.el);
      tile.video.srcObject = null;
      tile.el.remove();
      this.tiles.delete(key);
      if (tile.trackId !== null) this.heights.delete(tile.trackId);
    }
    const gridOrder: HTMLElement[] = [];
    const screenOrder: HTMLElement[] = [];
    for (const m of models) {
      const tile = this.tiles.get(m.key) ?? this.createTile(m);
      this.updateTile(tile, m);
      (m.source === 'screen' ? screenOrder : gridOrder).push(tile.el);
    }
    this.placeInOrder(this.grid, gridOrder);
    this.placeInOrder(this.screens, screenOrder);
    this.stage.classList.toggle('has-screen', screenOrder.length > 0);
  }

  /** Appends only what is out of place: moving a playing <video> around is wasteful. */
  private placeInOrder(parent: HTMLElement, els: HTMLElement[]): void {
    els.forEach((el, i) => {
      if (parent.children[i] !== el) parent.insertBefore(el, parent.children[i] ?? null);
    });
  }

  private createTile(m: TileModel): Tile {
    const video = h('video', { autoplay: true, playsinline: true });
    // Sound plays through separate <audio> elements; tiles only show pictures.
    video.muted = true;
    const micMuted = h('span', { className: 'mic-muted', title: 'Microphone muted', hidden: true });
    micMuted.append(icon(icons.micOff), h('span', { className: 'visually-hidden' }, 'Microphone muted'));
    const hand = h('span', { className: 'hand-raised', title: 'Hand raised', hidden: true });
    hand.append(icon(icons.hand), h('span', { className: 'visually-hidden' }, 'Hand raised'));
    const name = h('span', { className: 'tile-name' });
    // Pinning keeps this camera among the received videos (last-N); one pin at most.
    const pin = h('button', { type: 'button', className: 'pin', 'data-action': 'pin', 'aria-pressed': 'false', hidden: true });
    pin.append(icon(icons.pin), h('span', { className: 'visually-hidden' }, 'Pin'));
    pin.addEventListener('click', () => {
      const id = Number(el.dataset.participantId);
      this.session?.setPinned(this.session.pinned === id ? null : id);
    });
    const avatar = h('div', { className: 'avatar', 'aria-hidden': 'true' });
    const el = h(
      'div',
      {
        className: `tile${m.self ? ' self' : ''}`,
        'data-participant-id': m.participantId,
        'data-source': m.source,
        role: m.source === 'camera' ? 'listitem' : 'region',
      },
      video,
      avatar,
      hand,
      pin,
      h('div', { className: 'tile-label' }, micMuted, name),
    );
    if (m.self && m.source === 'camera') video.classList.add('mirror');
    const tile: Tile = { el, video, name, avatar, micMuted, hand, pin, media: null, trackId: null };
    this.tiles.set(m.key, tile);
    if (!m.self) this.resize.observe(el);
    return tile;
  }

  private updateTile(tile: Tile, m: TileModel): void {
    if (tile.media !== m.media) {
      tile.media = m.media;
      tile.video.srcObject = m.media ? new MediaStream([m.media]) : null;
    }
    if (tile.trackId !== m.trackId) {
      if (tile.trackId !== null) this.heights.delete(tile.trackId);
      tile.trackId = m.trackId;
    }
    // A fresh rejoin keeps the view but gets a new participant id.
    tile.el.dataset.participantId = String(m.participantId);
    tile.name.textContent = m.name;
    tile.avatar.textContent = initials(m.name.replace(/ \((you|screen)\)$/, ''));
    tile.el.setAttribute('aria-label', `${m.name}${m.micMuted ? ', microphone muted' : ''}${m.handRaised ? ', hand raised' : ''}`);
    tile.el.classList.toggle('video-off', m.media === null);
    tile.el.classList.toggle('speaking', m.speaking);
    tile.micMuted.hidden = !m.micMuted;
    tile.hand.hidden = !m.handRaised;
    tile.el.classList.toggle('hand-up', m.handRaised);
    tile.pin.hidden = m.pinned === null;
    tile.pin.setAttribute('aria-pressed', String(!!m.pinned));
    tile.pin.title = m.pinned ? `Unpin ${m.name}` : `Pin ${m.name}: always show their video`;
    tile.el.classList.toggle('pinned', !!m.pinned);
  }

  /**
   * The audio slots play the loudest speakers, screen-share sound plays beside them; each m-line
   * gets its own element, made once.
   */
  private renderAudio(s: Session): void {
    const tracks = [...s.audioSlotMedia().map((m) => m.track), ...s.screenAudioMedia()];
    for (const track of tracks) {
      if (this.audio.has(track)) continue;
      const el = h('audio', { autoplay: true });
      el.srcObject = new MediaStream([track]);
      this.audio.set(track, el);
      this.audioBox.append(el);
      el.play().catch(() => {
        // Autoplay was refused (no user gesture yet): the next click anywhere starts sound.
        document.addEventListener('click', () => void el.play().catch(() => undefined), { once: true });
      });
    }
  }

  private renderControls(s: Session): void {
    const hasMic = s.localTrack('microphone') !== null;
    const hasCamera = s.localTrack('camera') !== null;
    const micOff = !hasMic || s.isMuted('microphone');
    const camOff = !hasCamera || s.isMuted('camera');
    this.setToggle(this.micButton, micOff, micOff ? icons.micOff : icons.mic, !hasMic ? 'Start the microphone' : micOff ? 'Unmute' : 'Mute');
    this.setToggle(this.cameraButton, camOff, camOff ? icons.cameraOff : icons.camera, !hasCamera ? 'Start the camera' : camOff ? 'Start video' : 'Stop video');
    this.setToggle(this.screenButton, s.sharingScreen, icons.screen, s.sharingScreen ? 'Stop sharing' : 'Share screen');
    for (const b of [this.micButton, this.cameraButton, this.screenButton]) {
      b.disabled = !s.canPublish;
      if (!s.canPublish) b.title = 'Your role in this room cannot publish; raise your hand to ask to speak';
    }
    const hand = !!s.self.hand_raised;
    this.setToggle(this.handButton, hand, icons.hand, hand ? 'Lower your hand' : 'Raise your hand to ask to speak');
  }

  /** `hint` (the tooltip) names what a click does; the accessible name stays put. */
  private setToggle(button: HTMLButtonElement, pressed: boolean, svg: string, hint: string): void {
    button.setAttribute('aria-pressed', String(pressed));
    button.title = hint;
    const iconEl = button.querySelector('.icon');
    if (iconEl && iconEl.innerHTML !== svg) iconEl.innerHTML = svg;
  }

  /** The badge in the header while the meeting is recorded; the live region says when that changes. */
  private renderRecording(recording: boolean): void {
    if (recording === this.recording) return;
    const before = this.recording;
    this.recording = recording;
    if (recording) this.recordingLive.replaceChildren(this.recordingBadge);
    else if (before === null) this.recordingLive.replaceChildren();
    else this.recordingLive.replaceChildren(h('span', { className: 'visually-hidden' }, 'Recording stopped'));
  }

  private renderPanel(s: Session, m: Moderation): void {
    this.count.textContent = String(s.participantCount);
    const waiting = this.participants.waiting;
    this.lobbyCount.hidden = waiting === 0;
    this.lobbyCount.textContent = String(waiting);
    this.lobbyCount.title = `${waiting} waiting in the lobby`;
    this.participants.render(s, m);
  }

  get panelOpen(): boolean {
    return !this.panel.hidden;
  }

  /** Opens the participants panel (e.g. from a "waiting in the lobby" notice). */
  openPanel(): void {
    if (this.panel.hidden) this.togglePanel();
    this.participants.reveal();
  }

  private togglePanel(): void {
    this.panel.hidden = !this.panel.hidden;
    this.peopleButton.setAttribute('aria-expanded', String(!this.panel.hidden));
    if (!this.panel.hidden) this.participants.opened();
    this.layoutGrid();
    this.onPanelToggled(!this.panel.hidden);
  }

  /** Picks the column count that gives the largest 16:9 tiles in the space available. */
  private layoutGrid(): void {
    const n = this.grid.children.length;
    const { clientWidth: w, clientHeight: hgt } = this.grid;
    if (n === 0 || w === 0 || hgt === 0) return;
    const gap = 8;
    let best = { cols: 1, width: 0 };
    for (let cols = 1; cols <= n; cols++) {
      const rows = Math.ceil(n / cols);
      const width = Math.min((w - gap * (cols - 1)) / cols, ((hgt - gap * (rows - 1)) / rows) * (16 / 9));
      if (width > best.width) best = { cols, width };
    }
    this.grid.style.setProperty('--tile-width', `${Math.floor(best.width)}px`);
  }

  private onResize(entries: ResizeObserverEntry[]): void {
    let gridResized = false;
    for (const e of entries) {
      if (e.target === this.grid) {
        gridResized = true;
        continue;
      }
      const tile = [...this.tiles.values()].find((t) => t.el === e.target);
      if (tile?.trackId != null) this.heights.set(tile.trackId, Math.round(e.contentRect.height));
    }
    if (gridResized) this.layoutGrid();
    clearTimeout(this.layoutTimer);
    this.layoutTimer = window.setTimeout(() => this.reportLayout(), LAYOUT_DEBOUNCE_MS);
  }

  /** Tells the session about tile sizes when one changed noticeably (it re-subscribes). */
  private reportLayout(): void {
    let changed = false;
    for (const [id, height] of this.heights) {
      const before = this.reported.get(id);
      if (before === undefined || Math.abs(height - before) > before * HEIGHT_CHANGE) {
        this.reported.set(id, height);
        changed = true;
      }
    }
    for (const id of this.reported.keys()) if (!this.heights.has(id)) this.reported.delete(id);
    if (changed) this.session?.layoutChanged();
  }
}
