// A shared whiteboard (whiteboard/main, or another one picked in the toolbar) on a <canvas>;
// images come from the room's file drop (picked there or uploaded). Elements merge one by one
// as on the server (a higher version wins; on a tie the lower version_nonce), so a local change
// shows at once and its echo changes nothing. The committed scene is drawn into a cached layer,
// redrawn at most once a frame and only when it changed; what is being drawn or moved, the
// selection and the others' cursors go on top each frame. That keeps 10,000 elements smooth.

import { fileUrl, uploadEndpoint, whiteboardExportUrl } from '../api.js';
import type { CollabObject, ObjectListener } from '../collab.js';
import type { CollabEvent } from '../protocol.js';
import { upload } from '../tus.js';
import type { CollabContext } from './collabpanel.js';
import { h } from './dom.js';
import type { FileInfo } from './files.js';
import { ObjectPicker } from './objects.js';

export type ElementType = 'freedraw' | 'rectangle' | 'ellipse' | 'diamond' | 'line' | 'arrow' | 'text' | 'sticky' | 'image';

/** collab/src/whiteboard.rs `Element` (the server refuses unknown fields: add none). */
export interface WbElement {
  id: string;
  type: ElementType;
  version: number;
  version_nonce: number;
  is_deleted?: boolean;
  x: number;
  y: number;
  width: number;
  height: number;
  angle?: number;
  /** Relative to (x, y). */
  points?: [number, number][];
  text?: string;
  stroke: string;
  fill: string;
  stroke_width: number;
  file_id?: string;
  /** Set by the server. */
  updated_by?: string;
  created_seq?: number;
}

type Tool = 'select' | 'freedraw' | 'rectangle' | 'ellipse' | 'diamond' | 'line' | 'arrow' | 'text' | 'sticky' | 'image';

const TOOLS: [Tool, string][] = [
  ['select', 'Select'],
  ['freedraw', 'Pen'],
  ['rectangle', 'Rectangle'],
  ['ellipse', 'Ellipse'],
  ['diamond', 'Diamond'],
  ['line', 'Line'],
  ['arrow', 'Arrow'],
  ['text', 'Text'],
  ['sticky', 'Sticky note'],
  ['image', 'Image'],
];

const MAX_POINTS = 5000;
const CURSOR_INTERVAL_MS = 50;
const CURSOR_TTL_MS = 5000;
const STICKY = { width: 160, height: 120, fill: '#fff3a0', border: '#c9b458' };
const FONT = '16px sans-serif';
const LINE_HEIGHT = 19.2;
/** A placed image's longer side at most (its natural size otherwise). */
const MAX_IMAGE_PX = 400;
/** How long an uploaded image may take to show up in the file drop. */
const UPLOAD_LISTED_MS = 30_000;

const isImage = (f: FileInfo) => f.mime.startsWith('image/');

/** Resolves once `img` has loaded (true) or failed to (false). */
function loaded(img: HTMLImageElement): Promise<boolean> {
  if (img.complete) return Promise.resolve(img.naturalWidth > 0);
  return new Promise((resolve) => {
    img.addEventListener('load', () => resolve(true), { once: true });
    img.addEventListener('error', () => resolve(false), { once: true });
  });
}

async function sha256Hex(file: File): Promise<string | null> {
  // crypto.subtle needs a secure context (https or localhost).
  if (!crypto.subtle) return null;
  const digest = await crypto.subtle.digest('SHA-256', await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Whether `a` replaces `b` (the server's rule, Excalidraw's reconciliation). */
export function wins(a: WbElement, b: WbElement): boolean {
  return a.version > b.version || (a.version === b.version && a.version_nonce < b.version_nonce);
}

const randomU32 = () => crypto.getRandomValues(new Uint32Array(1))[0] ?? 0;
const newId = () => Array.from(crypto.getRandomValues(new Uint8Array(10)), (b) => b.toString(16).padStart(2, '0')).join('');
/** A changed copy: every local change bumps the version and draws a new nonce. */
const bump = (e: WbElement, change: Partial<WbElement>): WbElement => ({ ...e, ...change, version: e.version + 1, version_nonce: randomU32() });

/** Puts (x, y) at the top left of a drawn line's points, with width and height their extent. */
function normalize(e: WbElement): WbElement {
  const pts = e.points;
  if (!pts?.length) return e;
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const [mx, my] = [Math.min(...xs), Math.min(...ys)];
  return {
    ...e,
    x: e.x + mx,
    y: e.y + my,
    width: Math.max(...xs) - mx,
    height: Math.max(...ys) - my,
    points: pts.map(([px, py]) => [px - mx, py - my]),
  };
}

interface Box {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

const boxes = new WeakMap<WbElement, Box>();
function boxOf(e: WbElement): Box {
  let b = boxes.get(e);
  if (!b) {
    b = { x0: Math.min(e.x, e.x + e.width), y0: Math.min(e.y, e.y + e.height), x1: Math.max(e.x, e.x + e.width), y1: Math.max(e.y, e.y + e.height) };
    for (const [px, py] of e.points ?? []) {
      b.x0 = Math.min(b.x0, e.x + px);
      b.y0 = Math.min(b.y0, e.y + py);
      b.x1 = Math.max(b.x1, e.x + px);
      b.y1 = Math.max(b.y1, e.y + py);
    }
    const pad = e.stroke_width / 2 + 1;
    b = { x0: b.x0 - pad, y0: b.y0 - pad, x1: b.x1 + pad, y1: b.y1 + pad };
    boxes.set(e, b);
  }
  return b;
}

const paths = new WeakMap<WbElement, Path2D>();
function polyline(e: WbElement): Path2D {
  let p = paths.get(e);
  if (!p) {
    p = new Path2D();
    (e.points ?? []).forEach(([px, py], i) => (i === 0 ? p!.moveTo(e.x + px, e.y + py) : p!.lineTo(e.x + px, e.y + py)));
    paths.set(e, p);
  }
  return p;
}

function hue(identity: string): number {
  let n = 0;
  for (const c of identity) n = (n * 31 + c.charCodeAt(0)) % 360;
  return n;
}

export class WhiteboardPanel implements ObjectListener {
  readonly el: HTMLElement;
  readonly picker: ObjectPicker;
  private obj: CollabObject;
  private readonly elements = new Map<string, WbElement>();
  /** Drawing order (created_seq, then id; not yet stored ones last); null when it must be redone. */
  private order: WbElement[] | null = null;
  private readonly canvas = h('canvas', { className: 'wb-canvas', 'data-testid': 'whiteboard-canvas', tabindex: 0, 'aria-label': 'Whiteboard' });
  private readonly base = document.createElement('canvas');
  private baseDirty = true;
  private frameQueued = false;
  private readonly stage: HTMLElement;
  private readonly textEditor = h('textarea', { className: 'wb-text', 'data-testid': 'wb-text-input', hidden: true, rows: 3 });
  private readonly colour = h('input', { type: 'color', value: '#1e1e1e', 'data-testid': 'wb-color', 'aria-label': 'Colour' });
  private readonly width = h('select', { 'aria-label': 'Stroke width', 'data-testid': 'wb-width' },
    h('option', { value: '1' }, 'Thin'), h('option', { value: '2', selected: true }, 'Medium'), h('option', { value: '4' }, 'Bold'));
  private readonly toolButtons = new Map<Tool, HTMLButtonElement>();
  private readonly svgLink = h('a', { className: 'button-link small', 'data-testid': 'wb-export-svg', download: 'whiteboard.svg', target: '_blank' }, 'SVG');
  private readonly pngLink = h('a', { className: 'button-link small', 'data-testid': 'wb-export-png', download: 'whiteboard.png', target: '_blank' }, 'PNG');

  private tool: Tool = 'freedraw';
  private selected: string | null = null;
  /** The element being drawn or moved (drawn over the cached layer, left out of it). */
  private live: WbElement | null = null;
  private drag: { kind: 'draw' | 'move'; from: [number, number]; orig: WbElement } | null = null;
  /** Scroll offset of the view in scene coordinates. */
  private view = { x: 0, y: 0 };
  private dpr = 1;
  private lastCursorSent = 0;
  private readonly cursors = new Map<string, { name: string; x: number; y: number; timer: number }>();
  private readonly images = new Map<string, HTMLImageElement>();
  /** The image tool: the room's image files, the upload, and which file a click places. */
  private readonly imageBar = h('div', { className: 'wb-images', 'data-testid': 'wb-image-picker', hidden: true });
  private readonly imageList = h('div', { className: 'wb-image-list' });
  private readonly imageNote = h('span', { className: 'wb-image-note', role: 'status', 'data-testid': 'wb-image-note' });
  private imageFile: string | null = null;

  constructor(private readonly ctx: CollabContext) {
    const tools = h('div', { className: 'wb-tools', role: 'toolbar', 'aria-label': 'Drawing tools' });
    for (const [tool, label] of TOOLS) {
      const b = h('button', { type: 'button', className: 'small', 'data-testid': `wb-tool-${tool}`, 'aria-pressed': String(tool === this.tool), onclick: () => this.setTool(tool) }, label);
      this.toolButtons.set(tool, b);
      tools.append(b);
    }
    const button = (label: string, testid: string, run: () => void, title?: string) =>
      h('button', { type: 'button', className: 'small', 'data-testid': testid, onclick: run, title }, label);
    tools.append(
      this.colour,
      this.width,
      button('Delete', 'wb-delete', () => this.deleteSelected(), 'Delete the selected element'),
      button('Undo', 'wb-undo', () => this.undo('undo'), 'Undo your last change'),
      button('Redo', 'wb-redo', () => this.undo('redo'), 'Redo your last undone change'),
      h('span', { className: 'wb-export' }, 'Export ', this.svgLink, this.pngLink),
    );
    this.picker = new ObjectPicker(ctx, 'whiteboard', (name) => this.switchTo(name));
    tools.prepend(this.picker.el);
    const uploadInput = h('input', { type: 'file', accept: 'image/*', className: 'visually-hidden', 'data-testid': 'wb-image-upload' });
    uploadInput.addEventListener('change', () => {
      const file = uploadInput.files?.[0];
      uploadInput.value = '';
      if (file) void this.uploadImage(file);
    });
    this.imageBar.append(this.imageList, h('label', { className: 'button-link small' }, uploadInput, 'Upload image…'), this.imageNote);
    this.stage = h('div', { className: 'wb-stage' }, this.canvas, this.textEditor);
    this.el = h('section', { className: 'whiteboard', 'aria-label': 'Whiteboard' }, tools, this.imageBar, this.stage);
    this.bindPointer();
    new ResizeObserver(() => this.resize()).observe(this.stage);
    this.obj = ctx.client.subscribe('whiteboard', 'main', this);
  }

  /** The whiteboard shown. */
  get object(): string {
    return this.obj.name;
  }

  /** Shows whiteboard `name` instead: the old one is no longer followed. */
  switchTo(name: string): void {
    if (name === this.obj.name) return;
    if (!this.textEditor.hidden) this.textEditor.blur(); // its text goes to the old board
    this.ctx.client.unsubscribe(this.obj);
    this.elements.clear();
    this.selected = null;
    this.live = null;
    this.drag = null;
    for (const c of this.cursors.values()) clearTimeout(c.timer);
    this.cursors.clear();
    this.view = { x: 0, y: 0 };
    this.obj = this.ctx.client.subscribe('whiteboard', name, this);
    this.picker.setCurrent(name);
    this.exportLinks();
    this.changed();
  }

  /** The file drop changed: the image tool's choices follow. */
  filesChanged(): void {
    if (this.tool === 'image') this.renderImages();
  }

  /** Read-only copies of the visible elements, in drawing order (tests). */
  visibleElements(): WbElement[] {
    return this.ordered().filter((e) => !e.is_deleted).map((e) => structuredClone(e));
  }

  /** The tab became visible: export links carry the current token. */
  setVisible(visible: boolean): void {
    if (!visible) return;
    this.exportLinks();
    this.resize();
  }

  private exportLinks(): void {
    const name = this.obj.name;
    this.svgLink.href = whiteboardExportUrl(this.ctx.room, name, 'svg', this.ctx.token);
    this.pngLink.href = whiteboardExportUrl(this.ctx.room, name, 'png', this.ctx.token);
    this.svgLink.download = `${name}.svg`;
    this.pngLink.download = `${name}.png`;
  }

  // ---- ObjectListener ----

  snapshot(state: unknown): void {
    this.elements.clear();
    for (const e of (state as { elements: WbElement[] }).elements ?? []) this.elements.set(e.id, e);
    this.changed();
  }

  event(ev: CollabEvent): void {
    const b = ev.body as { event: string; elements?: WbElement[] };
    if (b.event !== 'upserted') return;
    for (const e of b.elements ?? []) this.merge(e);
    this.changed();
  }

  volatile(ev: CollabEvent): void {
    const c = (ev.body as { cursor?: { x: number; y: number } | null }).cursor;
    if (c === undefined || ev.author.identity === this.ctx.client.self.identity) return;
    const key = ev.author.identity;
    clearTimeout(this.cursors.get(key)?.timer);
    if (c === null || !Number.isFinite(c.x) || !Number.isFinite(c.y)) this.cursors.delete(key);
    else {
      const timer = window.setTimeout(() => (this.cursors.delete(key), this.frame()), CURSOR_TTL_MS);
      this.cursors.set(key, { name: ev.author.name, x: c.x, y: c.y, timer });
    }
    this.frame();
  }

  error(code: string, message: string): void {
    this.ctx.notify(`Whiteboard: ${message} (${code})`);
  }

  // ---- the scene ----

  private merge(e: WbElement): void {
    const cur = this.elements.get(e.id);
    // The echo of our own change (same version and nonce) still brings created_seq.
    if (!cur || wins(e, cur) || (e.version === cur.version && e.version_nonce === cur.version_nonce)) this.elements.set(e.id, e);
  }

  private changed(): void {
    this.order = null;
    this.baseDirty = true;
    const sel = this.selected ? this.elements.get(this.selected) : undefined;
    if (!sel || sel.is_deleted) this.selected = null;
    this.frame();
  }

  private ordered(): WbElement[] {
    this.order ??= [...this.elements.values()].sort(
      (a, b) => (a.created_seq || Infinity) - (b.created_seq || Infinity) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
    return this.order;
  }

  /** Applies a local change at once and sends it; the server's event confirms it. */
  private commit(elements: WbElement[]): void {
    for (const e of elements) this.elements.set(e.id, e);
    this.changed();
    this.obj.write({ op: 'upsert', elements }).catch((err: Error) => this.ctx.notify(`Whiteboard: ${err.message}`));
  }

  private deleteSelected(): void {
    const cur = this.selected ? this.elements.get(this.selected) : undefined;
    if (!cur) return;
    this.selected = null;
    this.commit([bump(cur, { is_deleted: true })]);
  }

  private undo(op: 'undo' | 'redo'): void {
    this.obj.write({ op }).catch((err: Error) => this.ctx.notify(err.message));
  }

  private setTool(tool: Tool): void {
    this.tool = tool;
    for (const [t, b] of this.toolButtons) b.setAttribute('aria-pressed', String(t === tool));
    if (tool !== 'select') this.selected = null;
    this.canvas.style.cursor = tool === 'select' ? 'default' : tool === 'text' || tool === 'sticky' ? 'text' : tool === 'image' ? 'copy' : 'crosshair';
    this.imageBar.hidden = tool !== 'image';
    if (tool === 'image') this.renderImages();
    this.frame();
  }

  // ---- images ----

  /** The image tool's strip: one button per image file of the room, the chosen one pressed. */
  private renderImages(): void {
    const files = this.ctx.files().filter(isImage);
    if (this.imageFile && !files.some((f) => f.id === this.imageFile)) this.imageFile = null;
    this.imageList.replaceChildren(...files.map((f) =>
      h('button', { type: 'button', className: 'small wb-image-choice', 'data-testid': 'wb-image-option', 'data-file-id': f.id, 'aria-pressed': String(f.id === this.imageFile), title: f.name,
        onclick: () => this.chooseImage(f.id) },
        h('img', { src: fileUrl(this.ctx.room, f.id, this.ctx.token), alt: '', loading: 'lazy', width: 28, height: 28 }),
        h('span', {}, f.name))));
    if (files.length === 0) this.imageList.replaceChildren(h('span', { className: 'hint' }, 'No images in the room yet.'));
    if (!this.imageNote.dataset.busy) this.imageNote.textContent = this.imageFile ? 'Click the whiteboard to place the image.' : 'Pick an image or upload one.';
  }

  private chooseImage(fileId: string): void {
    this.imageFile = fileId;
    void this.image(fileId); // starts loading: placing it needs its size
    this.renderImages();
  }

  /** Uploads an image to the file drop (tus), waits until it is listed, and picks it. */
  private async uploadImage(file: File): Promise<void> {
    const note = this.imageNote;
    if (!file.type.startsWith('image/')) {
      note.textContent = `${file.name} is not an image.`;
      return;
    }
    const before = new Set(this.ctx.files().map((f) => f.id));
    const self = this.ctx.client.self.identity;
    note.dataset.busy = 'true';
    try {
      const sha = await sha256Hex(file);
      await upload({
        endpoint: uploadEndpoint(this.ctx.room),
        token: this.ctx.token,
        file,
        onProgress: (sent, total) => (note.textContent = `Uploading ${file.name}: ${total === 0 ? 100 : Math.floor((sent / total) * 100)}%`),
        onRetry: (attempt) => (note.textContent = `Connection problem, resuming (attempt ${attempt})…`),
      });
      note.textContent = 'Uploaded, waiting for the file drop…';
      const info = await this.ctx.whenFile(
        (f) => !before.has(f.id) && f.size === file.size && f.uploader.identity === self && (sha === null ? f.name === file.name : f.sha256 === sha),
        UPLOAD_LISTED_MS,
      );
      delete note.dataset.busy;
      this.chooseImage(info.id);
    } catch (err) {
      delete note.dataset.busy;
      note.textContent = `Upload failed: ${(err as Error).message}`;
    }
  }

  /** Places the chosen image centred at (x, y), at its natural size (capped). */
  private async placeImage(fileId: string, x: number, y: number): Promise<void> {
    const img = this.image(fileId);
    const obj = this.obj;
    if (!(await loaded(img))) return this.ctx.notify('Whiteboard: that image could not be loaded.');
    if (obj !== this.obj) return; // another whiteboard meanwhile
    const scale = Math.min(1, MAX_IMAGE_PX / Math.max(img.naturalWidth, img.naturalHeight));
    const width = Math.max(1, Math.round(img.naturalWidth * scale));
    const height = Math.max(1, Math.round(img.naturalHeight * scale));
    const el = this.fresh('image', Math.round(x - width / 2), Math.round(y - height / 2), { width, height, file_id: fileId });
    this.setTool('select');
    this.selected = el.id;
    this.commit([el]);
  }

  private fresh(type: ElementType, x: number, y: number, extra: Partial<WbElement> = {}): WbElement {
    return {
      id: newId(), type, version: 1, version_nonce: randomU32(), is_deleted: false,
      x, y, width: 0, height: 0, angle: 0, stroke: this.colour.value, fill: 'transparent',
      stroke_width: Number(this.width.value), ...extra,
    };
  }

  /** The topmost visible element at scene point (x, y). */
  private hit(x: number, y: number): WbElement | undefined {
    const order = this.ordered();
    for (let i = order.length - 1; i >= 0; i--) {
      const e = order[i]!;
      const b = boxOf(e);
      if (!e.is_deleted && x >= b.x0 - 3 && x <= b.x1 + 3 && y >= b.y0 - 3 && y <= b.y1 + 3) return e;
    }
    return undefined;
  }

  // ---- input ----

  private point(ev: MouseEvent): [number, number] {
    const r = this.canvas.getBoundingClientRect();
    return [ev.clientX - r.left + this.view.x, ev.clientY - r.top + this.view.y];
  }

  private bindPointer(): void {
    const c = this.canvas;
    c.addEventListener('pointerdown', (ev) => {
      if (ev.button !== 0 || !this.textEditor.hidden) return;
      if (this.tool === 'text' || this.tool === 'sticky' || this.tool === 'image') return; // on click, once the focus has settled
      const [x, y] = this.point(ev);
      c.setPointerCapture(ev.pointerId);
      if (this.tool === 'select') {
        const target = this.hit(x, y);
        this.selected = target?.id ?? null;
        if (target) {
          this.drag = { kind: 'move', from: [x, y], orig: target };
          this.live = target;
          this.baseDirty = true;
        }
        this.frame();
        return;
      }
      const type = this.tool;
      const el = this.fresh(type, x, y, type === 'freedraw' || type === 'arrow' || type === 'line' ? { points: [[0, 0]] } : {});
      this.drag = { kind: 'draw', from: [x, y], orig: el };
      this.live = el;
      this.frame();
    });
    c.addEventListener('pointermove', (ev) => {
      const [x, y] = this.point(ev);
      const now = Date.now();
      if (now - this.lastCursorSent >= CURSOR_INTERVAL_MS) {
        this.lastCursorSent = now;
        this.obj.volatile({ cursor: { x: Math.round(x), y: Math.round(y) } });
      }
      if (!this.drag || !this.live) return;
      this.live = this.dragged(this.drag, this.live, x, y);
      this.frame();
    });
    const end = () => {
      const { drag, live } = this;
      this.drag = null;
      this.live = null;
      this.baseDirty = true;
      if (!drag || !live) return this.frame();
      if (drag.kind === 'move') {
        if (live.x !== drag.orig.x || live.y !== drag.orig.y) this.commit([bump(drag.orig, { x: live.x, y: live.y })]);
        else this.frame();
        return;
      }
      const shape = normalize(live);
      if (shape.type !== 'freedraw' && shape.width < 3 && shape.height < 3) return this.frame(); // a click, not a shape
      this.commit([shape]);
    };
    c.addEventListener('pointerup', end);
    c.addEventListener('pointercancel', end);
    c.addEventListener('pointerleave', () => this.obj.volatile({ cursor: null }));
    c.addEventListener('click', (ev) => {
      if (this.tool === 'image') {
        const [x, y] = this.point(ev);
        if (this.imageFile) void this.placeImage(this.imageFile, x, y);
        else this.imageNote.textContent = 'Pick an image first (or upload one).';
        return;
      }
      if ((this.tool !== 'text' && this.tool !== 'sticky') || !this.textEditor.hidden) return;
      const [x, y] = this.point(ev);
      const { width, height, fill } = STICKY;
      this.editText(this.tool === 'sticky' ? this.fresh('sticky', x, y, { width, height, fill, stroke: '#1e1e1e' }) : this.fresh('text', x, y));
    });
    c.addEventListener('dblclick', (ev) => {
      const [x, y] = this.point(ev);
      const target = this.hit(x, y);
      if (target && (target.type === 'text' || target.type === 'sticky')) this.editText(target);
    });
    c.addEventListener('wheel', (ev) => {
      ev.preventDefault();
      this.view = { x: this.view.x + ev.deltaX, y: this.view.y + ev.deltaY };
      this.baseDirty = true;
      this.frame();
    }, { passive: false });
    c.addEventListener('keydown', (ev) => {
      const mod = ev.ctrlKey || ev.metaKey;
      if (ev.key === 'Delete' || ev.key === 'Backspace') this.deleteSelected();
      else if (mod && ev.key.toLowerCase() === 'z') this.undo(ev.shiftKey ? 'redo' : 'undo');
      else if (mod && ev.key.toLowerCase() === 'y') this.undo('redo');
      else return;
      ev.preventDefault();
    });
  }

  /** The live element after the pointer moved to (x, y). */
  private dragged(drag: NonNullable<WhiteboardPanel['drag']>, live: WbElement, x: number, y: number): WbElement {
    const [fx, fy] = drag.from;
    if (drag.kind === 'move') return { ...live, x: drag.orig.x + x - fx, y: drag.orig.y + y - fy };
    switch (live.type) {
      case 'freedraw': {
        const points = live.points ?? [];
        const [lx, ly] = points[points.length - 1] ?? [0, 0];
        const [dx, dy] = [x - fx, y - fy];
        if (points.length >= MAX_POINTS || Math.hypot(dx - lx, dy - ly) < 1.5) return live;
        return { ...live, points: [...points, [dx, dy]] };
      }
      case 'arrow':
      case 'line':
        return { ...live, points: [[0, 0], [x - fx, y - fy]] };
      default:
        return { ...live, x: Math.min(fx, x), y: Math.min(fy, y), width: Math.abs(x - fx), height: Math.abs(y - fy) };
    }
  }

  /** A text box over the canvas for a new or existing text or sticky note. */
  private editText(target: WbElement): void {
    const ed = this.textEditor;
    ed.value = target.text ?? '';
    ed.hidden = false;
    ed.style.left = `${target.x - this.view.x}px`;
    ed.style.top = `${target.y - this.view.y}px`;
    ed.style.width = `${Math.max(target.width, 160)}px`;
    ed.focus();
    const finish = (keep: boolean) => {
      ed.removeEventListener('keydown', onKey);
      ed.removeEventListener('blur', onBlur);
      ed.hidden = true;
      const text = ed.value.replace(/\s+$/, '');
      this.canvas.focus();
      if (!keep || text === (target.text ?? '')) return;
      if (!text && target.version === 1) return; // an empty new box: nothing to keep
      const ctx = this.canvas.getContext('2d');
      let w = target.width;
      let hgt = target.height;
      if (target.type === 'text' && ctx) {
        ctx.font = FONT;
        w = Math.max(...text.split('\n').map((l) => ctx.measureText(l).width)) + 8;
        hgt = text.split('\n').length * LINE_HEIGHT + 8;
      }
      const known = this.elements.get(target.id);
      const change = { text, width: w, height: hgt, ...(text ? {} : { is_deleted: true }) };
      this.commit([known ? bump(known, change) : { ...target, ...change }]);
    };
    const onKey = (ev: KeyboardEvent) => {
      if (ev.key === 'Enter' && !ev.shiftKey) (ev.preventDefault(), finish(true));
      if (ev.key === 'Escape') finish(false);
    };
    const onBlur = () => finish(true);
    ed.addEventListener('keydown', onKey);
    ed.addEventListener('blur', onBlur);
  }

  // ---- drawing ----

  private resize(): void {
    const { clientWidth: w, clientHeight: hgt } = this.stage;
    if (w === 0 || hgt === 0) return;
    this.dpr = Math.min(window.devicePixelRatio || 1, 2);
    for (const c of [this.canvas, this.base]) {
      c.width = Math.round(w * this.dpr);
      c.height = Math.round(hgt * this.dpr);
    }
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${hgt}px`;
    this.baseDirty = true;
    this.frame();
  }

  private frame(): void {
    if (this.frameQueued) return;
    this.frameQueued = true;
    requestAnimationFrame(() => {
      this.frameQueued = false;
      this.draw();
    });
  }

  private draw(): void {
    const ctx = this.canvas.getContext('2d');
    if (!ctx || this.canvas.width === 0) return;
    const viewBox: Box = { x0: this.view.x, y0: this.view.y, x1: this.view.x + this.canvas.width / this.dpr, y1: this.view.y + this.canvas.height / this.dpr };
    if (this.baseDirty) {
      this.baseDirty = false;
      const b = this.base.getContext('2d')!;
      b.setTransform(1, 0, 0, 1, 0, 0);
      b.fillStyle = '#ffffff';
      b.fillRect(0, 0, this.base.width, this.base.height);
      b.setTransform(this.dpr, 0, 0, this.dpr, -this.view.x * this.dpr, -this.view.y * this.dpr);
      const skip = this.live?.id;
      for (const e of this.ordered()) {
        if (e.is_deleted || e.id === skip) continue;
        const box = boxOf(e);
        if (box.x1 < viewBox.x0 || box.x0 > viewBox.x1 || box.y1 < viewBox.y0 || box.y0 > viewBox.y1) continue;
        this.drawElement(b, e);
      }
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.drawImage(this.base, 0, 0);
    ctx.setTransform(this.dpr, 0, 0, this.dpr, -this.view.x * this.dpr, -this.view.y * this.dpr);
    if (this.live) this.drawElement(ctx, this.live);
    const sel = this.live?.id === this.selected ? this.live : this.selected ? this.elements.get(this.selected) : undefined;
    if (sel) {
      const b = boxOf(sel);
      ctx.save();
      ctx.strokeStyle = '#4f8cff';
      ctx.lineWidth = 1;
      ctx.setLineDash([4, 3]);
      ctx.strokeRect(b.x0 - 2, b.y0 - 2, b.x1 - b.x0 + 4, b.y1 - b.y0 + 4);
      ctx.restore();
    }
    for (const c of this.cursors.values()) {
      const colour = `hsl(${hue(c.name)}, 70%, 45%)`;
      ctx.fillStyle = colour;
      ctx.beginPath();
      ctx.moveTo(c.x, c.y);
      ctx.lineTo(c.x, c.y + 16);
      ctx.lineTo(c.x + 11, c.y + 11);
      ctx.closePath();
      ctx.fill();
      ctx.font = '12px sans-serif';
      const w = ctx.measureText(c.name).width + 8;
      ctx.fillRect(c.x + 10, c.y + 14, w, 17);
      ctx.fillStyle = '#fff';
      ctx.fillText(c.name, c.x + 14, c.y + 27);
    }
  }

  private drawElement(ctx: CanvasRenderingContext2D, e: WbElement): void {
    ctx.save();
    if (e.angle) {
      const cx = e.x + e.width / 2;
      const cy = e.y + e.height / 2;
      ctx.translate(cx, cy);
      ctx.rotate(e.angle);
      ctx.translate(-cx, -cy);
    }
    ctx.strokeStyle = e.stroke;
    ctx.lineWidth = e.stroke_width;
    ctx.lineCap = 'round';
    ctx.lineJoin = 'round';
    const filled = e.fill !== 'transparent';
    if (filled) ctx.fillStyle = e.fill;
    switch (e.type) {
      case 'freedraw':
      case 'line':
      case 'arrow': {
        const pts = e.points ?? [];
        if (pts.length === 1) {
          // A dot: one point of a pen stroke.
          ctx.fillStyle = e.stroke;
          ctx.beginPath();
          ctx.arc(e.x + pts[0]![0], e.y + pts[0]![1], Math.max(e.stroke_width, 2) / 2, 0, Math.PI * 2);
          ctx.fill();
          break;
        }
        ctx.stroke(polyline(e));
        if (e.type === 'arrow' && pts.length >= 2) {
          const [ax, ay] = pts[pts.length - 2]!;
          const [bx, by] = pts[pts.length - 1]!;
          const angle = Math.atan2(by - ay, bx - ax);
          const size = 10 + e.stroke_width * 2;
          ctx.beginPath();
          for (const side of [-1, 1]) {
            ctx.moveTo(e.x + bx, e.y + by);
            ctx.lineTo(e.x + bx - size * Math.cos(angle + side * 0.45), e.y + by - size * Math.sin(angle + side * 0.45));
          }
          ctx.stroke();
        }
        break;
      }
      case 'rectangle':
        if (filled) ctx.fillRect(e.x, e.y, e.width, e.height);
        ctx.strokeRect(e.x, e.y, e.width, e.height);
        break;
      case 'ellipse':
        ctx.beginPath();
        ctx.ellipse(e.x + e.width / 2, e.y + e.height / 2, Math.abs(e.width) / 2, Math.abs(e.height) / 2, 0, 0, Math.PI * 2);
        if (filled) ctx.fill();
        ctx.stroke();
        break;
      case 'diamond': {
        const cx = e.x + e.width / 2;
        const cy = e.y + e.height / 2;
        ctx.beginPath();
        ctx.moveTo(cx, e.y);
        ctx.lineTo(e.x + e.width, cy);
        ctx.lineTo(cx, e.y + e.height);
        ctx.lineTo(e.x, cy);
        ctx.closePath();
        if (filled) ctx.fill();
        ctx.stroke();
        break;
      }
      case 'sticky':
      case 'text':
        if (e.type === 'sticky') {
          ctx.fillStyle = STICKY.fill;
          ctx.fillRect(e.x, e.y, e.width, e.height);
          ctx.strokeStyle = STICKY.border;
          ctx.lineWidth = 1;
          ctx.strokeRect(e.x, e.y, e.width, e.height);
          ctx.beginPath();
          ctx.rect(e.x, e.y, e.width, e.height);
          ctx.clip();
        }
        ctx.fillStyle = e.stroke === 'transparent' ? '#1e1e1e' : e.stroke;
        ctx.font = FONT;
        (e.text ?? '').split('\n').forEach((line, i) => ctx.fillText(line, e.x + 4, e.y + 18 + i * LINE_HEIGHT));
        break;
      case 'image': {
        const img = e.file_id ? this.image(e.file_id) : undefined;
        if (img?.complete && img.naturalWidth > 0) ctx.drawImage(img, e.x, e.y, e.width, e.height);
        else {
          ctx.fillStyle = '#eeeeee';
          ctx.fillRect(e.x, e.y, e.width, e.height);
          ctx.strokeStyle = '#999999';
          ctx.strokeRect(e.x, e.y, e.width, e.height);
        }
        break;
      }
    }
    ctx.restore();
  }

  /** An image element's picture from the file drop, loaded once. */
  private image(fileId: string): HTMLImageElement {
    let img = this.images.get(fileId);
    if (!img) {
      img = new Image();
      img.onload = () => ((this.baseDirty = true), this.frame());
      img.src = fileUrl(this.ctx.room, fileId, this.ctx.token);
      this.images.set(fileId, img);
    }
    return img;
  }
}
