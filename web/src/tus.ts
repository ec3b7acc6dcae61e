// A small tus 1.0 client (creation + core): create the upload, PATCH it in chunks, and after a
// network error ask the server (HEAD) how much it has and go on from there.

const TUS = { 'Tus-Resumable': '1.0.0' };
const CHUNK_BYTES = 4 * 1024 * 1024;
/** Failed attempts in a row (each one resumes from the server's offset) before giving up. */
const MAX_RETRIES = 8;

export interface UploadOptions {
  endpoint: string;
  token: string;
  file: File;
  /** Bytes the server has, as the upload goes. */
  onProgress(sent: number, total: number): void;
  /** Called before each retry, e.g. to say "connection lost, retrying". */
  onRetry?(attempt: number, error: Error): void;
  signal?: AbortSignal;
}

export class UploadError extends Error {
  constructor(
    message: string,
    /** A refusal (quota, size, permission): retrying would not help. */
    readonly fatal: boolean,
  ) {
    super(message);
  }
}

/** tus metadata: `key base64(value)` pairs (values UTF-8). */
function metadata(pairs: Record<string, string>): string {
  const b64 = (s: string) => btoa(String.fromCharCode(...new TextEncoder().encode(s)));
  return Object.entries(pairs)
    .map(([k, v]) => `${k} ${b64(v)}`)
    .join(',');
}

async function refusal(res: Response): Promise<UploadError> {
  const body = (await res.json().catch(() => null)) as { message?: string } | null;
  const fatal = res.status >= 400 && res.status < 500 && res.status !== 409 && res.status !== 408 && res.status !== 429;
  return new UploadError(body?.message || `the server answered ${res.status}`, fatal);
}

/** One PATCH through XMLHttpRequest: fetch cannot report upload progress. Resolves with the new offset. */
function patch(url: string, token: string, offset: number, chunk: Blob, onSent: (n: number) => void, signal?: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('PATCH', url);
    xhr.setRequestHeader('Tus-Resumable', '1.0.0');
    xhr.setRequestHeader('Upload-Offset', String(offset));
    xhr.setRequestHeader('Content-Type', 'application/offset+octet-stream');
    xhr.setRequestHeader('Authorization', `Bearer ${token}`);
    xhr.upload.onprogress = (e) => onSent(e.loaded);
    xhr.onload = () => {
      const next = xhr.getResponseHeader('Upload-Offset');
      if (xhr.status >= 200 && xhr.status < 300 && next !== null && Number.isFinite(Number(next))) resolve(Number(next));
      else reject(new UploadError(xhr.responseText.slice(0, 200) || `the server answered ${xhr.status}`, xhr.status >= 400 && xhr.status < 500 && xhr.status !== 409));
    };
    xhr.onerror = () => reject(new UploadError('network error', false));
    const abort = () => xhr.abort();
    xhr.onabort = () => reject(new UploadError('cancelled', true));
    signal?.addEventListener('abort', abort, { once: true });
    xhr.onloadend = () => signal?.removeEventListener('abort', abort);
    xhr.send(chunk);
  });
}

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Uploads `file`; resolves once the server has every byte (it then lists and announces the file). */
export async function upload(opts: UploadOptions): Promise<void> {
  const { file, token, signal } = opts;
  const auth = { Authorization: `Bearer ${token}` };
  let created: Response;
  try {
    created = await fetch(opts.endpoint, {
      method: 'POST',
      headers: {
        ...TUS,
        ...auth,
        'Upload-Length': String(file.size),
        'Upload-Metadata': metadata({ filename: file.name, filetype: file.type || 'application/octet-stream' }),
      },
      signal: signal ?? null,
    });
  } catch {
    throw new UploadError('cannot reach the server', false);
  }
  if (created.status !== 201) throw await refusal(created);
  const location = created.headers.get('Location');
  if (!location) throw new UploadError('the server gave no upload URL', true);
  const url = new URL(location, new URL(opts.endpoint, window.location.href)).href;

  let offset = 0;
  let failures = 0;
  let done = false;
  opts.onProgress(0, file.size);
  // A zero-byte file still takes one (empty) PATCH to complete.
  while (!done) {
    try {
      const from = offset;
      offset = await patch(url, token, from, file.slice(from, from + CHUNK_BYTES), (n) => opts.onProgress(from + n, file.size), signal);
      failures = 0;
      done = offset >= file.size;
    } catch (err) {
      const e = err instanceof UploadError ? err : new UploadError(String(err), false);
      if (e.fatal || signal?.aborted || ++failures > MAX_RETRIES) throw e;
      opts.onRetry?.(failures, e);
      await wait(Math.min(500 * 2 ** failures, 15_000));
      try {
        offset = await serverOffset(url, auth);
      } catch (headErr) {
        if (headErr instanceof UploadError && headErr.fatal) throw headErr;
      }
      // The last PATCH may have landed although its answer was lost.
      done = file.size > 0 && offset >= file.size;
    }
    opts.onProgress(offset, file.size);
  }
}

/** How many bytes the server kept (after an interrupted PATCH). */
async function serverOffset(url: string, auth: Record<string, string>): Promise<number> {
  const res = await fetch(url, { method: 'HEAD', headers: { ...TUS, ...auth } });
  if (!res.ok) throw await refusal(res);
  const n = Number(res.headers.get('Upload-Offset'));
  if (!Number.isFinite(n)) throw new UploadError('no Upload-Offset in the answer', true);
  return n;
}
