// Hand-drawn SVG charts: grouped horizontal bars, a scatter/line plot, and swimlanes.
// No library: each chart is a function from data to an <svg> element with a text
// description (role="img" + aria-label) and a <title> on every mark.

import { s, num } from './util.js';

/** About `count` round tick values covering [min, max]. */
export function niceTicks(min, max, count = 5) {
  if (!(max > min)) max = min + 1;
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((x) => x >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.floor(min / step) * step; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  if (out[out.length - 1] < max) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
  return out;
}

function svgRoot(width, height, label) {
  return s('svg', {
    viewBox: `0 0 ${width} ${height}`,
    width: '100%',
    class: 'chart',
    role: 'img',
    'aria-label': label,
    preserveAspectRatio: 'xMinYMin meet',
    style: { 'max-width': `${width}px` },
  });
}

/**
 * Horizontal bars, one group per category.
 * categories: [{label, color}]; series: [{name, values: [number per category], opacity?}]
 */
export function barChart({ title, categories, series, unit = '', width = 520, format = (v) => num(v, 1) }) {
  const labelW = 96;
  const right = 70;
  const bar = 14;
  const gap = 3;
  const groupGap = 12;
  const top = 28;
  const groupH = series.length * (bar + gap) - gap;
  const height = top + categories.length * (groupH + groupGap) + 26;
  const max = Math.max(0, ...series.flatMap((sr) => sr.values.filter((v) => Number.isFinite(v))));
  const ticks = niceTicks(0, max || 1, 4);
  const top0 = ticks[ticks.length - 1];
  const plotW = width - labelW - right;
  const x = (v) => labelW + (plotW * v) / top0;
  const description = `${title}: ${categories
    .map((c, i) => `${c.label} ${series.map((sr) => `${sr.name} ${format(sr.values[i])}${unit}`).join(', ')}`)
    .join('; ')}`;
  const svg = svgRoot(width, height, description);
  svg.append(s('text', { x: 0, y: 14, class: 'chart-title' }, title));
  // Grid and axis.
  const axisY = height - 22;
  for (const t of ticks) {
    svg.append(
      s('line', { x1: x(t), x2: x(t), y1: top - 6, y2: axisY, class: 'grid' }),
      s('text', { x: x(t), y: axisY + 14, class: 'tick', 'text-anchor': 'middle' }, `${format(t)}${unit}`),
    );
  }
  categories.forEach((c, i) => {
    const y0 = top + i * (groupH + groupGap);
    svg.append(
      s('text', { x: labelW - 8, y: y0 + groupH / 2 + 4, class: 'cat', 'text-anchor': 'end' }, c.label),
    );
    series.forEach((sr, j) => {
      const v = sr.values[i];
      const y = y0 + j * (bar + gap);
      const w = Number.isFinite(v) ? Math.max(v > 0 ? 2 : 0, x(v) - labelW) : 0;
      svg.append(
        s(
          'rect',
          {
            x: labelW, y, width: w, height: bar, rx: 2,
            fill: c.color, 'fill-opacity': sr.opacity ?? 1,
            class: 'bar', 'data-cat': c.label, 'data-series': sr.name,
          },
          s('title', {}, `${c.label}, ${sr.name}: ${format(v)}${unit}`),
        ),
        s(
          'text',
          { x: labelW + w + 4, y: y + bar - 3, class: 'val' },
          `${series.length > 1 ? `${sr.name} ` : ''}${Number.isFinite(v) ? format(v) : '—'}${unit}`,
        ),
      );
    });
  });
  svg.append(s('line', { x1: labelW, x2: labelW, y1: top - 6, y2: axisY, class: 'axis' }));
  return svg;
}

/**
 * Points joined per series, over numeric axes.
 * series: [{name, color, points: [{x, y, label}]}]
 */
export function lineChart({ title, series, xLabel, yLabel, width = 720, height = 340, xFormat = (v) => num(v, 2), yFormat = (v) => num(v, 1) }) {
  const left = 56;
  const right = 16;
  const top = 28;
  const bottom = 44;
  const all = series.flatMap((sr) => sr.points);
  const xs = all.map((p) => p.x).filter(Number.isFinite);
  const ys = all.map((p) => p.y).filter(Number.isFinite);
  const xt = niceTicks(Math.min(0, ...xs), Math.max(...xs, 0.0001), 5);
  const yt = niceTicks(Math.min(0, ...ys), Math.max(...ys, 1), 5);
  const [x0, x1] = [xt[0], xt[xt.length - 1]];
  const [y0, y1] = [yt[0], yt[yt.length - 1]];
  const px = (v) => left + ((width - left - right) * (v - x0)) / (x1 - x0);
  const py = (v) => height - bottom - ((height - top - bottom) * (v - y0)) / (y1 - y0);
  const description = `${title}. ${series
    .map((sr) => `${sr.name}: ${sr.points.map((p) => `${xFormat(p.x)} → ${yFormat(p.y)}`).join(', ')}`)
    .join('. ')}`;
  const svg = svgRoot(width, height, description);
  svg.append(s('text', { x: 0, y: 14, class: 'chart-title' }, title));
  for (const t of xt) {
    svg.append(
      s('line', { x1: px(t), x2: px(t), y1: top, y2: height - bottom, class: 'grid' }),
      s('text', { x: px(t), y: height - bottom + 14, class: 'tick', 'text-anchor': 'middle' }, xFormat(t)),
    );
  }
  for (const t of yt) {
    svg.append(
      s('line', { x1: left, x2: width - right, y1: py(t), y2: py(t), class: 'grid' }),
      s('text', { x: left - 6, y: py(t) + 4, class: 'tick', 'text-anchor': 'end' }, yFormat(t)),
    );
  }
  svg.append(
    s('line', { x1: left, x2: left, y1: top, y2: height - bottom, class: 'axis' }),
    s('line', { x1: left, x2: width - right, y1: height - bottom, y2: height - bottom, class: 'axis' }),
    s('text', { x: (left + width - right) / 2, y: height - 8, class: 'axis-label', 'text-anchor': 'middle' }, xLabel),
    s('text', { x: 12, y: (top + height - bottom) / 2, class: 'axis-label', 'text-anchor': 'middle', transform: `rotate(-90 12 ${(top + height - bottom) / 2})` }, yLabel),
  );
  for (const sr of series) {
    const pts = sr.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    if (pts.length > 1) {
      svg.append(s('polyline', {
        points: pts.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(' '),
        fill: 'none', stroke: sr.color, 'stroke-width': 2, 'stroke-opacity': 0.8, class: 'line',
      }));
    }
    for (const p of pts) {
      svg.append(
        s(
          'circle',
          { cx: px(p.x), cy: py(p.y), r: 4, fill: sr.color, class: 'point', 'data-series': sr.name },
          s('title', {}, `${sr.name}${p.label ? ` (${p.label})` : ''}: ${xLabel} ${xFormat(p.x)}, ${yLabel} ${yFormat(p.y)}`),
        ),
      );
    }
  }
  return svg;
}

/**
 * Swimlanes: one lane per actor, events in the order they happened, grouped under the
 * lesson's clock (T=1, T=2…). Steps that share a T keep their order side by side.
 * lanes: [{key, label}]; events: [{t, lane, action, detail, kind}] (kind: ok | lost |
 * refused | wait | info), in order.
 */
export function swimlanes({ title, lanes, events, width = 600 }) {
  const labelW = 84;
  const right = 28;
  const laneH = 46;
  const top = 8;
  const height = top + lanes.length * laneH + 24;
  const n = events.length;
  const step = (width - labelW - right - 24) / Math.max(1, n - 1);
  const x = (i) => labelW + 12 + (n === 1 ? (width - labelW - right) / 2 : i * step);
  const laneIndex = new Map(lanes.map((l, i) => [l.key, i]));
  const description = `${title}. ${events.map((e) => `T=${e.t} ${e.lane}: ${e.action}${e.detail ? ` (${e.detail})` : ''}`).join('; ')}`;
  const svg = svgRoot(width, height, description);
  lanes.forEach((l, i) => {
    const y = top + i * laneH;
    svg.append(
      s('rect', { x: 0, y, width, height: laneH - 4, class: `lane lane-${i % 2}`, rx: 4 }),
      s('text', { x: 8, y: y + laneH / 2 + 2, class: 'lane-label' }, l.label),
      s('line', { x1: labelW, x2: width - right + 12, y1: y + laneH / 2 - 2, y2: y + laneH / 2 - 2, class: 'lane-line' }),
    );
  });
  // The clock: one label per run of steps with the same T, and a faint line between runs.
  const axisY = height - 8;
  let first = 0;
  for (let i = 1; i <= n; i += 1) {
    if (i < n && events[i].t === events[first].t) continue;
    const mid = (x(first) + x(i - 1)) / 2;
    svg.append(s('text', { x: mid, y: axisY, class: 'tick', 'text-anchor': 'middle' }, `T=${events[first].t}`));
    if (i < n) {
      const sep = (x(i - 1) + x(i)) / 2;
      svg.append(s('line', { x1: sep, x2: sep, y1: top, y2: height - 20, class: 'grid' }));
    }
    first = i;
  }
  // Labels alternate above and below the line when neighbours on a lane are close.
  const lastX = new Map();
  const below = new Map();
  events.forEach((e, i) => {
    const li = laneIndex.get(e.lane);
    if (li === undefined) return;
    const cy = top + li * laneH + laneH / 2 - 2;
    const cx = x(i);
    const crowded = cx - (lastX.get(li) ?? -1e9) < 64;
    const under = crowded ? !below.get(li) : false;
    below.set(li, under);
    lastX.set(li, cx);
    const kind = e.kind || 'info';
    const mark = kind === 'lost' || kind === 'refused'
      ? s('path', { d: `M${cx - 5},${cy - 5} L${cx + 5},${cy + 5} M${cx + 5},${cy - 5} L${cx - 5},${cy + 5}`, class: `mark mark-${kind}` })
      : s('circle', { cx, cy, r: 5, class: `mark mark-${kind}` });
    svg.append(
      s(
        'g',
        { class: `event ev-${kind}`, 'data-lane': e.lane },
        mark,
        s('text', { x: cx, y: under ? cy + 17 : cy - 9, class: 'ev-label', 'text-anchor': 'middle' }, e.action),
        s('title', {}, `T=${e.t} · ${e.lane}: ${e.action}${e.detail ? ` — ${e.detail}` : ''}`),
      ),
    );
  });
  return svg;
}
