// Signalling protocol v1, mirroring protocol/src/signal.rs (the authoritative definition).
// Every message is a JSON object with a snake_case `type`; ids are plain numbers.

export const PROTOCOL_VERSION = 1;

export type ParticipantId = number;
export type TrackId = number;

export type Role = 'host' | 'moderator' | 'speaker' | 'attendee' | 'viewer';
export type TrackKind = 'audio' | 'video';
export type TrackSource = 'microphone' | 'camera' | 'screen' | 'screen_audio';
export type LeaveReason = 'left' | 'disconnected' | 'media_failed' | 'replaced' | 'server_shutdown';
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
}

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
  | { type: 'subscribe'; subscriptions: Subscription[] }
  | { type: 'mute'; track_id: TrackId; muted: boolean }
  | { type: 'leave' }
  | { type: 'ping'; nonce: number };

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
}

export type ServerMessage =
  | JoinedMessage
  | { type: 'participant_joined'; participant: ParticipantInfo }
  | { type: 'participant_left'; participant_id: ParticipantId; reason: LeaveReason }
  | { type: 'participant_updated'; participant: ParticipantInfo }
  | { type: 'track_published'; track: TrackInfo }
  | { type: 'track_unpublished'; track_id: TrackId; participant_id: ParticipantId }
  | { type: 'track_updated'; track: TrackInfo }
  | { type: 'answer'; sdp: string; tracks: TrackInfo[] }
  | { type: 'active_speaker'; participant_id: ParticipantId | null }
  | { type: 'error'; code: ErrorCode; message: string }
  | { type: 'pong'; nonce: number }
  | { type: 'bye'; reason: LeaveReason };

export function mayPublish(role: Role): boolean {
  return role === 'host' || role === 'moderator' || role === 'speaker';
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
  }
}
