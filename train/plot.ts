/** Renders loss curves as a standalone SVG line chart. */

/** A named series of (step, value) points. */
export interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

function niceTicks(lo: number, hi: number, count: number): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) ticks.push(t);
  return ticks;
}

function fmt(v: number): string {
  return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0)
    ? v.toExponential(1)
    : `${+v.toFixed(3)}`;
}

/** Returns an SVG document plotting `series` against the optimiser step. */
export function lossPlotSvg(
  title: string,
  series: readonly Series[],
  width = 720,
  height = 420,
): string {
  const margin = { left: 64, right: 24, top: 40, bottom: 48 };
  const all = series.flatMap((s) => s.points).filter(([, y]) => Number.isFinite(y));
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y);
  const x0 = Math.min(0, ...xs), x1 = Math.max(1, ...xs);
  let y0 = ys.length ? Math.min(...ys) : 0, y1 = ys.length ? Math.max(...ys) : 1;
  if (y1 - y0 < 1e-9) {
    y0 -= 0.5;
    y1 += 0.5;
  }
  const pw = width - margin.left - margin.right;
  const ph = height - margin.top - margin.bottom;
  const sx = (x: number) => margin.left + ((x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => margin.top + (1 - (y - y0) / (y1 - y0)) * ph;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="22" text-anchor="middle" font-size="15">${escapeXml(title)}</text>`,
  );
  for (const t of niceTicks(y0, y1, 6)) {
    parts.push(
      `<line x1="${margin.left}" x2="${width - margin.right}" y1="${sy(t)}" y2="${
        sy(t)
      }" stroke="#e5e5e5"/>`,
      `<text x="${margin.left - 6}" y="${sy(t) + 4}" text-anchor="end">${fmt(t)}</text>`,
    );
  }
  for (const t of niceTicks(x0, x1, 8)) {
    parts.push(
      `<text x="${sx(t)}" y="${height - margin.bottom + 18}" text-anchor="middle">${fmt(t)}</text>`,
    );
  }
  parts.push(
    `<rect x="${margin.left}" y="${margin.top}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`,
    `<text x="${margin.left + pw / 2}" y="${height - 10}" text-anchor="middle">step</text>`,
    `<text transform="translate(16 ${
      margin.top + ph / 2
    }) rotate(-90)" text-anchor="middle">loss</text>`,
  );
  series.forEach((s, i) => {
    const pts = s.points.filter(([, y]) => Number.isFinite(y));
    if (pts.length) {
      const d = pts.map(([x, y], j) => `${j ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`)
        .join("");
      parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"/>`);
      if (pts.length === 1) {
        parts.push(`<circle cx="${sx(pts[0][0])}" cy="${sy(pts[0][1])}" r="3" fill="${s.color}"/>`);
      }
    }
    const ly = margin.top + 16 + 16 * i;
    parts.push(
      `<line x1="${width - margin.right - 130}" x2="${width - margin.right - 110}" y1="${
        ly - 4
      }" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"/>`,
      `<text x="${width - margin.right - 104}" y="${ly}">${escapeXml(s.name)}</text>`,
    );
  });
  parts.push("</svg>");
  return parts.join("\n") + "\n";
}

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
