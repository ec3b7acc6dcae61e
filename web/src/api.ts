// The server's small HTTP API (same origin as the page).

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
