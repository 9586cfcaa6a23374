// A tiny, safe markdown renderer for reports: every character of the source is HTML-escaped
// first, then a small set of block and inline rules add markup. Links keep http(s), mailto
// and same-site paths only, so a report cannot carry script through a javascript: URL.
// Lines "{{panel N}}" mark where the report's Nth chart panel (1-based) goes.

export function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
}

function safeUrl(url: string): string | null {
  const u = url.trim();
  // A backslash reads as a slash to browsers ("/\evil.example" is "//evil.example"): none at all.
  if (u.includes("\\") || /[\u0000-\u001f]/.test(u)) return null;
  if (/^(https?:|mailto:)/i.test(u)) return u;
  if (/^[/#?]/.test(u) && !u.startsWith("//") && new URL(u, location.origin).origin === location.origin) return u;
  return null;
}

function inline(escaped: string): string {
  const codes: string[] = [];
  let s = escaped.replace(/`([^`]+)`/g, (_, code) => `\u0000${codes.push(code) - 1}\u0000`);
  s = s.replace(/!?\[([^\]]*)\]\(([^)\s]+)\)/g, (_, text, url) => {
    const href = safeUrl(url.replace(/&amp;/g, "&"));
    return href === null ? text : `<a href="${escapeHtml(href)}" rel="noopener noreferrer">${text}</a>`;
  });
  s = s.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>").replace(/__([^_]+)__/g, "<strong>$1</strong>");
  s = s.replace(/(^|[^*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>").replace(/(^|\W)_([^_\s][^_]*)_(?=\W|$)/g, "$1<em>$2</em>");
  s = s.replace(/~~([^~]+)~~/g, "<del>$1</del>");
  return s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${codes[Number(i)]}</code>`);
}

export interface Rendered { html: string; panels: number[] }

/** Markdown to HTML; panel placeholders become <div data-panel="N"> and are listed in `panels`. */
export function renderMarkdown(source: string): Rendered {
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  const out: string[] = [];
  const panels: number[] = [];
  let i = 0;
  let paragraph: string[] = [];
  const flush = () => {
    if (paragraph.length) out.push(`<p>${inline(escapeHtml(paragraph.join("\n"))).replace(/\n/g, " ")}</p>`);
    paragraph = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    let m: RegExpMatchArray | null;
    if (/^```/.test(line)) {
      flush();
      const body: string[] = [];
      i++;
      while (i < lines.length && !/^```/.test(lines[i])) body.push(lines[i++]);
      i++;
      out.push(`<pre><code>${escapeHtml(body.join("\n"))}</code></pre>`);
      continue;
    }
    if ((m = line.match(/^\s*\{\{\s*panel\s+(\d+)\s*\}\}\s*$/))) {
      flush();
      panels.push(Number(m[1]));
      out.push(`<div class="report-panel" data-panel="${Number(m[1])}"></div>`);
    } else if ((m = line.match(/^(#{1,6})\s+(.*)$/))) {
      flush();
      const level = m[1].length;
      out.push(`<h${level}>${inline(escapeHtml(m[2]))}</h${level}>`);
    } else if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      out.push("<hr>");
    } else if (/^\s*[-*+]\s+/.test(line) || /^\s*\d+[.)]\s+/.test(line)) {
      flush();
      const ordered = /^\s*\d/.test(line);
      const items: string[] = [];
      while (i < lines.length && (ordered ? /^\s*\d+[.)]\s+/ : /^\s*[-*+]\s+/).test(lines[i])) {
        items.push(`<li>${inline(escapeHtml(lines[i].replace(/^\s*([-*+]|\d+[.)])\s+/, "")))}</li>`);
        i++;
      }
      out.push(ordered ? `<ol>${items.join("")}</ol>` : `<ul>${items.join("")}</ul>`);
      continue;
    } else if (/^>\s?/.test(line)) {
      flush();
      const quote: string[] = [];
      while (i < lines.length && /^>\s?/.test(lines[i])) quote.push(lines[i++].replace(/^>\s?/, ""));
      out.push(`<blockquote>${inline(escapeHtml(quote.join(" ")))}</blockquote>`);
      continue;
    } else if (!line.trim()) {
      flush();
    } else {
      paragraph.push(line);
    }
    i++;
  }
  flush();
  return { html: out.join("\n"), panels };
}
