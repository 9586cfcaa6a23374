// A tiny DOM helper instead of a framework: h("div.cls", {attrs}, children...).
// Why no framework: the pages are mostly tables and forms built once per load, and the heavy
// part (charts of 1,000 runs) is uPlot's canvas, which any framework would only wrap.

export type Child = Node | string | number | null | undefined | false | Child[];
export type Attrs = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  spec: K | `${K}.${string}` | `${K}#${string}`, attrs?: Attrs | null, ...children: Child[]
): HTMLElementTagNameMap[K] {
  const [tagAndId, ...classes] = spec.split(".");
  const [tag, id] = tagAndId.split("#");
  const el = document.createElement(tag) as HTMLElementTagNameMap[K];
  if (id) el.id = id;
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value as EventListener);
    } else if (key === "style" && typeof value === "object") {
      Object.assign(el.style, value);
    } else if (key === "className") {
      el.className += (el.className ? " " : "") + String(value);
    } else if (key === "value" || key === "checked" || key === "selected" || key === "disabled") {
      Reflect.set(el, key, value); // as properties: the attributes only set the defaults
    } else if (key === "dataset" && typeof value === "object") {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
}

export function clear(el: Element): void {
  while (el.firstChild) el.removeChild(el.firstChild);
}

export function replace(el: Element, ...children: Child[]): void {
  clear(el);
  append(el, children);
}

export function errorBox(err: unknown): HTMLElement {
  const message = err instanceof Error ? err.message : String(err);
  return h("div.error", { role: "alert" }, message);
}

/**
 * An event handler that runs `fn` and shows its failure in `where` (the page's status area)
 * instead of leaving an unhandled rejection with nothing on screen.
 */
export function guarded<A extends unknown[]>(where: Element, fn: (...args: A) => unknown): (...args: A) => void {
  return (...args: A) => {
    try {
      Promise.resolve(fn(...args)).catch((err) => where.replaceChildren(errorBox(err)));
    } catch (err) {
      where.replaceChildren(errorBox(err));
    }
  };
}

/** A select element from [value, label] pairs. */
export function select(options: Array<[string, string]>, value: string, onChange: (v: string) => void,
                       attrs: Attrs = {}): HTMLSelectElement {
  const el = h("select", attrs, options.map(([v, label]) => h("option", { value: v, selected: v === value }, label)));
  el.addEventListener("change", () => onChange(el.value));
  return el;
}

/** Debounce a function (filters typed into inputs). */
export function debounce<A extends unknown[]>(fn: (...args: A) => void, ms: number): (...args: A) => void {
  let timer: number | undefined;
  return (...args: A) => {
    window.clearTimeout(timer);
    timer = window.setTimeout(() => fn(...args), ms);
  };
}
