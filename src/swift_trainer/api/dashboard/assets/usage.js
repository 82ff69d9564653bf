// GPU-hours: a chart per UTC day (used and lost) and a table per owner, label or day, for a
// window (the last 7 days by default). A user key sees its own jobs only: the API filters.

import { get } from "./api.js";
import { errorText, fmtDuration, h, replaceKeepingFocus } from "./ui.js";

const HEIGHT = 220;
const DAY_MS = 86400000;

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function dayChart() {
  const plotBox = h("div.plot");
  const summary = h("span.sr-only");
  const empty = h("p.muted.chart-empty", "No GPU time in this window");
  const figure = h("figure.chart", { dataset: { chart: "usage-per-day", days: "0" } },
    h("figcaption", "GPU-hours per day (used, and lost since a checkpoint)"), plotBox, empty, summary);
  let plot = null;

  function options(width) {
    const axis = cssVar("--muted") || "#666";
    const grid = cssVar("--grid") || "rgba(128,128,128,.2)";
    const bars = window.uPlot.paths && window.uPlot.paths.bars ? window.uPlot.paths.bars({ size: [0.6, 60] }) : undefined;
    return {
      width,
      height: HEIGHT,
      legend: { show: true },
      scales: { x: { time: true } },
      series: [
        { label: "day" },
        { label: "GPU-hours", stroke: "#3b82f6", fill: "#3b82f655", width: 1, paths: bars, points: { show: false } },
        { label: "lost GPU-hours", stroke: "#dc2626", fill: "#dc262655", width: 1, paths: bars, points: { show: false } },
      ],
      axes: [
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid } },
        { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid }, size: 60 },
      ],
    };
  }

  return {
    element: figure,
    show(rows, from, to) {
      // One point per day of the window, zero where nothing ran.
      const byDay = new Map(rows.map((r) => [r.group, r]));
      const xs = [], used = [], lost = [];
      for (let t = Date.parse(isoDay(from)); t < to.getTime(); t += DAY_MS) {
        const row = byDay.get(isoDay(new Date(t)));
        xs.push(t / 1000);
        used.push(row ? row.gpu_hours : 0);
        lost.push(row ? row.lost_gpu_hours : 0);
      }
      figure.dataset.days = String(rows.length);
      empty.hidden = rows.length > 0;
      const total = used.reduce((a, b) => a + b, 0);
      summary.textContent = `${rows.length} days with GPU time; ${total.toFixed(2)} GPU-hours in all`;
      const width = Math.max(plotBox.clientWidth, 240);
      if (plot) plot.destroy();
      plot = new window.uPlot(options(width), [xs, used, lost], plotBox);
    },
    destroy() {
      if (plot) plot.destroy();
    },
  };
}

function hours(value) {
  return value.toFixed(2);
}

function usageRow(row) {
  const jobs = Object.entries(row.jobs).map(([k, v]) => `${k} ${v}`).join(", ");
  return h("tr", { dataset: { group: row.group } },
    h("td", row.group),
    h("td.num", hours(row.gpu_hours)),
    h("td.num", hours(row.lost_gpu_hours)),
    h("td.num", String(row.attempts)),
    h("td.num", row.queue_wait_mean_s === null ? "–" : fmtDuration(row.queue_wait_mean_s)),
    h("td.num", row.queue_wait_p95_s === null ? "–" : fmtDuration(row.queue_wait_p95_s)),
    h("td", jobs || "–"),
  );
}

export function usageView(main) {
  let alive = true;
  const now = new Date();
  const groupBy = h("select", { id: "usage-group", name: "group_by" },
    h("option", { value: "owner" }, "owner"),
    h("option", { value: "day" }, "day"),
    h("option", { value: "label" }, "label"));
  const labelKey = h("input", { id: "usage-label", name: "label", placeholder: "label key", "aria-label": "Label key", hidden: true });
  const from = h("input", { id: "usage-from", type: "date", value: isoDay(new Date(now.getTime() - 7 * DAY_MS)) });
  const to = h("input", { id: "usage-to", type: "date", value: isoDay(new Date(now.getTime() + DAY_MS)) });
  const error = h("p.problem", { role: "alert", hidden: true });
  const note = h("p.muted", { "aria-live": "polite" });
  const chart = dayChart();
  const tbody = h("tbody");
  groupBy.addEventListener("change", () => { labelKey.hidden = groupBy.value !== "label"; });
  const form = h("form.inline-form", {
    onsubmit: (event) => { event.preventDefault(); load(); },
  },
  h("label", { for: "usage-group" }, "Group by "), groupBy, labelKey,
  h("label", { for: "usage-from" }, " from "), from,
  h("label", { for: "usage-to" }, " to "), to,
  h("button.secondary.small", { type: "submit" }, "Show"));

  main.append(
    h("div.page-head", h("h1", "Usage")),
    form, error, note, chart.element,
    h("div.table-wrap",
      h("table.usage", { "aria-label": "GPU usage" },
        h("thead", h("tr", ["Group", "GPU-hours", "Lost GPU-hours", "Attempts", "Wait (mean)", "Wait (p95)", "Jobs"].map((c) => h("th", { scope: "col" }, c)))),
        tbody)),
  );

  async function load() {
    const start = new Date(`${from.value}T00:00:00Z`);
    const end = new Date(`${to.value}T00:00:00Z`);
    const grouping = groupBy.value === "label" ? `label:${labelKey.value.trim()}` : groupBy.value;
    const span = `from=${encodeURIComponent(start.toISOString())}&to=${encodeURIComponent(end.toISOString())}`;
    try {
      const [days, report] = await Promise.all([
        get(`/usage?group_by=day&${span}`),
        get(`/usage?group_by=${encodeURIComponent(grouping)}&${span}`),
      ]);
      if (!alive) return;
      error.hidden = true;
      chart.show(days.rows, new Date(days.from), new Date(days.to));
      note.textContent = `From ${days.from} to ${days.to}. Idle GPU-hours are not reported: runners keep only their current utilisation.`;
      replaceKeepingFocus(tbody, report.rows.length ? report.rows.map(usageRow) : [h("tr", h("td.empty", { colspan: 7 }, "No GPU time in this window."))]);
    } catch (err) {
      if (!alive) return;
      error.textContent = errorText(err);
      error.hidden = false;
    }
  }

  load();
  return () => {
    alive = false;
    chart.destroy();
  };
}
