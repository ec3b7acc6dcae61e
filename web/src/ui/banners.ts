// Messages across the top of the page. Each has a key, so a newer message about the same thing
// (e.g. "Reconnecting…" then "Connection lost") replaces the older one instead of piling up.

import { h } from './dom.js';

export type BannerLevel = 'info' | 'warning' | 'error';

export interface BannerAction {
  label: string;
  run: () => void;
}

export class Banners {
  private readonly items = new Map<string, HTMLElement>();
  private readonly timers = new Map<string, number>();

  constructor(private readonly root: HTMLElement) {}

  /** `hideAfterMs` makes a passing notice go away by itself (replacing it restarts the clock). */
  show(key: string, text: string, level: BannerLevel = 'info', actions: BannerAction[] = [], hideAfterMs?: number): void {
    // Errors interrupt a screen reader; the rest wait politely.
    const el = h(
      'div',
      { className: `banner banner-${level}`, role: level === 'error' ? 'alert' : 'status', 'data-key': key },
      h('span', { className: 'banner-text' }, text),
      ...actions.map((a) => h('button', { type: 'button', className: 'banner-action', onclick: a.run }, a.label)),
      h('button', { type: 'button', className: 'banner-close', 'aria-label': 'Dismiss', onclick: () => this.hide(key) }, '×'),
    );
    const old = this.items.get(key);
    if (old) old.replaceWith(el);
    else this.root.append(el);
    this.items.set(key, el);
    clearTimeout(this.timers.get(key));
    this.timers.delete(key);
    if (hideAfterMs !== undefined) {
      this.timers.set(key, window.setTimeout(() => {
        if (this.items.get(key) === el) this.hide(key);
      }, hideAfterMs));
    }
  }

  hide(key: string): void {
    clearTimeout(this.timers.get(key));
    this.timers.delete(key);
    this.items.get(key)?.remove();
    this.items.delete(key);
  }

  clearAll(): void {
    for (const key of [...this.items.keys()]) this.hide(key);
  }
}
