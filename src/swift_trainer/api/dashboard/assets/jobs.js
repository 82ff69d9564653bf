// The jobs table: filters, cursor pages, and live rows. The table follows the list's change
// feed (GET /jobs/changes/stream, SSE): a changed job on screen is redrawn in place, a new one
// that belongs on this page reloads the page. When the feed is down (or this API has none)
// the page is read again every two seconds instead (paused while the tab is hidden).

import { get, stream } from "./api.js";
import { badge, bar, errorText, fmtAgo, fmtDuration, fmtNumber, h, replaceKeepingFocus } from "./ui.js";

const STATUSES = ["held", "waiting", "queued", "scheduled", "running", "stopping", "succeeded", "failed", "stopped", "timed_out"];
const REFRESH_MS = 2000;
// While the feed is up: a page read now and then anyway (elapsed times, a missed event).
const SAFETY_REFRESH_MS = 30000;
// After the feed said "poll instead", when to try it again.
const RETRY_FEED_MS = 30000;
const PAGE = 25;

/** Does a job belong under these filters (the feed names every job the caller may see)? */
export function matchesFilters(job, { status, label, owner }) {
  if (status && job.status !== status) return false;
  if (owner && job.owner !== owner) return false;
  if (label) {
    const cut = label.indexOf("=");
    const key = label.slice(0, cut).trim();
    const value = label.slice(cut + 1).trim();
    if ((job.labels || {})[key] !== value) return false;
  }
  return true;
}

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
  if ((job.nodes ?? 1) > 1) {
    // A multi-node job: GPUs per host times hosts, and every rank's host (rank 0 first).
    const hosts = job.hosts && job.hosts.length ? ` on ${job.hosts.join(", ")}` : "";
    return `${job.nodes} x ${job.gpu_count}${hosts}`;
  }
  const host = job.runner_id || job.last_runner_id;
  const ids = job.gpu_ids && job.gpu_ids.length ? `:${job.gpu_ids.join(",")}` : "";
  return host ? `${job.gpu_count} on ${host}${ids}` : `${job.gpu_count}`;
}

function row(job) {
  const p = job.progress || {};
  const live = job.status === "running";
  return h(
    "tr",
    { dataset: { jobId: job.job_id, status: job.status, position: String(job.submitted_position) } },
    h("td", h("a", { href: `#/job/${encodeURIComponent(job.job_id)}` }, job.job_id),
      Object.keys(job.labels || {}).length
        ? h("div.labels", Object.entries(job.labels).map(([k, v]) => h("span.chip", `${k}=${v}`)))
        : null),
    h("td", badge(job.status)),
    h("td", { "data-col": "owner" }, job.owner || "–"),
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
  let owner = params.get("owner") || "";
  const cursors = [null];
  let timer = null;
  let alive = true;
  let pushing = false;
  let lastLoad = 0;
  let stopFeed = null;
  let feedRetry = null;
  let reloadSoon = null;

  const statusSelect = h("select", { id: "status-filter", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === status }, s)));
  const labelInput = h("input", {
    id: "label-filter", name: "label", type: "search", placeholder: "key=value, e.g. team=nlp", value: label,
  });
  const ownerInput = h("input", {
    id: "owner-filter", name: "owner", type: "search", placeholder: "any owner", value: owner,
    autocomplete: "off", spellcheck: false,
  });
  const count = h("span.muted", { "aria-live": "polite" });
  const liveState = h("span.live-state", { id: "live-state", dataset: { mode: "poll" } }, "refreshing every 2 s");
  const tbody = h("tbody");
  const error = h("p.problem", { role: "alert", hidden: true });
  const newer = h("button.secondary", { type: "button", disabled: true }, "← Newer");
  const older = h("button.secondary", { type: "button", disabled: true }, "Older →");
  const pageNo = h("span.muted");

  const form = h("form.filters", { role: "search", "aria-label": "Filter jobs" },
    h("div.field", h("label", { for: "status-filter" }, "Status"), statusSelect),
    h("div.field", h("label", { for: "label-filter" }, "Label"), labelInput),
    h("div.field", h("label", { for: "owner-filter" }, "Owner"), ownerInput),
    h("button", { type: "submit" }, "Filter"),
    count,
    liveState,
  );

  main.append(
    h("div.page-head", h("h1", "Jobs"), h("a.button", { href: "#/submit" }, "Submit a job")),
    form,
    error,
    h("div.table-wrap",
      h("table.jobs", { "aria-label": "Jobs", "aria-describedby": "live-state" },
        h("thead", h("tr",
          ["Job", "Status", "Owner", "Priority", "GPUs", "Progress", "Loss", "Elapsed", "ETA", "Submitted"]
            .map((c) => h("th", { scope: "col" }, c)))),
        tbody)),
    h("div.pager", newer, pageNo, older),
  );

  async function load() {
    lastLoad = Date.now();
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (status) q.set("status", status);
    if (label) q.set("label", label);
    if (owner) q.set("owner", owner);
    const cursor = cursors[cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    try {
      const page = await get(`/jobs?${q}`);
      if (!alive) return;
      error.hidden = true;
      replaceKeepingFocus(tbody, [
        ...(page.items.length
          ? page.items.map(row)
          : [h("tr", h("td.empty", { colspan: 10 }, "No jobs here yet. ", h("a", { href: "#/submit" }, "Submit one.")))]),
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
      const due = pushing ? SAFETY_REFRESH_MS : REFRESH_MS;
      if (!document.hidden && Date.now() - lastLoad >= due - 50) await load();
      schedule();
    }, REFRESH_MS);
  }

  function setMode(push) {
    pushing = push;
    liveState.dataset.mode = push ? "push" : "poll";
    liveState.textContent = push ? "live updates" : "refreshing every 2 s";
  }

  function reloadShortly() {
    // A burst of new jobs reloads the page once, not once per job.
    if (reloadSoon) return;
    reloadSoon = setTimeout(() => {
      reloadSoon = null;
      if (alive) load();
    }, 300);
  }

  function applyChanges(changes) {
    const filters = { status, label, owner };
    const rows = new Map([...tbody.querySelectorAll("tr[data-job-id]")].map((tr) => [tr.dataset.jobId, tr]));
    const newest = Math.max(-1, ...[...rows.values()].map((tr) => Number(tr.dataset.position)));
    for (const id of changes.deleted || []) {
      if (rows.has(id)) return reloadShortly();
    }
    for (const job of changes.jobs) {
      const old = rows.get(job.job_id);
      const belongs = matchesFilters(job, filters);
      if (old && belongs) {
        const fresh = row(job);
        const focused = old.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
        old.replaceWith(fresh);
        if (focused) fresh.querySelector(`a[href="${CSS.escape(focused)}"]`)?.focus({ preventScroll: true });
      } else if (old || (belongs && cursors.length === 1 && job.submitted_position > newest)) {
        return reloadShortly(); // left this view, or a new job at the top of the first page
      }
    }
  }

  function follow() {
    clearTimeout(feedRetry);
    if (stopFeed) stopFeed();
    setMode(false);
    const q = new URLSearchParams();
    if (owner) q.set("owner", owner);
    stopFeed = stream(`/jobs/changes/stream${owner ? "?" + q : ""}`, {
      onMessage(payload, id, event) {
        if (!alive) return;
        if (event === "ready") {
          setMode(true);
          load(); // whatever changed while the feed was down
        } else if (event === "reset") {
          load();
        } else if (event === "message") {
          applyChanges(payload);
        }
      },
      onDrop: () => setMode(false),
      onError: () => setMode(false),
      onEnd() {
        // The API has no feed now ("poll instead"): poll, and try the feed again later.
        setMode(false);
        if (alive) feedRetry = setTimeout(follow, RETRY_FEED_MS);
      },
    });
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    status = statusSelect.value;
    label = labelInput.value.trim();
    const ownerChanged = owner !== ownerInput.value.trim();
    owner = ownerInput.value.trim();
    const q = new URLSearchParams();
    if (status) q.set("status", status);
    if (label) q.set("label", label);
    if (owner) q.set("owner", owner);
    history.replaceState(null, "", `#/jobs${q.toString() ? "?" + q : ""}`);
    cursors.length = 1;
    load();
    if (ownerChanged) follow(); // the feed itself is narrowed by owner
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
  follow();
  return () => {
    alive = false;
    clearTimeout(timer);
    clearTimeout(feedRetry);
    clearTimeout(reloadSoon);
    if (stopFeed) stopFeed();
  };
}
