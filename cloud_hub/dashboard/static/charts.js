/* Charts (uPlot) with axes an operator can read: a time axis that spans the data (a single
 * point gets ±5 minutes, not years), or a rounds axis of whole numbers; y ranges padded
 * around the data or fixed ([0, 1] for accuracy, [0, 100] for percentages); the chart
 * follows the width of its card. */
"use strict";

const CHART_COLORS = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#bf3989"];

function xRange(min, max, rounds) {
  if (rounds) return min === max ? [min - 1, max + 1] : [min - 0.25, max + 0.25];
  return min === max ? [min - 300, max + 300] : [min, max];
}

function yRange(min, max, fixedRange) {
  if (fixedRange) return [Math.min(fixedRange[0], min ?? fixedRange[0]), Math.max(fixedRange[1], max ?? fixedRange[1])];
  if (min === null || max === null) return [0, 1];
  if (min === max) { const pad = Math.max(Math.abs(min) * 0.1, 1); return [min >= 0 && min - pad < 0 ? 0 : min - pad, max + pad]; }
  const pad = (max - min) * 0.1;
  return [min >= 0 && min - pad < 0 ? 0 : min - pad, max + pad];
}

/* series: [{label, points: [[x, value], ...]}]; opts: {x: "time"|"rounds", y: [lo, hi], yLabel} */
function chart(el, title, series, opts = {}) {
  el.innerHTML = "";
  const rounds = opts.x === "rounds";
  const xs = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  if (!xs.length) { el.innerHTML = `<div class="chart-empty"><b>${esc(title)}</b><span class="muted">no data yet</span></div>`; return null; }
  const data = [xs, ...series.map((s) => { const m = new Map(s.points); return xs.map((x) => (m.has(x) ? m.get(x) : null)); })];
  const width = () => Math.max(220, (el.clientWidth || 480) - 28);
  const xSeries = rounds ? { label: "round", value: (u, v) => (v === null ? "—" : `round ${v}`) }
    : { label: "time", value: (u, v) => (v === null ? "—" : new Date(v * 1000).toLocaleString()) };
  const options = {
    title, width: width(), height: opts.height || 220,
    // the x range is fixed from the data: uPlot's own guess for a single point spans years
    scales: { x: { time: !rounds, auto: false, range: xRange(xs[0], xs[xs.length - 1], rounds) },
      y: { range: (u, min, max) => yRange(min, max, opts.y) } },
    axes: [
      rounds ? { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? String(t) : "")) } : {},
      { label: opts.yLabel || "", size: 60 },
    ],
    series: [xSeries, ...series.map((s, i) => ({ label: s.label, stroke: CHART_COLORS[i % CHART_COLORS.length], spanGaps: true,
      points: { show: xs.length < 30, size: 6 } }))],
  };
  const plot = new uPlot(options, data, el);
  el.uplot = plot; // the browser tests read the scales from here
  if (window.ResizeObserver) {
    const ro = new ResizeObserver(() => { if (!el.isConnected) return ro.disconnect(); plot.setSize({ width: width(), height: options.height }); });
    ro.observe(el);
  }
  return plot;
}
