// Small shared helpers: stable colours, number and time formatting, EMA, local settings.

/** FNV-1a of a string: the basis of a run's colour, stable across sessions and pages. */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** A run's (or group's) colour: the hue from the hash of its id, lightness varied a little too. */
export function colorOf(id: string): string {
  const h = hash32(id);
  const hue = h % 360;
  const light = 38 + ((h >>> 9) % 3) * 8;
  return `hsl(${hue} 70% ${light}%)`;
}

/** An hsl() colour (colorOf's) with an alpha: envelope and band fills. */
export function withAlpha(color: string, alpha: number): string {
  return color.replace(")", ` / ${alpha})`);
}

/** Numbers as people read them in a table: 4 significant digits, exponent when tiny or huge. */
export function fmtNum(v: unknown): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (typeof v === "boolean") return String(v);
  if (typeof v !== "number") return JSON.stringify(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return Number(v.toPrecision(4)).toExponential();
  return String(Number(v.toPrecision(4)));
}

export function fmtTime(seconds: number | null | undefined): string {
  if (!seconds) return "";
  const d = new Date(seconds * 1000);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export function fmtAgo(seconds: number | null | undefined): string {
  if (!seconds) return "never";
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function fmtDuration(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

export function fmtBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(1)} GiB`;
}

/** A value from a nested object by a dotted path (config.model.layers); the flat key wins. */
export function getPath(obj: object | null | undefined, path: string): unknown {
  if (obj == null) return undefined;
  if (path in obj) return (obj as Record<string, unknown>)[path];
  let cur: unknown = obj;
  const parts = path.split(".");
  for (let i = 0; i < parts.length; i++) {
    if (cur == null || typeof cur !== "object") return undefined;
    const node = cur as Record<string, unknown>;
    // Keys may hold dots themselves (train/loss does not, but "a.b" may): try the longest match.
    let found = false;
    for (let j = parts.length; j > i; j--) {
      const key = parts.slice(i, j).join(".");
      if (key in node) { cur = node[key]; i = j - 1; found = true; break; }
    }
    if (!found) return undefined;
  }
  return cur;
}

/** Flatten a nested object into dotted keys (for config and summary tables). */
export function flatten(obj: object | null | undefined, prefix = "", out: Record<string, unknown> = {}): Record<string, unknown> {
  for (const [k, v] of Object.entries(obj ?? {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = v;
  }
  return out;
}

/**
 * Debiased exponential moving average (TensorBoard's smoothing), skipping nulls.
 * weight 0 returns the values as they are.
 */
export function ema(values: ArrayLike<number | null>, weight: number): (number | null)[] {
  const out: (number | null)[] = new Array(values.length);
  if (weight <= 0) {
    for (let i = 0; i < values.length; i++) out[i] = values[i];
    return out;
  }
  let last = 0;
  let debias = 0;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v === null || !Number.isFinite(v)) { out[i] = null; continue; }
    last = last * weight + (1 - weight) * v;
    debias = debias * weight + (1 - weight);
    out[i] = last / debias;
  }
  return out;
}

/** JSON settings in localStorage (panel layouts, hidden runs): per browser, not synced. */
export function loadLocal<T>(key: string, fallback: T): T {
  try {
    const text = localStorage.getItem(key);
    return text ? (JSON.parse(text) as T) : fallback;
  } catch {
    return fallback;
  }
}

export function saveLocal(key: string, value: unknown): void {
  try { localStorage.setItem(key, JSON.stringify(value)); } catch { /* full or disabled: not fatal */ }
}

/** Wait until the browser has painted what was just drawn (for performance marks). */
export function afterPaint(): Promise<void> {
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
}
