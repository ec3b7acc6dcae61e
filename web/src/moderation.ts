// Roles and moderation on the client: room settings, the lobby, raised hands, the notices a
// participant gets when a moderator acts on them, and the moderators' actions. The server
// checks every action against the sender's role; this module only keeps the UI honest.

import {
  DEFAULT_ROOM_SETTINGS,
  moderates,
  outranks,
  type JoinedMessage,
  type ParticipantId,
  type ParticipantInfo,
  type Role,
  type RoomSettings,
  type ServerMessage,
  type TrackKind,
} from './protocol.js';
import type { Session, SignalSender } from './session.js';

export interface Notice {
  label: string;
  run: () => void;
}

/** Viewers shown per audience search. */
const AUDIENCE_RESULTS = 20;

export interface ModerationListener {
  /** Settings, lobby or hands changed: re-render. */
  changed(): void;
  /** Show (or with `text: null` hide) a notice; `key` groups notices that replace each other. */
  notice(key: string, text: string | null, level?: 'info' | 'warning', actions?: Notice[]): void;
  /** Open the participants panel (from a notice's button). */
  showPanel(): void;
}

/** Sentences for what a role change means to the person concerned. */
export function describeRoleChange(before: Role, after: Role): string {
  switch (after) {
    case 'host':
      return 'You are now a host.';
    case 'moderator':
      return 'You are now a moderator: you can manage the participants and the room.';
    case 'speaker':
      return moderates(before)
        ? 'You are now a speaker.'
        : 'You can now speak: your microphone and camera are available.';
    case 'attendee':
      return 'You are now an attendee: you can watch and listen. Raise your hand to ask to speak.';
    case 'viewer':
      return 'You are now a viewer: you can watch and listen.';
  }
}

export class Moderation {
  settings: RoomSettings;
  /** Who waits in the lobby (known to moderators only). */
  lobby: ParticipantInfo[];
  /** Kinds a moderator muted us for and has not allowed again. */
  private readonly mutedBy = new Set<TrackKind>();
  /** Viewers found by the last audience search (moderators only). */
  audience: ParticipantInfo[] = [];
  /** Participants whose raised hand was already announced. */
  private hands = new Set<ParticipantId>();

  constructor(
    private readonly signal: SignalSender,
    private readonly session: Session,
    joined: JoinedMessage,
    private readonly listener: ModerationListener,
  ) {
    this.settings = { ...DEFAULT_ROOM_SETTINGS, ...joined.settings };
    this.lobby = joined.lobby ?? [];
    this.hands = this.raisedHands();
    this.announceLobby(0);
  }

  // ---- queries ----

  get role(): Role {
    return this.session.self.role;
  }

  get isModerator(): boolean {
    return moderates(this.role);
  }

  /** Whether the meeting is being recorded. */
  get recording(): boolean {
    return this.settings.recording;
  }

  get handRaised(): boolean {
    return !!this.session.self.hand_raised;
  }

  /** Whether this participant may act on `target`, as the server decides it. */
  canModerate(target: ParticipantInfo): boolean {
    return target.id !== this.session.self.id && outranks(this.role, target.role);
  }

  /** Whether unmuting `kind` oneself would be refused (a moderator muted it; the room forbids it). */
  unmuteLocked(kind: TrackKind): boolean {
    return !this.settings.allow_self_unmute && this.mutedBy.has(kind);
  }

  // ---- server messages ----

  /** A `joined` on the same session (a resume): the room may have changed meanwhile. */
  resumed(joined: JoinedMessage): void {
    this.settings = { ...DEFAULT_ROOM_SETTINGS, ...joined.settings };
    const before = this.lobby.length;
    this.lobby = joined.lobby ?? [];
    this.announceLobby(before);
    this.announceHands();
  }

  /** Called after the session applied `msg`, so the roster is current. */
  handle(msg: ServerMessage): void {
    switch (msg.type) {
      case 'room_updated':
        this.settings = { ...DEFAULT_ROOM_SETTINGS, ...msg.settings };
        break;
      case 'lobby_updated': {
        const before = this.lobby.length;
        this.lobby = msg.waiting;
        this.announceLobby(before);
        break;
      }
      case 'moderated':
        this.onModerated(msg.action, msg.kind ?? undefined);
        // A role change may make us a moderator (or no longer one): hands and lobby matter now.
        this.announceHands();
        this.announceLobby(this.lobby.length);
        break;
      case 'roster_page':
        if (!this.isModerator) return;
        this.audience = msg.participants.filter((p) => p.role === 'viewer');
        break;
      case 'roster_changed':
      case 'participant_joined':
      case 'participant_updated':
      case 'participant_left':
        this.announceHands();
        return;
      default:
        return;
    }
    this.listener.changed();
  }

  private onModerated(action: 'muted' | 'unmute_allowed' | 'role_changed', kind: TrackKind | undefined): void {
    if (action === 'role_changed' || !kind) return; // the session reports the new role
    const what = kind === 'audio' ? 'microphone' : 'camera';
    // "Mute all" reaches people who send nothing of that kind: they need no notice.
    const sends = this.session.localTrack(what) !== null;
    if (action === 'muted') {
      this.mutedBy.add(kind);
      if (!sends) return;
      const locked = !this.settings.allow_self_unmute;
      const text =
        kind === 'audio'
          ? `A moderator muted you.${locked ? ' Raise your hand to ask to speak again.' : ''}`
          : `A moderator stopped your video.${locked ? ' Raise your hand to ask to turn it on again.' : ''}`;
      this.listener.notice('moderated', text, 'warning');
    } else {
      this.mutedBy.delete(kind);
      if (!sends) return;
      const text =
        kind === 'audio' ? 'A moderator allowed you to unmute.' : 'A moderator allowed you to turn your camera on again.';
      this.listener.notice('moderated', text, 'info');
    }
  }

  private raisedHands(): Set<ParticipantId> {
    return new Set([...this.session.participants.values()].filter((p) => p.hand_raised).map((p) => p.id));
  }

  /** Tells moderators about newly raised hands (one notice, replaced as hands change). */
  private announceHands(): void {
    const now = this.raisedHands();
    const fresh = [...now].filter((id) => !this.hands.has(id));
    this.hands = now;
    if (!this.isModerator || now.size === 0) {
      this.listener.notice('hands', null);
      return;
    }
    if (fresh.length === 0) return;
    const first = this.session.participants.get(fresh[0] as ParticipantId);
    const text = now.size === 1 && first ? `${first.name} raised their hand.` : `${now.size} people are raising their hand.`;
    this.listener.notice('hands', text, 'info', [{ label: 'Show', run: () => this.listener.showPanel() }]);
  }

  /** Tells moderators when somebody starts waiting in the lobby. */
  private announceLobby(before: number): void {
    const n = this.lobby.length;
    if (!this.isModerator || n === 0) {
      this.listener.notice('lobby', null);
      return;
    }
    if (n <= before) return;
    const text = n === 1 ? `${this.lobby[0]?.name ?? 'Somebody'} is waiting in the lobby.` : `${n} people are waiting in the lobby.`;
    this.listener.notice('lobby', text, 'info', [{ label: 'Show', run: () => this.listener.showPanel() }]);
  }

  // ---- actions ----

  raiseHand(raised: boolean): void {
    if (!this.signal.send({ type: 'raise_hand', raised })) return;
    // Show it at once; the server's `participant_updated` confirms.
    this.session.self.hand_raised = raised;
    this.listener.changed();
  }

  /** Looks for viewers by name (they are not in the roster): results land in `audience`. */
  searchAudience(query: string): void {
    const q = query.trim();
    if (!this.isModerator) return;
    if (q === '') {
      this.audience = [];
      this.listener.changed();
      return;
    }
    this.signal.send({ type: 'roster_page', offset: 0, limit: AUDIENCE_RESULTS, query: q, viewers: true });
  }

  setRole(participant: ParticipantId, role: Role): void {
    this.signal.send({ type: 'set_role', participant_id: participant, role });
  }

  /** Mutes a participant's audio or stops their video. */
  mute(participant: ParticipantId, kind: TrackKind): void {
    this.signal.send({ type: 'mute_participant', participant_id: participant, kind, muted: true });
  }

  /** Lets a participant a moderator muted unmute themselves again. */
  allowUnmute(participant: ParticipantId, kind: TrackKind): void {
    this.signal.send({ type: 'mute_participant', participant_id: participant, kind, muted: false });
  }

  muteAll(kind: TrackKind): void {
    this.signal.send({ type: 'mute_all', kind });
  }

  remove(participant: ParticipantId): void {
    this.signal.send({ type: 'remove_participant', participant_id: participant });
  }

  updateRoom(change: Partial<Omit<RoomSettings, 'recording'>>): void {
    this.signal.send({ type: 'update_room', ...change });
  }

  /** Starts or stops recording the meeting; everyone learns of it from `room_updated`. */
  setRecording(active: boolean): void {
    this.signal.send({ type: 'set_recording', active });
  }

  admit(participant: ParticipantId): void {
    this.signal.send({ type: 'admit', participant_id: participant });
  }

  deny(participant: ParticipantId): void {
    this.signal.send({ type: 'deny', participant_id: participant });
  }
}
