// A metric-against-step line chart on uPlot (vendored: vendor/uPlot.iife.min.js, MIT).
// The chart's figure keeps its point count in data-points, and a text summary for screen
// readers, since a canvas says nothing to them.

const HEIGHT = 190;
/** The points a chart keeps; past twice as many it thins them back, keeping the shape. */
export const MAX_POINTS = 1000;

/** Largest-triangle-three-buckets: the indices that keep the line's shape, ends included
 * (the same rule as the API's curve answer). */
export function lttb(xs, ys, threshold) {
  const count = xs.length;
  if (threshold >= count || count <= 2) return xs.map((_, i) => i);
  const kept = [0];
  const bucket = (count - 2) / (threshold - 2);
  let chosen = 0;
  for (let index = 0; index < threshold - 2; index++) {
    const start = Math.floor(index * bucket) + 1;
    const end = Math.floor((index + 1) * bucket) + 1;
    let afterStart = end;
    let afterEnd = Math.min(Math.floor((index + 2) * bucket) + 1, count);
    if (afterStart >= afterEnd) { afterStart = count - 1; afterEnd = count; }
    let meanX = 0;
    let meanY = 0;
    for (let i = afterStart; i < afterEnd; i++) { meanX += xs[i]; meanY += ys[i]; }
    meanX /= afterEnd - afterStart;
    meanY /= afterEnd - afterStart;
    let best = start;
    let bestArea = -1;
    for (let i = start; i < Math.min(end, count - 1); i++) {
      const area = Math.abs((xs[chosen] - meanX) * (ys[i] - ys[chosen]) - (xs[chosen] - xs[i]) * (meanY - ys[chosen]));
      if (area > bestArea) { best = i; bestArea = area; }
    }
    kept.push(best);
    chosen = best;
  }
  kept.push(count - 1);
  return kept;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function lineChart(name, label, color) {
  const steps = [];
  const values = [];
  const plotBox = document.createElement("div");
  plotBox.className = "plot";
  const caption = document.createElement("figcaption");
  const summary = document.createElement("span");
  summary.className = "sr-only";
  const empty = document.createElement("p");
  empty.className = "muted chart-empty";
  empty.textContent = "No points yet";
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.dataset.chart = name;
  figure.dataset.points = "0";
  caption.textContent = label;
  const latest = document.createElement("span");
  latest.className = "latest";
  caption.append(" ", latest);
  figure.append(caption, plotBox, empty, summary);

  let plot = null;
  let frame = 0;

  function options(width) {
    const axis = cssVar("--muted") || "#666";
    const grid = cssVar("--grid") || "rgba(128,128,128,.2)";
    return {
      width,
      height: HEIGHT,
      legend: { show: false },
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: false } },
      series: [
        { label: "step" },
        { label, stroke: color, width: 2, fill: `${color}1f`, points: { show: false } },
      ],
      axes: [
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 60,
          values: (u, splits) => splits.map((v) => (Math.abs(v) < 1e-2 && v !== 0 ? v.toExponential(0) : +v.toPrecision(3))) },
      ],
    };
  }

  function draw() {
    frame = 0;
    figure.dataset.points = String(steps.length);
    if (!steps.length) return;
    empty.hidden = true;
    const last = values[values.length - 1];
    latest.textContent = Number(last.toPrecision(4)).toString();
    summary.textContent = `${steps.length} points; latest ${last} at step ${steps[steps.length - 1]}`;
    const width = Math.max(plotBox.clientWidth, 200);
    if (!plot) {
      // uPlot is loaded by a classic deferred script before this module runs.
      plot = new window.uPlot(options(width), [steps, values], plotBox);
    } else {
      plot.setData([steps, values]);
    }
  }

  const resize = new ResizeObserver(() => {
    if (plot && plotBox.clientWidth > 0) plot.setSize({ width: plotBox.clientWidth, height: HEIGHT });
  });
  resize.observe(plotBox);

  return {
    element: figure,
    add(step, value) {
      steps.push(step);
      values.push(value);
      if (steps.length > 2 * MAX_POINTS) {
        const kept = lttb(steps, values, MAX_POINTS);
        const keptSteps = kept.map((i) => steps[i]);
        const keptValues = kept.map((i) => values[i]);
        steps.splice(0, steps.length, ...keptSteps);
        values.splice(0, values.length, ...keptValues);
      }
      if (!frame) frame = requestAnimationFrame(draw);
    },
    destroy() {
      resize.disconnect();
      if (frame) cancelAnimationFrame(frame);
      if (plot) plot.destroy();
    },
  };
}
