// One meeting session on one RTCPeerConnection: publishing own tracks, receiving remote ones,
// mute and screen share. The client always offers and the server only answers, so offers are
// serialized here: one in flight at a time, and one more afterwards if anything changed meanwhile.

import {
  kindOf,
  mayPublish,
  type ClientMessage,
  type ErrorCode,
  type JoinedMessage,
  type ParticipantId,
  type ParticipantInfo,
  type PublishedTrack,
  type Role,
  type ServerMessage,
  type Subscription,
  type TrackId,
  type TrackInfo,
  type TrackKind,
  type TrackSource,
} from './protocol.js';
import { MAX_VIDEO_TILES, noteSpeaker, selectVideos } from './lastn.js';

/** What the session needs from the signalling layer. */
export interface SignalSender {
  readonly connected: boolean;
  send(msg: ClientMessage): boolean;
}

export interface LocalMedia {
  microphone: MediaStreamTrack | null;
  camera: MediaStreamTrack | null;
  micMuted: boolean;
  cameraMuted: boolean;
}

export type MediaStatus = 'new' | 'connecting' | 'connected' | 'disconnected' | 'failed' | 'closed';

export interface SessionListener {
  /** Something visible changed (participants, tracks, mute, speaker, local media). */
  changed(): void;
  /** A problem the user should know about; `key` groups messages that replace each other. */
  problem(key: string, message: string | null, level?: 'info' | 'warning' | 'error'): void;
  /** A moderator (or a fresh snapshot) changed this participant's role. */
  roleChanged(before: Role, after: Role): void;
}

/** Camera simulcast layers; the server picks one per subscriber from `max_height`. */
const CAMERA_ENCODINGS: RTCRtpEncodingParameters[] = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', maxBitrate: 1_500_000 },
];
/** Receive-only audio m-lines the server fills with the room's loudest speakers (its default N). */
const AUDIO_SLOTS = 3;
const ANSWER_TIMEOUT_MS = 15_000;
const RETRY_OFFER_MS = 3_000;
const NEGOTIATION_DELAY_MS = 30;
const RESUBSCRIBE_MS = 500;
/** Viewers get no roster changes; they refresh the roster at most this often when it matters. */
const VIEWER_ROSTER_MS = 1_000;
const ROSTER_PAGE = 500;
/** Server errors that mean "your last offer was refused". */
const OFFER_ERRORS: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['invalid_sdp', 'not_allowed']);

interface SendSlot {
  source: TrackSource;
  transceiver: RTCRtpTransceiver;
  track: MediaStreamTrack | null;
  muted: boolean;
  /** The server's id for this m-line, from the answer. */
  trackId: TrackId | null;
}

/** A receive-only video m-line. (Audio comes through the audio slots instead.) */
interface RecvSlot {
  transceiver: RTCRtpTransceiver;
  kind: TrackKind;
  /**
   * The remote track on this m-line (a video, or the sound of a screen share), or null when the
   * slot is free for reuse.
   */
  trackId: TrackId | null;
}

class OfferFailed extends Error {
  constructor(
    message: string,
    readonly retry: boolean,
    readonly retryLater = false,
  ) {
    super(message);
  }
}

export class Session {
  readonly pc: RTCPeerConnection;
  self: ParticipantInfo;
  readonly room: string;
  readonly participants = new Map<ParticipantId, ParticipantInfo>();
  activeSpeaker: ParticipantId | null;
  /** The participant whose camera is always received (last-N video), chosen by the user. */
  pinned: ParticipantId | null = null;
  /** Remote participants who spoke, most recent first: their cameras are received first. */
  private readonly speakers: ParticipantId[] = [];
  /** Everyone in the room (viewers too, who are counted but not listed), when the server says. */
  private serverCount: number | null;
  mediaStatus: MediaStatus = 'new';
  /** Height in pixels of the tile showing a remote video track, from the meeting view. */
  tileHeight: (trackId: TrackId) => number | undefined = () => undefined;
  /** Whether a moderator muted `kind` and the room forbids unmuting it oneself (from moderation). */
  unmuteLocked: (kind: TrackKind) => boolean = () => false;

  private readonly sendSlots: SendSlot[] = [];
  private readonly recvSlots: RecvSlot[] = [];
  /** Receive-only audio m-lines carrying the loudest speakers, whoever they are. */
  private readonly audioSlots: RTCRtpTransceiver[] = [];
  /** The server's latest `publish_layers` for our camera, applied again after renegotiations. */
  private layerWish: { trackId: TrackId; active: string[] } | null = null;
  /** Serializes `setParameters` calls. */
  private layersApplied: Promise<void> = Promise.resolve();
  private readonly localStream = new MediaStream();
  private negotiating = false;
  private wantNegotiation = false;
  private iceRestart = false;
  private pendingAnswer: {
    resolve: (a: { sdp: string; tracks: TrackInfo[] }) => void;
    reject: (e: OfferFailed) => void;
  } | null = null;
  /** Starts as "nothing": there is no point in telling the server that first. */
  private lastSubscriptions = JSON.stringify({ subscriptions: [] });
  private subscriptionTimer: number | undefined;
  private closed = false;
  /** The server refused our media (`not_allowed`) although the role looked fine. */
  private publishRefused = false;
  /**
   * `mute` messages sent and not yet confirmed by our own `track_updated` (or refused). While
   * one is pending for a track, the local state is ahead of the server's and is kept.
   */
  private pendingMutes: { trackId: TrackId; muted: boolean }[] = [];
  private rosterTimer: number | undefined;

  constructor(
    private readonly signal: SignalSender,
    joined: JoinedMessage,
    local: LocalMedia,
    private readonly listener: SessionListener,
  ) {
    this.self = joined.participant;
    this.room = joined.room;
    this.activeSpeaker = joined.active_speaker;
    this.noteSpeaker(joined.active_speaker);
    this.serverCount = joined.participant_count || null;
    // No ICE servers: the server's answer carries a host candidate we can reach directly.
    this.pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    this.pc.onconnectionstatechange = () => this.onConnectionState();
    for (const p of joined.participants) this.participants.set(p.id, p);

    if (this.canPublish) {
      if (local.microphone) this.publish('microphone', local.microphone, local.micMuted);
      if (local.camera) this.publish('camera', local.camera, local.cameraMuted);
    } else {
      // Receive-only roles: the server would refuse our tracks, so release the devices.
      local.microphone?.stop();
      local.camera?.stop();
    }
    for (let i = 0; i < AUDIO_SLOTS; i++) this.audioSlots.push(this.pc.addTransceiver('audio', { direction: 'recvonly' }));
    this.allocateReceivers();
    this.negotiate();
  }

  // ---- queries for the UI ----

  /** How many are in the room, oneself included. */
  get participantCount(): number {
    return Math.max(this.serverCount ?? 0, this.participants.size + 1);
  }

  /** Whether this participant may send media (the role can change, e.g. an attendee promoted). */
  get canPublish(): boolean {
    return mayPublish(this.self.role) && !this.publishRefused;
  }

  /** The local track currently sent for `source`, if any. */
  localTrack(source: TrackSource): MediaStreamTrack | null {
    return this.slotFor(source)?.track ?? null;
  }

  isMuted(source: 'microphone' | 'camera'): boolean {
    return this.slotFor(source)?.muted ?? true;
  }

  /** The media of remote video track `trackId`, once its receiving m-line is negotiated. */
  remoteMedia(trackId: TrackId): MediaStreamTrack | null {
    const slot = this.recvSlots.find((s) => s.trackId === trackId);
    return slot && this.isNegotiated(slot.transceiver) ? slot.transceiver.receiver.track : null;
  }

  /** The negotiated audio slots: each plays whichever loud speaker the server puts in it. */
  audioSlotMedia(): { mid: string; track: MediaStreamTrack }[] {
    return this.audioSlots.flatMap((t) => (this.isNegotiated(t) ? [{ mid: t.mid as string, track: t.receiver.track }] : []));
  }

  /** Sound that comes with screen shares, each on its own m-line (not a loudest-N slot). */
  screenAudioMedia(): MediaStreamTrack[] {
    return this.recvSlots.flatMap((slot) =>
      slot.kind === 'audio' && slot.trackId !== null && this.isNegotiated(slot.transceiver) ? [slot.transceiver.receiver.track] : [],
    );
  }

  /** What each negotiated video m-line shows, for tests and debugging (matches getStats `mid`). */
  receiving(): { mid: string; trackId: TrackId; participantId: ParticipantId; source: TrackSource }[] {
    const tracks = new Map(this.remoteTracks().map((t) => [t.id, t]));
    return this.recvSlots.flatMap((slot) => {
      if (slot.kind !== 'video') return [];
      const info = slot.trackId === null ? undefined : tracks.get(slot.trackId);
      const mid = slot.transceiver.mid;
      if (!info || mid === null || !this.isNegotiated(slot.transceiver)) return [];
      return [{ mid, trackId: info.id, participantId: info.participant_id, source: info.source }];
    });
  }

  // ---- user actions ----

  /** Pins a participant's camera (always received), or unpins with `null`. One pin at most. */
  setPinned(id: ParticipantId | null): void {
    if (this.pinned === id) return;
    this.pinned = id;
    this.allocateReceivers();
    this.syncSubscriptions();
    this.listener.changed();
  }

  setMuted(source: 'microphone' | 'camera', muted: boolean): void {
    const slot = this.slotFor(source);
    if (!slot?.track) return;
    if (!muted && slot.trackId !== null && this.unmuteLocked(kindOf(source))) {
      // A moderator muted us and the room forbids unmuting oneself: ask the server, which will
      // most likely refuse; stay muted until it agrees (its `track_updated` unmutes us).
      this.sendMute(slot.trackId, false);
      return;
    }
    slot.muted = muted;
    // Disabled tracks send silence / black frames, so nothing leaks even before the server knows.
    slot.track.enabled = !muted;
    if (slot.trackId !== null) this.sendMute(slot.trackId, muted);
    this.listener.changed();
  }

  /** Starts publishing a microphone or camera acquired after joining (or after a promotion). */
  addDevice(source: 'microphone' | 'camera', track: MediaStreamTrack, muted = false): void {
    if (!this.canPublish || this.slotFor(source)) return;
    this.publish(source, track, muted);
    this.negotiate();
    this.listener.changed();
  }

  get sharingScreen(): boolean {
    return this.slotFor('screen') !== undefined;
  }

  startScreenShare(stream: MediaStream): void {
    if (!this.canPublish) return;
    const video = stream.getVideoTracks()[0];
    const audio = stream.getAudioTracks()[0];
    if (!video) return;
    this.stopScreenShare(false);
    // The browser's own "Stop sharing" button ends the track.
    video.addEventListener('ended', () => this.stopScreenShare());
    this.publish('screen', video, false);
    if (audio) this.publish('screen_audio', audio, false);
    this.negotiate();
    this.listener.changed();
  }

  stopScreenShare(renegotiate = true): void {
    if (this.closed) return;
    let stopped = false;
    for (const slot of this.sendSlots) {
      if ((slot.source === 'screen' || slot.source === 'screen_audio') && slot.track) {
        slot.track.stop();
        this.localStream.removeTrack(slot.track);
        // Keep the transceiver, inactive, for the next share: m-lines can't be removed.
        slot.transceiver.sender.replaceTrack(null).catch(() => undefined);
        slot.transceiver.direction = 'inactive';
        slot.track = null;
        slot.trackId = null;
        stopped = true;
      }
    }
    if (stopped && renegotiate) {
      this.negotiate();
      this.listener.changed();
    }
  }

  /** Ends the session; `stopDevices: false` keeps the microphone and camera for a new session. */
  close(stopDevices = true): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.rosterTimer);
    this.pendingAnswer?.reject(new OfferFailed('session closed', false));
    for (const slot of this.sendSlots) {
      if (stopDevices || slot.source === 'screen' || slot.source === 'screen_audio') slot.track?.stop();
    }
    this.pc.close();
    this.mediaStatus = 'closed';
  }

  // ---- signalling ----

  handle(msg: ServerMessage): void {
    switch (msg.type) {
      case 'answer':
        if (this.pendingAnswer) this.pendingAnswer.resolve(msg);
        else console.warn('ting: answer without an offer in flight');
        return;
      case 'roster_changed':
        for (const p of [...msg.joined, ...msg.updated]) this.upsertParticipant(p);
        for (const d of msg.left) this.removeParticipant(d.participant_id);
        this.serverCount = msg.count;
        break;
      case 'roster_count':
        // Only viewers get this: somebody came or went, and they hear of it no other way.
        if (msg.count !== this.serverCount) this.refreshRoster();
        this.serverCount = msg.count;
        this.listener.changed();
        return;
      case 'roster_page':
        // Only viewers poll the roster; a moderator's pages are audience searches (moderation).
        if (msg.offset !== 0 || this.self.role !== 'viewer') return;
        if (msg.participants.length >= msg.total) {
          // The whole roster: whoever is missing has left.
          const present = new Set(msg.participants.map((p) => p.id));
          for (const id of [...this.participants.keys()]) if (!present.has(id)) this.removeParticipant(id);
        }
        for (const p of msg.participants) this.upsertParticipant(p);
        break;
      case 'participant_joined':
      case 'participant_updated':
        this.upsertParticipant(msg.participant);
        break;
      case 'participant_left':
        this.removeParticipant(msg.participant_id);
        break;
      case 'moderated':
        // Carries the new role: viewers get no roster changes, so this is how they learn it.
        if (msg.action === 'role_changed' && msg.role && msg.role !== this.self.role) {
          this.updateSelf({ ...this.self, role: msg.role, hand_raised: false });
          break;
        }
        return;
      case 'track_published':
      case 'track_updated':
        if (msg.track.participant_id === this.self.id) this.syncOwnMute(msg.track);
        else if (!this.participants.has(msg.track.participant_id)) this.refreshRoster();
        this.upsertTrack(msg.track);
        break;
      case 'track_unpublished': {
        if (msg.participant_id === this.self.id) {
          // The server stopped forwarding one of our tracks (we lost the right to publish).
          this.self.tracks = this.self.tracks.filter((t) => t.id !== msg.track_id);
          this.stopSending((slot) => slot.trackId === msg.track_id);
          break;
        }
        const p = this.participants.get(msg.participant_id);
        if (p) p.tracks = p.tracks.filter((t) => t.id !== msg.track_id);
        break;
      }
      case 'active_speaker':
        this.activeSpeaker = msg.participant_id;
        // A new speaker may move into the received cameras (a new `subscribe`, no offer).
        this.noteSpeaker(msg.participant_id);
        break;
      case 'publish_layers':
        this.layerWish = { trackId: msg.track_id, active: msg.active };
        this.applyLayers();
        return;
      case 'error':
        this.onServerError(msg.code, msg.message);
        return;
      default:
        return;
    }
    this.allocateReceivers();
    this.syncSubscriptions();
    this.listener.changed();
  }

  /** The signalling socket dropped: an answer in flight will never come. */
  disconnected(): void {
    this.pendingAnswer?.reject(new OfferFailed('signalling disconnected', true));
  }

  /** `joined` with `resumed: true`: same participant, same peer connection; catch up on the room. */
  resumed(joined: JoinedMessage): void {
    this.updateSelf(joined.participant);
    this.participants.clear();
    for (const p of joined.participants) this.participants.set(p.id, p);
    this.activeSpeaker = joined.active_speaker;
    this.noteSpeaker(joined.active_speaker);
    this.forgetAbsent();
    this.serverCount = joined.participant_count || null;
    this.pendingMutes = [];
    // Mute changes made while offline were not delivered: tell the server where it differs.
    for (const slot of this.sendSlots) {
      const known = joined.participant.tracks.find((t) => t.id === slot.trackId);
      if (slot.trackId === null || !slot.track || !known || known.muted === slot.muted) continue;
      if (known.muted && this.unmuteLocked(kindOf(slot.source))) this.adoptMute(slot, true);
      else this.sendMute(slot.trackId, slot.muted);
    }
    this.allocateReceivers();
    this.lastSubscriptions = '';
    if (this.wantNegotiation && !this.negotiating) this.negotiate();
    this.syncSubscriptions();
    this.listener.changed();
  }

  /** The layout changed: tile heights (and so the wanted simulcast layers) may have too. */
  layoutChanged(): void {
    this.syncSubscriptions();
  }

  // ---- internals ----

  private sendMute(trackId: TrackId, muted: boolean): void {
    if (this.signal.send({ type: 'mute', track_id: trackId, muted })) this.pendingMutes.push({ trackId, muted });
  }

  private adoptMute(slot: SendSlot, muted: boolean): void {
    slot.muted = muted;
    if (slot.track) slot.track.enabled = !muted;
  }

  /**
   * Our own track's state from the server: the echo of a `mute` we sent, or a moderator's mute.
   * Once no request of ours is pending, the server's word is what we show and send.
   */
  private syncOwnMute(track: TrackInfo): void {
    const echo = this.pendingMutes.findIndex((p) => p.trackId === track.id && p.muted === track.muted);
    if (echo >= 0) this.pendingMutes.splice(echo, 1);
    if (this.pendingMutes.some((p) => p.trackId === track.id)) return;
    const slot = this.sendSlots.find((s) => s.track !== null && s.trackId === track.id);
    if (slot && slot.muted !== track.muted) this.adoptMute(slot, track.muted);
  }

  /**
   * Viewers are told the headcount, not the roster, yet receive everybody's tracks: when a
   * track's owner is unknown or the count changed, they ask for the roster (debounced).
   * Listed roles learn it from `roster_changed`, which may trail a `track_published` a moment.
   */
  private refreshRoster(): void {
    if (this.self.role !== 'viewer' || this.rosterTimer !== undefined || this.closed) return;
    this.rosterTimer = window.setTimeout(() => {
      this.rosterTimer = undefined;
      if (!this.closed) this.signal.send({ type: 'roster_page', offset: 0, limit: ROSTER_PAGE });
    }, VIEWER_ROSTER_MS);
  }

  private upsertParticipant(p: ParticipantInfo): void {
    if (p.id === this.self.id) this.updateSelf(p);
    else this.participants.set(p.id, p);
  }

  private removeParticipant(id: ParticipantId): void {
    // A participant demoted to viewer leaves the list; that may be us (then we just stay).
    if (id === this.self.id) return;
    this.participants.delete(id);
    if (this.activeSpeaker === id) this.activeSpeaker = null;
    this.forgetAbsent();
  }

  private noteSpeaker(id: ParticipantId | null): void {
    if (id !== null && id !== this.self.id) noteSpeaker(this.speakers, id);
  }

  /** Drops those who left from the speaker recency list and the pin. */
  private forgetAbsent(): void {
    const gone = this.speakers.filter((id) => !this.participants.has(id));
    for (const id of gone) this.speakers.splice(this.speakers.indexOf(id), 1);
    if (this.pinned !== null && !this.participants.has(this.pinned)) this.pinned = null;
  }

  /** Our participant info changed: a new role may grant or take away the right to publish. */
  private updateSelf(next: ParticipantInfo): void {
    const before = this.self.role;
    this.self = next;
    if (before === next.role) return;
    this.publishRefused = false;
    if (!mayPublish(next.role)) this.stopSending(() => true);
    this.listener.roleChanged(before, next.role);
  }

  private slotFor(source: TrackSource): SendSlot | undefined {
    return this.sendSlots.find((s) => s.source === source && s.track !== null);
  }

  private publish(source: TrackSource, track: MediaStreamTrack, muted: boolean): void {
    track.enabled = !muted;
    this.localStream.addTrack(track);
    // Reuse an m-line left inactive by an earlier screen share.
    const spare = this.sendSlots.find((s) => s.source === source && s.track === null);
    if (spare) {
      spare.track = track;
      spare.muted = muted;
      spare.trackId = null;
      spare.transceiver.direction = 'sendonly';
      spare.transceiver.sender.replaceTrack(track).catch((e: unknown) => {
        this.listener.problem('publish', `Could not send your ${source}: ${String(e)}`, 'error');
      });
      return;
    }
    const init: RTCRtpTransceiverInit = { direction: 'sendonly', streams: [this.localStream] };
    if (source === 'camera') init.sendEncodings = CAMERA_ENCODINGS.map((e) => ({ ...e }));
    const transceiver = this.pc.addTransceiver(track, init);
    if (source === 'screen') track.contentHint = 'detail';
    this.sendSlots.push({ source, transceiver, track, muted, trackId: null });
  }

  private upsertTrack(track: TrackInfo): void {
    const owner = track.participant_id === this.self.id ? this.self : this.participants.get(track.participant_id);
    if (!owner) return;
    const i = owner.tracks.findIndex((t) => t.id === track.id);
    if (i >= 0) owner.tracks[i] = track;
    else owner.tracks.push(track);
  }

  private remoteTracks(): TrackInfo[] {
    return [...this.participants.values()].flatMap((p) => p.tracks);
  }

  /**
   * The remote tracks to receive on their own m-lines: every screen share with its sound, and at
   * most MAX_VIDEO_TILES cameras (last-N: the pinned one, recent speakers, those already shown,
   * then roster order). Muted cameras send nothing and are left out. The others' tiles show their
   * avatar. Microphones come through the audio slots instead.
   */
  private wantedTracks(): Map<TrackId, TrackInfo> {
    const wanted = new Map<TrackId, TrackInfo>();
    const cameras = new Map<ParticipantId, TrackInfo>();
    const people = [...this.participants.values()].sort((a, b) => a.id - b.id);
    for (const t of people.flatMap((p) => p.tracks)) {
      if (t.source === 'screen_audio') wanted.set(t.id, t);
      if (t.kind !== 'video') continue;
      if (t.source !== 'camera') wanted.set(t.id, t);
      else if (!t.muted && !cameras.has(t.participant_id)) cameras.set(t.participant_id, t);
    }
    const shownTracks = new Set(this.recvSlots.map((s) => s.trackId));
    const shown = [...cameras.values()].filter((t) => shownTracks.has(t.id)).map((t) => t.participant_id);
    for (const id of selectVideos([...cameras.keys()], this.pinned, this.speakers, MAX_VIDEO_TILES, shown)) {
      const t = cameras.get(id);
      if (t) wanted.set(t.id, t);
    }
    return wanted;
  }

  /** Gives each wanted track a receiving m-line of its kind, reusing free ones; adding one needs an offer. */
  private allocateReceivers(): void {
    if (this.closed) return;
    const wanted = this.wantedTracks();
    for (const slot of this.recvSlots) {
      if (slot.trackId !== null && !wanted.has(slot.trackId)) slot.trackId = null;
    }
    const assigned = new Set(this.recvSlots.map((s) => s.trackId));
    let added = false;
    for (const track of wanted.values()) {
      if (assigned.has(track.id)) continue;
      let slot = this.recvSlots.find((s) => s.trackId === null && s.kind === track.kind);
      if (!slot) {
        const transceiver = this.pc.addTransceiver(track.kind, { direction: 'recvonly' });
        slot = { transceiver, kind: track.kind, trackId: null };
        this.recvSlots.push(slot);
        added = true;
      }
      slot.trackId = track.id;
    }
    if (added) this.negotiate();
  }

  private isNegotiated(t: RTCRtpTransceiver): boolean {
    return t.mid !== null && t.currentDirection !== null && t.currentDirection !== 'stopped';
  }

  /**
   * Sends the subscription list after the current burst of events, once the view has rendered
   * the new tiles, so that video subscriptions carry their tile's height.
   */
  private syncSubscriptions(): void {
    if (this.subscriptionTimer !== undefined) return;
    this.subscriptionTimer = window.setTimeout(() => {
      this.subscriptionTimer = undefined;
      this.sendSubscriptions();
    }, 0);
  }

  /**
   * Sends the full subscription list (videos, and the audio slots, which the server keeps filled
   * with the loudest speakers) when it differs from the last one sent.
   */
  private sendSubscriptions(): void {
    if (this.closed) return;
    const subscriptions: Subscription[] = [];
    for (const slot of this.recvSlots) {
      const mid = slot.transceiver.mid;
      if (slot.trackId === null || mid === null || !this.isNegotiated(slot.transceiver)) continue;
      const sub: Subscription = { track_id: slot.trackId, mid };
      const h = this.tileHeight(slot.trackId);
      if (h !== undefined) sub.max_height = Math.max(90, Math.round(h));
      subscriptions.push(sub);
    }
    const msg: Extract<ClientMessage, { type: 'subscribe' }> = { type: 'subscribe', subscriptions };
    const slots = this.audioSlotMedia().map((s) => s.mid);
    if (slots.length > 0) msg.audio_slots = slots;
    const key = JSON.stringify({ subscriptions, audio_slots: msg.audio_slots });
    if (key === this.lastSubscriptions) return;
    if (this.signal.send(msg)) this.lastSubscriptions = key;
  }

  /**
   * Applies the server's `publish_layers` to our camera's simulcast encodings: the layers nobody
   * watches are not encoded at all (`[]` pauses the camera). Audio is never paused.
   */
  private applyLayers(): void {
    this.layersApplied = this.layersApplied.then(async () => {
      const wish = this.layerWish;
      const slot = wish && this.sendSlots.find((s) => s.source === 'camera' && s.track && s.trackId === wish.trackId);
      if (!wish || !slot || this.closed) return;
      const sender = slot.transceiver.sender;
      const params = sender.getParameters();
      if (params.encodings.length < 2) return;
      let changed = false;
      for (const e of params.encodings) {
        const active = e.rid !== undefined && wish.active.includes(e.rid);
        changed ||= e.active !== active;
        e.active = active;
      }
      if (changed) await sender.setParameters(params);
    }).catch((e: unknown) => console.warn(`ting: could not change the camera's layers: ${String(e)}`));
  }

  private publishedTracks(): PublishedTrack[] {
    return this.sendSlots
      .filter((s) => s.track !== null && s.transceiver.mid !== null)
      .map((s) => ({ mid: s.transceiver.mid as string, source: s.source, muted: s.muted }));
  }

  /** Asks for an offer/answer round; coalesces with one already queued. */
  negotiate(): void {
    this.wantNegotiation = true;
    if (this.negotiating) return;
    // Start a moment later: a new participant's tracks arrive as separate messages, and one
    // offer for all of them is cheaper than one per track.
    this.negotiating = true;
    window.setTimeout(() => void this.negotiationLoop(), NEGOTIATION_DELAY_MS);
  }

  private async negotiationLoop(): Promise<void> {
    try {
      while (this.wantNegotiation && !this.closed && this.signal.connected) {
        this.wantNegotiation = false;
        try {
          await this.offerOnce();
          this.listener.problem('negotiation', null);
        } catch (e) {
          if (this.closed) return;
          if (this.pc.signalingState === 'have-local-offer') {
            await this.pc.setLocalDescription({ type: 'rollback' });
          }
          const failure = e instanceof OfferFailed ? e : new OfferFailed(String(e), false);
          if (failure.retry) {
            // Try again once the socket is back (resumed() calls negotiate()).
            this.wantNegotiation = true;
            return;
          }
          this.listener.problem('negotiation', `Could not set up media: ${failure.message}`, 'error');
          if (failure.retryLater) window.setTimeout(() => this.negotiate(), RETRY_OFFER_MS);
        }
      }
    } finally {
      this.negotiating = false;
    }
  }

  private async offerOnce(): Promise<void> {
    const offer = await this.pc.createOffer({ iceRestart: this.iceRestart });
    this.iceRestart = false;
    await this.pc.setLocalDescription(offer);
    const answer = new Promise<{ sdp: string; tracks: TrackInfo[] }>((resolve, reject) => {
      const timer = window.setTimeout(
        () => reject(new OfferFailed('the server did not answer in time', false, true)),
        ANSWER_TIMEOUT_MS,
      );
      this.pendingAnswer = {
        resolve: (a) => {
          clearTimeout(timer);
          resolve(a);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      };
    });
    const sdp = this.pc.localDescription?.sdp ?? offer.sdp ?? '';
    if (!this.signal.send({ type: 'offer', sdp, tracks: this.publishedTracks() })) {
      this.pendingAnswer = null;
      throw new OfferFailed('signalling disconnected', true);
    }
    let reply: { sdp: string; tracks: TrackInfo[] };
    try {
      reply = await answer;
    } finally {
      this.pendingAnswer = null;
    }
    if (this.closed) return;
    await this.pc.setRemoteDescription({ type: 'answer', sdp: reply.sdp });
    this.applyOwnTracks(reply.tracks);
    this.applyLayers();
    this.syncSubscriptions();
    this.listener.changed();
  }

  /** Learns the server's ids for our own m-lines; fixes up mutes toggled while the offer flew. */
  private applyOwnTracks(tracks: TrackInfo[]): void {
    for (const info of tracks) {
      const slot = this.sendSlots.find((s) => s.track !== null && s.transceiver.mid === info.mid);
      if (!slot) continue;
      slot.trackId = info.id;
      if (info.muted === slot.muted) continue;
      // The server starts a track muted when a moderator muted its kind and the room forbids
      // unmuting oneself: adopt that rather than ask for an unmute that will be refused.
      if (info.muted && this.unmuteLocked(info.kind)) this.adoptMute(slot, true);
      else this.sendMute(info.id, slot.muted);
    }
  }

  private onServerError(code: ErrorCode, message: string): void {
    if (this.pendingAnswer && OFFER_ERRORS.has(code)) {
      this.pendingAnswer.reject(new OfferFailed(message, false));
      if (code === 'not_allowed') this.stopPublishing();
      return;
    }
    const refusedUnmute = code === 'not_allowed' ? this.pendingMutes.findIndex((p) => !p.muted) : -1;
    if (refusedUnmute >= 0) {
      // A moderator muted us and the room does not let us unmute: stay muted, say why.
      const [refused] = this.pendingMutes.splice(refusedUnmute, 1);
      const slot = this.sendSlots.find((s) => s.track !== null && s.trackId === refused?.trackId);
      if (slot && !this.pendingMutes.some((p) => p.trackId === slot.trackId)) this.adoptMute(slot, true);
      this.listener.problem('unmute', message || 'You cannot unmute yourself right now.', 'warning');
      this.listener.changed();
      return;
    }
    if (code === 'unknown_track') {
      // A subscription raced with an unpublish and the server refused the whole list. The
      // `track_unpublished` is on its way; send the list again once it has had time to arrive.
      console.info(`ting: ${message}`);
      this.lastSubscriptions = '';
      window.setTimeout(() => this.syncSubscriptions(), RESUBSCRIBE_MS);
      return;
    }
    this.listener.problem('server', message || code, 'error');
  }

  /** The server refuses our media although the role looked fine: continue receive-only. */
  private stopPublishing(): void {
    this.stopSending(() => true);
    this.publishRefused = true;
    this.listener.problem('publish', 'You are not allowed to publish in this room; you can watch and listen.', 'info');
  }

  /**
   * Stops sending on the matching m-lines and releases their devices. The transceivers stay,
   * inactive, for a later publish (m-lines can't be removed); one offer tells the server.
   */
  private stopSending(which: (slot: SendSlot) => boolean): void {
    let stopped = false;
    for (const slot of this.sendSlots) {
      if (!slot.track || !which(slot)) continue;
      slot.track.stop();
      this.localStream.removeTrack(slot.track);
      slot.track = null;
      slot.trackId = null;
      slot.transceiver.sender.replaceTrack(null).catch(() => undefined);
      slot.transceiver.direction = 'inactive';
      stopped = true;
    }
    if (!stopped) return;
    this.negotiate();
    this.listener.changed();
  }

  private onConnectionState(): void {
    const state = this.pc.connectionState;
    this.mediaStatus = state;
    if (state === 'failed') {
      this.listener.problem('media', 'The media connection failed. Trying to restore it…', 'error');
      // One ICE restart per failure; the server answers it like any other offer.
      this.iceRestart = true;
      this.negotiate();
    } else if (state === 'disconnected') {
      this.listener.problem('media', 'The media connection is interrupted…', 'warning');
    } else if (state === 'connected') {
      this.listener.problem('media', null);
    }
    this.listener.changed();
  }
}
