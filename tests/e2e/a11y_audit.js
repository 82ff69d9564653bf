() => {
  // The dashboard test's accessibility audit, run in the page (page.evaluate): every input,
  // select and textarea has an accessible name; every button and link has a name and is
  // reachable by Tab; text meets WCAG AA contrast (4.5:1, 3:1 when large) against the
  // background it is drawn on (translucent layers blended). Returns what fails.
  const problems = [];
  const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
  const named = (el) => (el.labels && [...el.labels].some((l) => l.textContent.trim()))
    || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby") || el.title;
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden" || !visible(el)) continue;
    if (!named(el)) problems.push(`unnamed ${el.tagName.toLowerCase()} #${el.id || el.name}`);
  }
  for (const el of document.querySelectorAll("button, a[href]")) {
    if (!visible(el)) continue;
    const name = el.getAttribute("aria-label") || el.textContent.trim() || el.querySelector("img[alt]")?.alt;
    if (!name) problems.push(`unnamed ${el.tagName.toLowerCase()} ${el.outerHTML.slice(0, 80)}`);
    if (el.tabIndex < 0) problems.push(`${el.tagName.toLowerCase()} "${name}" is not reachable by Tab`);
  }
  const parse = (text) => {
    let m = text.match(/^rgba?\(([\d.]+),\s*([\d.]+),\s*([\d.]+)(?:,\s*([\d.]+))?\)/);
    if (m) return [+m[1] / 255, +m[2] / 255, +m[3] / 255, m[4] === undefined ? 1 : +m[4]];
    m = text.match(/^color\(srgb ([\d.e-]+) ([\d.e-]+) ([\d.e-]+)(?: \/ ([\d.]+))?\)/);
    if (m) return [+m[1], +m[2], +m[3], m[4] === undefined ? 1 : +m[4]];
    return null;
  };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  const background = (el) => {
    const layers = [];
    for (let node = el; node && node.nodeType === 1; node = node.parentElement) {
      const bg = parse(getComputedStyle(node).backgroundColor);
      if (bg && bg[3] > 0) { layers.push(bg); if (bg[3] >= 1) break; }
    }
    let color = [1, 1, 1, 1];
    if (!layers.length || layers[layers.length - 1][3] < 1) {
      color = matchMedia("(prefers-color-scheme: dark)").matches ? [0, 0, 0, 1] : [1, 1, 1, 1];
    }
    for (const layer of layers.reverse()) color = over(layer, color);
    return color;
  };
  const lum = (c) => {
    const f = (v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const checked = new Set();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!node.textContent.trim() || checked.has(el) || !visible(el)) continue;
    if (el.closest("canvas, .u-legend, [aria-hidden=true], option")) continue;
    checked.add(el);
    const style = getComputedStyle(el);
    const fg = parse(style.color);
    if (!fg) continue;
    const bg = background(el);
    const text = over(fg, bg);
    const [a, b] = [lum(text), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(style.fontSize);
    const large = size >= 24 || (size >= 18.66 && +style.fontWeight >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)} of "${node.textContent.trim().slice(0, 30)}" (${el.tagName.toLowerCase()}.${el.className})`);
    }
  }
  return problems;
}
