// Sweeps: the list (#/sweeps), one sweep (#/sweep/ID: trials, best trial, a parameter
// against the metric, stop and cancel), and the compare view (#/compare?jobs=a,b,...) that
// overlays the loss curves of up to ten jobs.

import { call, get } from "./api.js";
import { badge, confirmAction, errorText, fmtNumber, h, replaceKeepingFocus, toast } from "./ui.js";

const REFRESH_MS = 2000;
const COLORS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#65a30d", "#c026d3", "#475569"];
export const MAX_COMPARED = 10;

function refreshing(load) {
  let alive = true;
  let timer = null;
  async function tick() {
    if (!alive) return;
    await load();
    if (alive) timer = setTimeout(tick, REFRESH_MS);
  }
  tick();
  return () => { alive = false; clearTimeout(timer); };
}

export function sweepsView(main) {
  const tbody = h("tbody");
  const error = h("p.problem", { role: "alert", hidden: true });
  main.append(
    h("div.page-head", h("h1", "Sweeps")),
    h("p.muted", "Create a sweep with POST /sweeps or swift-trainer sweeps create -f sweep.yaml."),
    error,
    h("div.table-wrap",
      h("table.sweeps", { "aria-label": "Sweeps" },
        h("thead", h("tr", ["Sweep", "Name", "Status", "Done", "Trials", "Best trial", "Metric"].map((c) => h("th", { scope: "col" }, c)))),
        tbody)),
  );
  return refreshing(async () => {
    try {
      const { sweeps } = await get("/sweeps");
      error.hidden = true;
      replaceKeepingFocus(tbody, sweeps.length ? sweeps.map((s) => h("tr",
        h("td", h("a", { href: `#/sweep/${encodeURIComponent(s.sweep_id)}` }, s.sweep_id)),
        h("td", s.name),
        h("td", badge(s.status)),
        h("td", `${Math.round(s.percent_done)}%`),
        h("td", String(s.trials_total)),
        h("td", s.best ? h("a", { href: `#/job/${encodeURIComponent(s.best.job_id)}` }, s.best.job_id) : "–"),
        h("td", s.best && s.best.metric !== undefined ? `${s.metric} ${fmtNumber(s.best.metric)}` : s.metric),
      )) : [h("tr", h("td", { colspan: 7 }, h("span.muted", "No sweeps yet")))]);
    } catch (err) {
      error.textContent = errorText(err);
      error.hidden = false;
    }
  });
}

function scatter(params, trials, metric) {
  // One chart per numeric parameter: its value (x) against the trial's metric (y).
  const figures = [];
  for (const name of params) {
    const points = trials
      .filter((t) => typeof t.params[name] === "number" && typeof t.metric === "number")
      .map((t) => [t.params[name], t.metric])
      .sort((a, b) => a[0] - b[0]);
    const figure = h("figure.chart", { "data-chart": `param-${name}`, "data-points": String(points.length) },
      h("figcaption", `${name} vs ${metric}`));
    const box = h("div.plot");
    figure.append(box, h("span.sr-only", points.map(([x, y]) => `${x}: ${y}`).join("; ")));
    figures.push(figure);
    if (!points.length || !window.uPlot) continue;
    requestAnimationFrame(() => {
      new window.uPlot({
        width: Math.max(box.clientWidth, 240), height: 190, legend: { show: false },
        scales: { x: { time: false } },
        series: [{ label: name }, { label: metric, stroke: COLORS[0], width: 0, paths: () => null, points: { show: true, size: 8, fill: COLORS[0] } }],
      }, [points.map((p) => p[0]), points.map((p) => p[1])], box);
    });
  }
  return figures;
}

export function sweepView(main, sweepId) {
  const head = h("div.page-head", h("h1", `Sweep ${sweepId}`));
  const summary = h("p.summary", { "aria-live": "polite" });
  const best = h("div.best");
  const charts = h("div.charts");
  const tbody = h("tbody");
  const thead = h("thead");
  const error = h("p.problem", { role: "alert", hidden: true });
  const compare = h("a.button.secondary", { href: "#/compare" }, "Compare loss curves");
  const stop = h("button.danger-outline", { type: "button" }, "Stop sweep");
  const cancel = h("button.danger", { type: "button" }, "Cancel sweep");
  head.append(h("div.actions", compare, stop, cancel));
  main.append(head, summary, error, best, h("div.table-wrap", h("table.trials", { "aria-label": "Trials" }, thead, tbody)), charts);
  let drawnCharts = "";
  const path = `/sweeps/${encodeURIComponent(sweepId)}`;

  for (const [button, verb, text] of [[stop, "stop", "Every trial under way stops with a checkpoint; no new trial begins."], [cancel, "cancel", "Every unfinished trial is cancelled; no new trial begins."]]) {
    button.addEventListener("click", () => confirmAction(`${verb[0].toUpperCase()}${verb.slice(1)} sweep ${sweepId}?`, text, async () => {
      const answer = await call("POST", `${path}/${verb}`);
      toast(answer.message);
      return answer;
    }, { okLabel: `${verb[0].toUpperCase()}${verb.slice(1)} sweep` }));
  }

  return refreshing(async () => {
    let sweep;
    try {
      sweep = await get(path);
      error.hidden = true;
    } catch (err) {
      error.textContent = errorText(err);
      error.hidden = false;
      return;
    }
    const counts = Object.entries(sweep.counts).map(([k, v]) => `${k} ${v}`).join(", ");
    summary.replaceChildren(badge(sweep.status), ` ${Math.round(sweep.percent_done)}% done · ${sweep.trials_total} trials (${counts}) · ${sweep.goal} ${sweep.metric} · at most ${sweep.max_parallel} at once`);
    stop.disabled = cancel.disabled = sweep.status !== "running";
    const params = [...new Set(sweep.trials.flatMap((t) => Object.keys(t.params)))].sort();
    thead.replaceChildren(h("tr", ["#", "Job", "Status", sweep.metric, "Step", ...params].map((c) => h("th", { scope: "col" }, c))));
    const bestIndex = sweep.best ? sweep.best.index : -1;
    replaceKeepingFocus(tbody, sweep.trials.map((t) => h(`tr${t.index === bestIndex ? ".best" : ""}`, { "data-trial": String(t.index) },
      h("td", t.index === bestIndex ? `${t.index} ★` : String(t.index)),
      h("td", t.status === "pending" ? t.job_id : h("a", { href: `#/job/${encodeURIComponent(t.job_id)}` }, t.job_id)),
      h("td", { "data-status": t.outcome || t.status }, t.outcome || t.status),
      h("td", t.metric === undefined ? "–" : fmtNumber(t.metric)),
      h("td", t.step === undefined ? "–" : String(t.step)),
      ...params.map((p) => h("td", t.params[p] === undefined ? "" : String(t.params[p]))),
    )));
    best.replaceChildren(sweep.best
      ? h("p", h("strong", "Best trial: "), h("a", { href: `#/job/${encodeURIComponent(sweep.best.job_id)}` }, sweep.best.job_id),
        ` (${sweep.metric} ${fmtNumber(sweep.best.metric)}) with `,
        Object.entries(sweep.best.params).map(([k, v]) => `${k} = ${v}`).join(", "))
      : h("p.muted", "No trial has succeeded yet."));
    const started = sweep.trials.filter((t) => t.status !== "pending").slice(0, MAX_COMPARED).map((t) => t.job_id);
    compare.setAttribute("href", `#/compare?jobs=${started.map(encodeURIComponent).join(",")}`);
    const numeric = params.filter((p) => sweep.trials.some((t) => typeof t.params[p] === "number"));
    const key = JSON.stringify(sweep.trials.map((t) => [t.index, t.metric]));
    if (key !== drawnCharts) {
      drawnCharts = key;
      charts.replaceChildren(...scatter(numeric, sweep.trials, sweep.metric));
    }
  });
}

export function compareView(main, query) {
  const wanted = (new URLSearchParams(query).get("jobs") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const jobs = [...new Set(wanted)].slice(0, MAX_COMPARED);
  const error = h("p.problem", { role: "alert", hidden: true });
  const box = h("div.plot");
  const legend = h("ul.legend");
  const figure = h("figure.chart.compare", { "data-chart": "compare", "data-series": "0" }, h("figcaption", "Loss by step"), box, legend);
  const form = h("form.inline-form", {
    onsubmit: (event) => {
      event.preventDefault();
      location.hash = `#/compare?jobs=${encodeURIComponent(input.value.replace(/\s+/g, ""))}`;
    },
  });
  const input = h("input", { id: "compare-jobs", value: jobs.join(","), "aria-label": "Job ids, separated by commas", size: 60 });
  form.append(input, h("button.secondary.small", { type: "submit" }, "Compare"));
  main.append(h("div.page-head", h("h1", "Compare runs")), h("p.muted", `The loss curves of up to ${MAX_COMPARED} jobs, on one chart.`), form, error, figure);
  if (wanted.length > MAX_COMPARED) {
    error.textContent = `Only the first ${MAX_COMPARED} of ${wanted.length} jobs are shown.`;
    error.hidden = false;
  }
  let plot = null;
  let alive = true;
  (async () => {
    const histories = await Promise.all(jobs.map(async (id) => {
      try {
        const progress = await get(`/jobs/${encodeURIComponent(id)}/progress?history=true`);
        return { id, points: (progress.history || []).filter((p) => typeof p.loss === "number") };
      } catch (err) {
        return { id, points: [], error: errorText(err) };
      }
    }));
    if (!alive) return;
    const steps = [...new Set(histories.flatMap((h_) => h_.points.map((p) => p.step)))].sort((a, b) => a - b);
    const data = [steps, ...histories.map((hist) => {
      const byStep = new Map(hist.points.map((p) => [p.step, p.loss]));
      return steps.map((s) => (byStep.has(s) ? byStep.get(s) : null));
    })];
    figure.dataset.series = String(histories.filter((x) => x.points.length).length);
    legend.replaceChildren(...histories.map((hist, i) => h("li", { "data-job": hist.id },
      h("span.swatch", { style: `background:${COLORS[i]}` }), " ",
      h("a", { href: `#/job/${encodeURIComponent(hist.id)}` }, hist.id),
      hist.error ? h("span.problem", ` ${hist.error}`) : ` (${hist.points.length} points)`)));
    if (!steps.length || !window.uPlot) return;
    plot = new window.uPlot({
      width: Math.max(box.clientWidth, 300), height: 260, legend: { show: false },
      scales: { x: { time: false } },
      series: [{ label: "step" }, ...histories.map((hist, i) => ({ label: hist.id, stroke: COLORS[i], width: 2, spanGaps: true, points: { show: false } }))],
    }, data, box);
  })();
  return () => { alive = false; if (plot) plot.destroy(); };
}
