// ANSI colour codes in build log lines, read into styled runs of plain text. Only SGR
// (`ESC [ … m`: colours, bold, dim, italic, underline, reset) is understood; every other escape
// sequence is removed, never shown. The runs become text nodes in spans (see `renderAnsi`), so a
// log line is never markup, whatever bytes it holds. Each line starts unstyled, as workers
// reset at the end of their coloured words.

/** The 16 terminal colours: 0–7 normal, 8–15 bright (CSS classes `ansi-fg-N` / `ansi-bg-N`). */
export type Colour = { palette: number } | { rgb: string };

export interface Style {
  fg?: Colour;
  bg?: Colour;
  bold?: boolean;
  dim?: boolean;
  italic?: boolean;
  underline?: boolean;
}

export interface Run {
  text: string;
  style: Style;
}

// CSI with its parameters and final byte; OSC up to BEL or ST; other two-byte escapes.
const ESCAPE = /\x1b\[([0-9;:?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?/g;
// Control characters other than tab are not shown either.
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

/** Splits one line into runs of text with the style in force for each. */
export function parseAnsi(line: string): Run[] {
  const runs: Run[] = [];
  let style: Style = {};
  let last = 0;
  const push = (text: string) => {
    const clean = text.replace(CONTROL, "");
    if (!clean) return;
    const previous = runs[runs.length - 1];
    if (previous && sameStyle(previous.style, style)) previous.text += clean;
    else runs.push({ text: clean, style });
  };
  for (const match of line.matchAll(ESCAPE)) {
    push(line.slice(last, match.index));
    last = match.index + match[0].length;
    if (match[2] === "m") style = applySgr(style, match[1] ?? "");
  }
  push(line.slice(last));
  return runs;
}

/** The line without any escape sequence: what a person reads (and what a search matches). */
export function stripAnsi(line: string): string {
  return parseAnsi(line)
    .map((run) => run.text)
    .join("");
}

function applySgr(current: Style, params: string): Style {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((p) => (p === "" ? 0 : Number(p)));
  let style: Style = { ...current };
  for (let i = 0; i < codes.length; i++) {
    const code = codes[i]!;
    if (code === 0) style = {};
    else if (code === 1) style.bold = true;
    else if (code === 2) style.dim = true;
    else if (code === 3) style.italic = true;
    else if (code === 4) style.underline = true;
    else if (code === 22) {
      delete style.bold;
      delete style.dim;
    } else if (code === 23) delete style.italic;
    else if (code === 24) delete style.underline;
    else if (code >= 30 && code <= 37) style.fg = { palette: code - 30 };
    else if (code >= 90 && code <= 97) style.fg = { palette: code - 90 + 8 };
    else if (code === 39) delete style.fg;
    else if (code >= 40 && code <= 47) style.bg = { palette: code - 40 };
    else if (code >= 100 && code <= 107) style.bg = { palette: code - 100 + 8 };
    else if (code === 49) delete style.bg;
    else if (code === 38 || code === 48) {
      const [colour, used] = extended(codes, i + 1);
      i += used;
      if (colour) {
        if (code === 38) style.fg = colour;
        else style.bg = colour;
      }
    }
  }
  return style;
}

/** `5;N` (the 256-colour palette) or `2;R;G;B` after 38/48: the colour and how many codes it took. */
function extended(codes: number[], at: number): [Colour | undefined, number] {
  const kind = codes[at];
  if (kind === 5) {
    const n = codes[at + 1];
    if (n === undefined || n < 0 || n > 255) return [undefined, 2];
    if (n < 16) return [{ palette: n }, 2];
    return [{ rgb: xterm256(n) }, 2];
  }
  if (kind === 2) {
    const [r, g, b] = [codes[at + 1], codes[at + 2], codes[at + 3]].map((v) => Math.min(255, Math.max(0, v ?? 0)));
    return [{ rgb: `rgb(${r}, ${g}, ${b})` }, 4];
  }
  return [undefined, 1];
}

function xterm256(n: number): string {
  if (n >= 232) {
    const level = 8 + (n - 232) * 10;
    return `rgb(${level}, ${level}, ${level})`;
  }
  const i = n - 16;
  const steps = [0, 95, 135, 175, 215, 255];
  return `rgb(${steps[Math.floor(i / 36)]}, ${steps[Math.floor(i / 6) % 6]}, ${steps[i % 6]})`;
}

function sameColour(a: Colour | undefined, b: Colour | undefined): boolean {
  if (!a || !b) return a === b;
  return "palette" in a ? "palette" in b && a.palette === b.palette : "rgb" in b && a.rgb === b.rgb;
}

function sameStyle(a: Style, b: Style): boolean {
  return sameColour(a.fg, b.fg) && sameColour(a.bg, b.bg) && !!a.bold === !!b.bold && !!a.dim === !!b.dim && !!a.italic === !!b.italic && !!a.underline === !!b.underline;
}

/**
 * The runs as DOM nodes: unstyled text as text nodes, styled text in spans whose classes name
 * the style (palette colours come from the stylesheet, tuned for contrast on the log's
 * background; 256-colour and RGB values are set through the CSSOM, never as markup).
 */
export function renderAnsi(line: string): Node[] {
  return parseAnsi(line).map(({ text, style }) => {
    const classes: string[] = [];
    if (style.fg && "palette" in style.fg) classes.push(`ansi-fg-${style.fg.palette}`);
    if (style.bg && "palette" in style.bg) classes.push(`ansi-bg-${style.bg.palette}`);
    if (style.bold) classes.push("ansi-bold");
    if (style.dim) classes.push("ansi-dim");
    if (style.italic) classes.push("ansi-italic");
    if (style.underline) classes.push("ansi-underline");
    const rgbFg = style.fg && "rgb" in style.fg ? style.fg.rgb : undefined;
    const rgbBg = style.bg && "rgb" in style.bg ? style.bg.rgb : undefined;
    if (classes.length === 0 && !rgbFg && !rgbBg) return document.createTextNode(text);
    const span = document.createElement("span");
    if (classes.length) span.className = classes.join(" ");
    if (rgbFg) span.style.color = rgbFg;
    if (rgbBg) span.style.backgroundColor = rgbBg;
    span.textContent = text;
    return span;
  });
}
