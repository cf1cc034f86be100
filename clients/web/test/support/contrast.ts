// Colour contrast, checked in the page: every visible text against its background, WCAG AA.

/** Runs in the page: visible texts whose contrast with their background is below 4.5:1. */
export function lowContrastTexts(): { checked: number; failures: string[] } {
  const rgb = (css: string): [number, number, number, number] => {
    const m = css.match(/rgba?\(([^)]+)\)/);
    const [r = 0, g = 0, b = 0, a = 1] = (m?.[1] ?? "0,0,0,0").split(/[ ,/]+/).filter(Boolean).map(Number);
    return [r, g, b, m ? a : 0];
  };
  const luminance = ([r, g, b]: number[]) => {
    const c = [r, g, b].map((v) => {
      const s = (v ?? 0) / 255;
      return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * c[0]! + 0.7152 * c[1]! + 0.0722 * c[2]!;
  };
  const background = (el: Element | null): number[] => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c[3] > 0.5) return c;
    }
    return [255, 255, 255, 1];
  };
  const failures: string[] = [];
  let checked = 0;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || !node.textContent?.trim() || el.closest(".visually-hidden, [hidden], noscript, svg")) continue;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.display === "none" || el.getClientRects().length === 0) continue;
    const fg = luminance(rgb(style.color));
    const bg = luminance(background(el));
    const opacity = Number(style.opacity) * (el.closest("button:disabled") ? 0.55 : 1);
    const ratio = (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05);
    checked += 1;
    if (opacity === 1 && ratio < 4.5) failures.push(`${node.textContent.trim().slice(0, 40)}: ${ratio.toFixed(2)}`);
  }
  return { checked, failures };
}
