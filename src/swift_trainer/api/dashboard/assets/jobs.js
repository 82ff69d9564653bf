// The jobs table: filters, cursor pages, and a refresh of the page on screen every two
// seconds (one cheap page read; paused while the tab is hidden).

import { get } from "./api.js";
import { badge, bar, errorText, fmtAgo, fmtDuration, fmtNumber, h, replaceKeepingFocus } from "./ui.js";

const STATUSES = ["held", "queued", "scheduled", "running", "stopping", "succeeded", "failed", "stopped"];
const REFRESH_MS = 2000;
const PAGE = 25;

export function elapsedOf(job) {
  if (job.progress && job.progress.elapsed_s !== null && job.progress.elapsed_s !== undefined && job.status === "running") {
    return job.progress.elapsed_s;
  }
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}

export function progressCell(job) {
  const p = job.progress;
  if (!p) return bar(null, job.status === "queued" || job.status === "held" ? "waiting" : "–");
  const pct = p.percent ?? (p.max_steps ? (100 * p.step) / p.max_steps : null);
  const text = p.max_steps ? `${p.step} / ${p.max_steps} (${(pct ?? 0).toFixed(0)}%)` : `step ${p.step}`;
  const kind = job.status === "failed" ? "bad" : job.status === "succeeded" ? "good" : "";
  return bar(pct, text, kind);
}

export function gpusText(job) {
  const host = job.runner_id || job.last_runner_id;
  const ids = job.gpu_ids && job.gpu_ids.length ? `:${job.gpu_ids.join(",")}` : "";
  return host ? `${job.gpu_count} on ${host}${ids}` : `${job.gpu_count}`;
}

function row(job) {
  const p = job.progress || {};
  const live = job.status === "running";
  return h(
    "tr",
    { dataset: { jobId: job.job_id, status: job.status } },
    h("td", h("a", { href: `#/job/${encodeURIComponent(job.job_id)}` }, job.job_id),
      job.owner ? h("div.muted", `owner ${job.owner}`) : null,
      Object.keys(job.labels || {}).length
        ? h("div.labels", Object.entries(job.labels).map(([k, v]) => h("span.chip", `${k}=${v}`)))
        : null),
    h("td", badge(job.status)),
    h("td.num", String(job.priority)),
    h("td", gpusText(job)),
    h("td.progress-cell", progressCell(job)),
    h("td.num", { "data-col": "loss" }, fmtNumber(p.loss)),
    h("td.num", fmtDuration(elapsedOf(job))),
    h("td.num", live ? fmtDuration(p.remaining_s) : "–"),
    h("td.muted", fmtAgo(job.submitted_at)),
  );
}

export function jobsView(main, query) {
  const params = new URLSearchParams(query.replace(/^\?/, ""));
  let status = params.get("status") || "";
  let label = params.get("label") || "";
  const cursors = [null];
  let timer = null;
  let alive = true;

  const statusSelect = h("select", { id: "status-filter", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const labelInput = h("input", {
    id: "label-filter", name: "label", type: "search", placeholder: "key=value, e.g. team=nlp", value: label,
  });
  const count = h("span.muted", { "aria-live": "polite" });
  const tbody = h("tbody");
  const error = h("p.problem", { role: "alert", hidden: true });
  const newer = h("button.secondary", { type: "button", disabled: true }, "← Newer");
  const older = h("button.secondary", { type: "button", disabled: true }, "Older →");
  const pageNo = h("span.muted");

  const form = h("form.filters", { role: "search", "aria-label": "Filter jobs" },
    h("div.field", h("label", { for: "status-filter" }, "Status"), statusSelect),
    h("div.field", h("label", { for: "label-filter" }, "Label"), labelInput),
    h("button", { type: "submit" }, "Filter"),
    count,
  );

  main.append(
    h("div.page-head", h("h1", "Jobs"), h("a.button", { href: "#/submit" }, "Submit a job")),
    form,
    error,
    h("div.table-wrap",
      h("table.jobs", { "aria-label": "Jobs" },
        h("thead", h("tr",
          ["Job", "Status", "Priority", "GPUs", "Progress", "Loss", "Elapsed", "ETA", "Submitted"]
            .map((c) => h("th", { scope: "col" }, c)))),
        tbody)),
    h("div.pager", newer, pageNo, older),
  );

  async function load() {
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status) q.set("status", status);
    if (label) q.set("label", label);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await get(`/jobs?${q}`);
      if (!alive) return;
      error.hidden = true;
      replaceKeepingFocus(tbody, [
        ...(page.items.length
          ? page.items.map(row)
          : [h("tr", h("td.empty", { colspan: 9 }, "No jobs here yet. ", h("a", { href: "#/submit" }, "Submit one.")))]),
      ]);
      older.disabled = !page.next_cursor;
      older.dataset.cursor = page.next_cursor || "";
      newer.disabled = cursors.length <= 1;
      pageNo.textContent = `page ${cursors.length}`;
      count.textContent = `${page.items.length} shown`;
    } catch (err) {
      if (!alive) return;
      error.textContent = errorText(err);
      error.hidden = false;
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (!alive) return;
    timer = setTimeout(async () => {
      if (!document.hidden) await load();
      schedule();
    }, REFRESH_MS);
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    status = statusSelect.value;
    label = labelInput.value.trim();
    const q = new URLSearchParams();
    if (status) q.set("status", status);
    if (label) q.set("label", label);
    history.replaceState(null, "", `#/jobs${q.toString() ? "?" + q : ""}`);
    cursors.length = 1;
    load();
  });
  statusSelect.addEventListener("change", () => form.requestSubmit());
  older.addEventListener("click", () => {
    cursors.push(older.dataset.cursor);
    load();
  });
  newer.addEventListener("click", () => {
    cursors.pop();
    load();
  });

  load();
  schedule();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
