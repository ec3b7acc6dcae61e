// The file drop: the room's files (files/main), resumable uploads (tus), downloads, expiring
// guest links, deletion; for moderators also the room's records (export, audit, retention).

import { auditLog, deleteFile, fileUrl, guestLink, roomExportUrl, setRetention, uploadEndpoint } from '../api.js';
import type { ObjectListener } from '../collab.js';
import type { Author, CollabEvent } from '../protocol.js';
import { upload } from '../tus.js';
import type { CollabContext } from './collabpanel.js';
import { h, placeChildren } from './dom.js';

export interface FileInfo {
  id: string;
  name: string;
  mime: string;
  size: number;
  /** Hex SHA-256 of the content. */
  sha256: string;
  uploader: Author;
  at: number;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB', 'TB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) (v /= 1024), i++;
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

/** How long a finished upload stays in the list of uploads. */
const DONE_LINGER_MS = 3000;

export class FilesPanel implements ObjectListener {
  readonly el: HTMLElement;
  private readonly files = new Map<string, FileInfo>();
  private readonly list = h('ul', { className: 'file-list', 'data-testid': 'file-list' });
  private readonly uploads = h('ul', { className: 'upload-list' });
  private readonly records = h('details', { className: 'records', hidden: true });
  private readonly exportLink = h('a', { className: 'button-link small', 'data-testid': 'room-export' }, 'Export everything (tar)');
  private readonly empty = h('p', { className: 'hint' }, 'No files yet. Uploaded files are listed here and announced in the chat.');
  private renderQueued = false;

  constructor(
    private readonly ctx: CollabContext,
    /** The list changed (board cards pick attachments from it). */
    private readonly onChange: () => void,
  ) {
    const input = h('input', { type: 'file', multiple: true, className: 'visually-hidden', 'data-testid': 'file-input' });
    input.addEventListener('change', () => {
      for (const file of input.files ?? []) void this.upload(file);
      input.value = '';
    });
    const pick = h('label', { className: 'button-link primary-link' }, input, 'Upload files');
    this.buildRecords();
    this.el = h('section', { className: 'files', 'aria-label': 'Files' },
      h('div', { className: 'files-bar' }, pick), this.uploads, this.empty, this.list, this.records);
    ctx.client.subscribe('files', 'main', this);
  }

  all(): FileInfo[] {
    return [...this.files.values()].sort((a, b) => b.at - a.at || (a.id < b.id ? -1 : 1));
  }

  // ---- ObjectListener ----

  snapshot(state: unknown): void {
    this.files.clear();
    for (const f of Object.values((state as { files: Record<string, FileInfo> }).files ?? {})) this.files.set(f.id, f);
    this.schedule();
  }

  event(ev: CollabEvent): void {
    const b = ev.body as { event: string; file?: FileInfo; id?: string };
    if (b.event === 'added' && b.file) this.files.set(b.file.id, b.file);
    if (b.event === 'removed' && b.id) this.files.delete(b.id);
    this.schedule();
  }

  error(code: string, message: string): void {
    this.ctx.notify(`Files: ${message} (${code})`);
  }

  // ---- uploads ----

  private async upload(file: File): Promise<void> {
    const bar = h('progress', { max: 1, value: 0, 'data-testid': 'upload-progress' });
    const status = h('span', { className: 'upload-status' }, 'Starting…');
    const abort = new AbortController();
    const cancel = h('button', { type: 'button', className: 'small ghost', onclick: () => abort.abort() }, 'Cancel');
    const row = h('li', { 'data-testid': 'upload-row' }, h('span', { className: 'file-name' }, file.name), bar, status, cancel);
    this.uploads.append(row);
    try {
      await upload({
        endpoint: uploadEndpoint(this.ctx.room),
        token: this.ctx.token,
        file,
        signal: abort.signal,
        onProgress: (sent, total) => {
          bar.value = total === 0 ? 1 : sent / total;
          status.textContent = `${formatBytes(sent)} of ${formatBytes(total)}`;
        },
        onRetry: (attempt) => (status.textContent = `Connection problem, resuming (attempt ${attempt})…`),
      });
      row.classList.add('done');
      status.textContent = 'Uploaded';
      cancel.remove();
      window.setTimeout(() => row.remove(), DONE_LINGER_MS);
    } catch (err) {
      row.classList.add('failed');
      status.textContent = `Failed: ${(err as Error).message}`;
      cancel.textContent = 'Dismiss';
      cancel.onclick = () => row.remove();
    }
  }

  // ---- rendering ----

  private schedule(): void {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  private render(): void {
    const files = this.all();
    this.empty.hidden = files.length > 0;
    this.records.hidden = !this.ctx.client.moderator;
    this.exportLink.href = roomExportUrl(this.ctx.room, this.ctx.token);
    placeChildren(this.list, files.map((f) => this.row(f)));
    this.onChange();
  }

  private readonly rows = new Map<string, HTMLLIElement>();

  private row(f: FileInfo): HTMLLIElement {
    const known = this.rows.get(f.id);
    if (known) return known;
    const self = this.ctx.client.self.identity;
    const href = fileUrl(this.ctx.room, f.id, this.ctx.token);
    const note = h('span', { className: 'file-note', role: 'status' });
    const link = h('button', { type: 'button', className: 'small ghost', 'data-testid': 'file-guest-link', title: 'An expiring link for people who are not in the room' }, 'Copy guest link');
    link.addEventListener('click', () => void this.copyGuestLink(f, note));
    const row = h('li', { className: 'file-row', 'data-testid': 'file-row', 'data-id': f.id },
      h('a', { className: 'file-name', href, download: f.name }, f.name),
      h('span', { className: 'file-meta' },
        `${formatBytes(f.size)} · ${f.uploader.name} · `,
        h('code', { title: `SHA-256 ${f.sha256}`, 'data-testid': 'file-sha256' }, f.sha256.slice(0, 12))),
      h('span', { className: 'file-actions' },
        h('a', { className: 'button-link small', href, download: f.name, 'data-testid': 'file-download' }, 'Download'),
        link,
        (f.uploader.identity === self || this.ctx.client.moderator) && this.deleteButton(f)),
      note);
    this.rows.set(f.id, row);
    return row;
  }

  /** Two clicks: "Delete", then "Really delete?". */
  private deleteButton(f: FileInfo): HTMLButtonElement {
    const button = h('button', { type: 'button', className: 'small ghost danger-text', 'data-testid': 'file-delete' }, 'Delete');
    button.addEventListener('click', () => {
      if (button.dataset.armed !== 'true') {
        button.dataset.armed = 'true';
        button.textContent = 'Really delete?';
        window.setTimeout(() => ((button.dataset.armed = ''), (button.textContent = 'Delete')), 4000);
        return;
      }
      button.disabled = true;
      deleteFile(this.ctx.room, f.id, this.ctx.token)
        .catch((err: Error) => this.ctx.notify(`Could not delete ${f.name}: ${err.message}`))
        .finally(() => (button.disabled = false));
    });
    return button;
  }

  private async copyGuestLink(f: FileInfo, note: HTMLElement): Promise<void> {
    try {
      const { url, expires_at } = await guestLink(this.ctx.room, f.id, this.ctx.token);
      const full = new URL(url, location.href).href;
      const until = new Date(expires_at * 1000).toLocaleString();
      try {
        await navigator.clipboard.writeText(full);
        note.textContent = `Link copied (valid until ${until}).`;
      } catch {
        // No clipboard (an insecure origin, or permission refused): show it to copy by hand.
        note.replaceChildren(`Valid until ${until}: `, h('input', { readonly: true, value: full, 'aria-label': 'Guest link', 'data-testid': 'file-guest-url' }));
      }
    } catch (err) {
      note.textContent = `No link: ${(err as Error).message}`;
    }
  }

  private buildRecords(): void {
    const audit = h('ol', { className: 'audit-list', 'data-testid': 'audit-list' });
    const days = h('input', { type: 'number', min: 1, placeholder: 'forever', 'aria-label': 'Keep records for days', className: 'days' });
    const saved = h('span', { className: 'file-note', role: 'status' });
    const showAudit = async () => {
      try {
        const entries = await auditLog(this.ctx.room, this.ctx.token);
        audit.replaceChildren(...entries.map((e) => h('li', {}, `${new Date(e.at).toLocaleString()} · ${e.actor} · ${e.action} ${e.detail}`)));
        if (entries.length === 0) audit.replaceChildren(h('li', {}, 'Nothing recorded yet.'));
      } catch (err) {
        audit.replaceChildren(h('li', {}, `Could not read the audit log: ${(err as Error).message}`));
      }
    };
    const retention = h('form', { className: 'retention', onsubmit: (ev) => {
      ev.preventDefault();
      const n = days.value ? Math.max(1, Math.round(Number(days.value))) : null;
      setRetention(this.ctx.room, this.ctx.token, n)
        .then(() => (saved.textContent = n === null ? 'Records are kept.' : `Records older than ${n} days are deleted.`))
        .catch((err: Error) => (saved.textContent = err.message));
    } }, h('label', {}, 'Keep for ', days, ' days'), h('button', { type: 'submit', className: 'small' }, 'Save'), saved);
    this.records.append(
      h('summary', {}, 'Room records (moderators)'),
      h('p', {}, this.exportLink),
      retention,
      h('button', { type: 'button', className: 'small', onclick: () => void showAudit() }, 'Show audit log'),
      audit,
    );
  }
}
