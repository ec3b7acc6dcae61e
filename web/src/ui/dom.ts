// A tiny element builder: enough for this UI without a framework.

type Attrs = Record<string, string | number | boolean | null | undefined | ((ev: Event) => void)>;
type Child = Node | string | null | undefined | false;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === 'function') el.addEventListener(name.replace(/^on/, ''), value);
    else if (name === 'className') el.className = String(value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const c of children) if (c) el.append(c);
  return el;
}

/** An inline SVG icon from the fixed set in icons.ts (static markup, never user input). */
export function icon(svg: string, className = 'icon'): HTMLSpanElement {
  const span = h('span', { className, 'aria-hidden': 'true' });
  span.innerHTML = svg;
  return span;
}

export function clear(el: Element): void {
  el.replaceChildren();
}

/** Puts `els` into `parent` in this order, moving only what is out of place, and drops the rest. */
export function placeChildren(parent: Element, els: Element[]): void {
  els.forEach((el, i) => {
    if (parent.children[i] !== el) parent.insertBefore(el, parent.children[i] ?? null);
  });
  while (parent.children.length > els.length) parent.lastElementChild?.remove();
}
