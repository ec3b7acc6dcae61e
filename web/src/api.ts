// The server's small HTTP API (same origin as the page).

import type { CollabChannel } from './protocol.js';

export interface ServerConfig {
  quick_start: boolean;
  version: number;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly status: number,
  ) {
    super(message);
  }
}

async function call<T>(path: string, init?: RequestInit): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, { ...init, headers: { 'content-type': 'application/json', ...init?.headers } });
  } catch {
    throw new ApiError('Cannot reach the server. Check your connection and try again.', 'network', 0);
  }
  const body: unknown = await res.json().catch(() => null);
  if (!res.ok) {
    const err = (body ?? {}) as { code?: string; message?: string };
    throw new ApiError(err.message || `The server answered ${res.status}.`, err.code ?? 'http', res.status);
  }
  return body as T;
}

export function getConfig(): Promise<ServerConfig> {
  return call<ServerConfig>('/api/config');
}

/** Mints a join token for `room` when the server allows quick start. */
export function quickJoin(room: string, name: string): Promise<{ token: string; room: string }> {
  return call('/api/quick-join', { method: 'POST', body: JSON.stringify({ room, name }) });
}

/** Reads the (unverified) claims of a JWT, only to show who and where an invite link is for. */
export function tokenClaims(token: string): Record<string, unknown> {
  try {
    const part = token.split('.')[1] ?? '';
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes)) as Record<string, unknown>;
  } catch {
    return {};
  }
}

// ---- collaboration add-ons: files, whiteboard exports, room records ----
// Links that a browser opens by itself (downloads, exports) carry the token in the query;
// calls made from here send it as a Bearer header.

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const seg = encodeURIComponent;

export function fileUrl(room: string, fileId: string, token: string): string {
  return `/api/files/${seg(room)}/${seg(fileId)}?token=${seg(token)}`;
}

/** Where tus uploads of `room` are created. */
export function uploadEndpoint(room: string): string {
  return `/api/files/${seg(room)}`;
}

/** An expiring download link for people without a token (guests). */
export function guestLink(room: string, fileId: string, token: string): Promise<{ url: string; expires_at: number }> {
  // An empty JSON object: the server's default lifetime (an empty body would not be JSON).
  return call(`/api/files/${seg(room)}/${seg(fileId)}/link`, { method: 'POST', headers: bearer(token), body: '{}' });
}

export function deleteFile(room: string, fileId: string, token: string): Promise<unknown> {
  return call(`/api/files/${seg(room)}/${seg(fileId)}`, { method: 'DELETE', headers: bearer(token) });
}

/** An object of a room's chat, whiteboard, board or files channel that holds data. */
export interface ObjectEntry {
  channel: CollabChannel;
  name: string;
}

/** The room's objects that hold data (those the token may read). */
export function roomObjects(room: string, token: string): Promise<ObjectEntry[]> {
  return call(`/api/rooms/${seg(room)}/objects`, { headers: bearer(token) });
}

export function whiteboardExportUrl(room: string, board: string, format: 'svg' | 'png', token: string): string {
  return `/api/rooms/${seg(room)}/whiteboards/${seg(board)}.${format}?token=${seg(token)}`;
}

/** Moderators: the room's records as a tar archive. */
export function roomExportUrl(room: string, token: string): string {
  return `/api/rooms/${seg(room)}/export?token=${seg(token)}`;
}

export interface AuditEntry {
  at: number;
  actor: string;
  action: string;
  detail: string;
}

export function auditLog(room: string, token: string): Promise<AuditEntry[]> {
  return call(`/api/rooms/${seg(room)}/audit`, { headers: bearer(token) });
}

/** `keepDays: null` keeps the records forever. */
export function setRetention(room: string, token: string, keepDays: number | null): Promise<unknown> {
  return call(`/api/rooms/${seg(room)}/retention`, {
    method: 'PUT',
    headers: bearer(token),
    body: JSON.stringify({ keep_days: keepDays }),
  });
}

// ---- meeting recordings (hosts and moderators) ----

export interface RecordingFile {
  name: string;
  size: number;
  /** A download link for this file alone, valid for an hour (no join token in the URL). */
  url?: string;
}

/** One recording of the room; `id` is its start time in unix ms (as a string). */
export interface Recording {
  id: string;
  files: RecordingFile[];
}

export function listRecordings(room: string, token: string): Promise<Recording[]> {
  return call(`/api/rooms/${seg(room)}/recordings`, { headers: bearer(token) });
}

export function recordingFileUrl(room: string, id: string, file: string, token: string): string {
  return `/api/rooms/${seg(room)}/recordings/${seg(id)}/${seg(file)}?token=${seg(token)}`;
}
