// Signalling protocol v1, mirroring protocol/src/signal.rs (the authoritative definition).
// Every message is a JSON object with a snake_case `type`; ids are plain numbers.

export const PROTOCOL_VERSION = 1;

export type ParticipantId = number;
export type TrackId = number;

export type Role = 'host' | 'moderator' | 'speaker' | 'attendee' | 'viewer';
export type TrackKind = 'audio' | 'video';
export type TrackSource = 'microphone' | 'camera' | 'screen' | 'screen_audio';
export type LeaveReason =
  | 'left'
  | 'disconnected'
  | 'media_failed'
  | 'replaced'
  | 'server_shutdown'
  | 'removed'
  | 'denied';
export type ErrorCode =
  | 'bad_message'
  | 'unknown_message'
  | 'message_too_large'
  | 'unsupported_version'
  | 'invalid_token'
  | 'token_expired'
  | 'wrong_room'
  | 'not_joined'
  | 'already_joined'
  | 'resume_failed'
  | 'invalid_sdp'
  | 'not_allowed'
  | 'unknown_track'
  | 'room_locked'
  | 'unavailable'
  | 'internal';

export interface TrackInfo {
  id: TrackId;
  participant_id: ParticipantId;
  /** The publisher's m-line. */
  mid: string;
  kind: TrackKind;
  source: TrackSource;
  muted: boolean;
}

export interface ParticipantInfo {
  id: ParticipantId;
  identity: string;
  name: string;
  role: Role;
  tracks: TrackInfo[];
  /** Asking to speak. */
  hand_raised: boolean;
}

/** Room-wide settings moderators control. */
export interface RoomSettings {
  /** Nobody new may join (hosts and moderators still can). */
  locked: boolean;
  /** New participants wait in the lobby until a moderator admits them. */
  lobby: boolean;
  /** Whether participants muted by a moderator may unmute themselves. */
  allow_self_unmute: boolean;
  /** The meeting is being recorded (moderators start and stop it with `set_recording`). */
  recording: boolean;
}

export const DEFAULT_ROOM_SETTINGS: Readonly<RoomSettings> = {
  locked: false,
  lobby: false,
  allow_self_unmute: true,
  recording: false,
};

export type ModerationAction = 'muted' | 'unmute_allowed' | 'role_changed';

export interface PublishedTrack {
  mid: string;
  source: TrackSource;
  muted: boolean;
}

export interface Subscription {
  track_id: TrackId;
  mid: string;
  max_height?: number;
}

export type ClientMessage =
  | { type: 'join'; version: number; token: string; room?: string; resume?: string }
  | { type: 'offer'; sdp: string; tracks: PublishedTrack[] }
  | { type: 'candidate'; candidate: string; sdp_mid?: string }
  /** `audio_slots`: receive-only audio mids the server fills with the loudest speakers. */
  | { type: 'subscribe'; subscriptions: Subscription[]; audio_slots?: string[] }
  | { type: 'mute'; track_id: TrackId; muted: boolean }
  | { type: 'leave' }
  | { type: 'ping'; nonce: number }
  | { type: 'roster_page'; offset: number; limit: number; query?: string; viewers?: boolean }
  | { type: 'raise_hand'; raised: boolean }
  | { type: 'set_role'; participant_id: ParticipantId; role: Role }
  | { type: 'mute_participant'; participant_id: ParticipantId; kind: TrackKind; muted: boolean }
  | { type: 'mute_all'; kind: TrackKind }
  | { type: 'remove_participant'; participant_id: ParticipantId }
  | { type: 'update_room'; locked?: boolean; lobby?: boolean; allow_self_unmute?: boolean }
  /** Hosts and moderators: start or stop recording the meeting (`room_updated` confirms). */
  | { type: 'set_recording'; active: boolean }
  | { type: 'admit'; participant_id: ParticipantId }
  | { type: 'deny'; participant_id: ParticipantId }
  /** Instead of `join`: a collab-only session (team space), no media. */
  | { type: 'collab_join'; version: number; token: string }
  | { type: 'collab_subscribe'; channel: CollabChannel; object: string; since?: number }
  | { type: 'collab_unsubscribe'; channel: CollabChannel; object: string }
  | { type: 'collab'; channel: CollabChannel; object: string; op_id?: string; volatile?: boolean; body: unknown }
  | { type: 'collab_query'; channel: CollabChannel; object: string; op_id: string; body: unknown };

export interface JoinedMessage {
  type: 'joined';
  version: number;
  room: string;
  participant: ParticipantInfo;
  resumed: boolean;
  resume_token: string;
  resume_grace_secs: number;
  participants: ParticipantInfo[];
  active_speaker: ParticipantId | null;
  /** Everyone in the room, viewers included (absent from older servers). */
  participant_count?: number;
  /** Absent from older servers: then the defaults apply. */
  settings?: RoomSettings;
  /** Participants waiting in the lobby (moderators only; empty otherwise). */
  lobby?: ParticipantInfo[];
}

/**
 * Server messages. Roster changes come as `roster_changed` batches (viewers get only
 * `roster_count`); the single-event `participant_*` messages of earlier servers are still
 * understood.
 */
export type ServerMessage =
  | JoinedMessage
  | { type: 'waiting'; room: string }
  /** Cluster mode: the room is served by another node; send the same `join` to `url`. */
  | { type: 'moved'; url: string }
  | { type: 'lobby_updated'; waiting: ParticipantInfo[] }
  | { type: 'room_updated'; settings: RoomSettings }
  | { type: 'moderated'; action: ModerationAction; kind?: TrackKind | null; role?: Role | null; by: ParticipantId }
  | {
      type: 'roster_changed';
      joined: ParticipantInfo[];
      left: { participant_id: ParticipantId; reason: LeaveReason }[];
      updated: ParticipantInfo[];
      count: number;
    }
  | { type: 'roster_count'; count: number }
  | { type: 'roster_page'; participants: ParticipantInfo[]; total: number; offset: number }
  | { type: 'participant_joined'; participant: ParticipantInfo }
  | { type: 'participant_left'; participant_id: ParticipantId; reason: LeaveReason }
  | { type: 'participant_updated'; participant: ParticipantInfo }
  | { type: 'track_published'; track: TrackInfo }
  | { type: 'track_unpublished'; track_id: TrackId; participant_id: ParticipantId }
  | { type: 'track_updated'; track: TrackInfo }
  /** To a publisher: send only these simulcast layers (rids) of `track_id`; `[]` pauses it. */
  | { type: 'publish_layers'; track_id: TrackId; active: string[] }
  | { type: 'answer'; sdp: string; tracks: TrackInfo[] }
  | { type: 'active_speaker'; participant_id: ParticipantId | null }
  | { type: 'error'; code: ErrorCode; message: string }
  | { type: 'pong'; nonce: number }
  | { type: 'bye'; reason: LeaveReason }
  | CollabJoinedMessage
  | CollabEvent
  | { type: 'collab_snapshot'; channel: CollabChannel; object: string; seq: number; state: unknown }
  | { type: 'collab_synced'; channel: CollabChannel; object: string; seq: number }
  | { type: 'collab_ack'; channel: CollabChannel; object: string; op_id: string; seq: number; duplicate?: boolean }
  | { type: 'collab_result'; channel: CollabChannel; object: string; op_id: string; body: unknown }
  | {
      type: 'collab_error';
      channel: CollabChannel;
      object: string;
      op_id?: string;
      code: CollabErrorCode;
      message: string;
    };

// ---- collaboration add-ons (protocol/src/collab.rs; bodies in collab/src/*.rs) ----

export type CollabChannel = 'chat' | 'whiteboard' | 'board' | 'files';
export type CollabErrorCode = 'bad_op' | 'not_allowed' | 'too_large' | 'not_found' | 'not_subscribed' | 'unavailable';

/** Who wrote an event, as the server saw it. */
export interface Author {
  identity: string;
  name: string;
}

/** An event of a followed object: stored ones carry `seq`, volatile ones (cursors, typing) don't. */
export interface CollabEvent {
  type: 'collab';
  channel: CollabChannel;
  object: string;
  seq?: number;
  /** The writer's op id, so the writer recognises its own change. */
  op_id?: string;
  author: Author;
  /** Server time, unix ms. */
  at: number;
  volatile?: boolean;
  body: Record<string, unknown>;
}

/** Answer to `collab_join`: who we are in the room's team space. */
export interface CollabJoinedMessage {
  type: 'collab_joined';
  room: string;
  identity: string;
  name: string;
  moderator: boolean;
}

export function mayPublish(role: Role): boolean {
  return role === 'host' || role === 'moderator' || role === 'speaker';
}

/** Hosts and moderators run the meeting. */
export function moderates(role: Role): boolean {
  return role === 'host' || role === 'moderator';
}

/** Whether `actor` may moderate `target` (the server's rule): hosts everyone but hosts, moderators non-moderators. */
export function outranks(actor: Role, target: Role): boolean {
  if (actor === 'host') return target !== 'host';
  if (actor === 'moderator') return !moderates(target);
  return false;
}

export function kindOf(source: TrackSource): TrackKind {
  return source === 'microphone' || source === 'screen_audio' ? 'audio' : 'video';
}

/** Same rule as RoomId::new on the server, so the landing page can refuse a bad name early. */
export function isValidRoomName(name: string): boolean {
  return /^[A-Za-z0-9._-]{1,64}$/.test(name) && name !== '.' && name !== '..';
}

/** Human wording for why the server ended a session or a participant left. */
export function describeLeaveReason(reason: LeaveReason): string {
  switch (reason) {
    case 'left':
      return 'You left the meeting.';
    case 'disconnected':
      return 'The connection to the server was lost for too long.';
    case 'media_failed':
      return 'The media connection failed.';
    case 'replaced':
      return 'This session was taken over by another window or device that joined as you.';
    case 'server_shutdown':
      return 'The server is shutting down.';
    case 'removed':
      return 'A moderator removed you from the meeting.';
    case 'denied':
      return 'A moderator did not let you in from the lobby.';
  }
}
