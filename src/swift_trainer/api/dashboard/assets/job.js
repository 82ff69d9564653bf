// One job's page: live charts, log tail, audit timeline, checkpoints, exports, actions,
// the spec and the swift command line. Three SSE streams feed it (progress, logs, events);
// each event also refreshes the summary, so checkpoints and status never lag the timeline.

import { call, get, post, stream } from "./api.js";
import { lineChart } from "./charts.js";
import { elapsedOf, gpusText, progressCell } from "./jobs.js";
import {
  badge, confirmAction, errorText, fmtDuration, fmtNumber, fmtTime, h, shellQuote, toast,
} from "./ui.js";

const MAX_LOG_LINES = 3000;

/** The statuses in which each action is allowed (the job lifecycle of the API's domain). */
export const ACTIONS_BY_STATUS = {
  stop: ["held", "queued", "scheduled", "running"],
  start: ["held", "stopped", "failed", "paused"],
  pause: ["held", "queued", "scheduled", "running"],
  resume: ["paused", "stopped"],
  export: ["succeeded", "failed", "stopped", "paused", "cancelled"],
  delete: ["held", "queued", "succeeded", "failed", "stopped", "paused", "cancelled"],
};

/** Whether the job page offers ``action`` for ``job`` (an export also needs a checkpoint). */
export function allows(action, job) {
  if (!ACTIONS_BY_STATUS[action].includes(job.status)) return false;
  return action !== "export" || job.checkpoints.length > 0;
}
const QUIET_EVENTS = new Set(["JobProgressed", "JobLogged"]);

/** One line saying what an event did, for the audit timeline. */
function describe(event) {
  const d = event.data || {};
  switch (event.type) {
    case "JobSubmitted": return `submitted (${d.spec?.model_path ?? "?"} on ${d.spec?.training_file || d.spec?.data_path || "?"})`;
    case "JobQueued": return `queued with priority ${d.priority}`;
    case "JobScheduled": return `placed on ${d.runner_id} GPU ${(d.gpu_ids || []).join(", ")} (attempt ${d.attempt})`;
    case "JobStarted": return `started on ${d.runner_id}, pid ${d.pid}`;
    case "CheckpointSaved": return `checkpoint at step ${d.step}: ${d.path}`;
    case "JobPriorityChanged": return `priority set to ${d.priority}`;
    default: {
      const parts = Object.entries(d)
        .filter(([k, v]) => k !== "spec" && k !== "command" && v !== null && typeof v !== "object")
        .map(([k, v]) => `${k}: ${v}`);
      return parts.join(", ");
    }
  }
}

function dl(pairs) {
  return h("dl.facts", pairs.map(([term, value]) => [h("dt", term), h("dd", value)]));
}

export function jobView(main, jobId) {
  const path = `/jobs/${encodeURIComponent(jobId)}`;
  const stops = [];
  let alive = true;
  let summary = null;
  let command = null;
  let shownArtifacts = null;

  // --- head and actions -------------------------------------------------------------------
  const title = h("h1", jobId);
  const status = h("span", { "aria-live": "polite", id: "job-status" });
  const actions = h("div.actions", { role: "group", "aria-label": "Job actions" });
  const problem = h("p.problem", { role: "alert", hidden: true });

  function action(label, verb, run, { danger = true, done = refresh } = {}) {
    return h("button", {
      type: "button", class: danger ? "danger-outline" : "secondary", "data-action": label.toLowerCase(),
      hidden: true,
      onclick: async () => {
        const result = await confirmAction(`${label} ${jobId}?`, verb, run, { okLabel: label, danger });
        if (result && result.message) toast(result.message);
        if (result) done();
      },
    }, label);
  }

  actions.append(
    action("Stop", "The training saves a checkpoint and stops; you can resume it later.", () => post(`${path}/stop`)),
    action("Start", "A held job joins the queue; a stopped or failed one is queued again and resumes from its last checkpoint.", () => post(`${path}/start`), { danger: false }),
    action("Pause", "The training saves a checkpoint and rests as paused; resume it later.", () => post(`${path}/pause`)),
    action("Resume", "A paused or stopped job is queued again and resumes from its last checkpoint.", () => post(`${path}/resume`), { danger: false }),
    action("Export", "Merge the LoRA adapter of the latest checkpoint into a full model on the runner that holds it.", () => post(`${path}/export`), { danger: false }),
    action("Delete", "The job disappears from lists; its recorded events stay in the event store.", async () => {
      await call("DELETE", path);
      return { message: `job ${jobId} deleted` };
    }, { done: () => { location.hash = "#/jobs"; } }),
  );

  // --- figures ----------------------------------------------------------------------------
  const facts = h("div.cards");

  // --- charts -----------------------------------------------------------------------------
  const charts = {
    loss: lineChart("loss", "Loss", "#2563eb"),
    eval_loss: lineChart("eval_loss", "Eval loss", "#db2777"),
    learning_rate: lineChart("learning_rate", "Learning rate", "#059669"),
    grad_norm: lineChart("grad_norm", "Grad norm", "#d97706"),
  };
  let lastStep = -1;
  let lastEval = null;
  function addPoint(point) {
    if (point.step === null || point.step === undefined || point.step <= lastStep) return;
    lastStep = point.step;
    for (const [name, chart] of Object.entries(charts)) {
      const value = point[name];
      if (value === null || value === undefined) continue;
      // Progress repeats the newest eval loss until the next evaluation: plot each once.
      if (name === "eval_loss") {
        if (value === lastEval) continue;
        lastEval = value;
      }
      chart.add(point.step, value);
    }
  }

  // --- logs -------------------------------------------------------------------------------
  const logBox = h("div.log", { id: "log", role: "log", tabindex: 0, "aria-label": "Training log" });
  const followBox = h("input", { type: "checkbox", id: "log-follow", checked: true });
  const search = h("input", { type: "search", id: "log-search", placeholder: "Search the log" });
  const logCount = h("span.muted");
  const lines = [];

  function lineEl(line, needle) {
    const el = h(`div.line${line.stream === "stderr" ? ".err" : ""}`);
    if (!needle) {
      el.textContent = line.text;
      return el;
    }
    const lower = line.text.toLowerCase();
    let at = 0;
    for (;;) {
      const hit = lower.indexOf(needle, at);
      if (hit < 0) break;
      el.append(line.text.slice(at, hit), h("mark", line.text.slice(hit, hit + needle.length)));
      at = hit + needle.length;
    }
    el.append(line.text.slice(at));
    return el;
  }

  function renderLog() {
    const needle = search.value.trim().toLowerCase();
    const shown = needle ? lines.filter((l) => l.text.toLowerCase().includes(needle)) : lines;
    logBox.replaceChildren(...shown.map((l) => lineEl(l, needle)));
    logCount.textContent = needle ? `${shown.length} of ${lines.length} lines match` : `${lines.length} lines`;
    if (followBox.checked) logBox.scrollTop = logBox.scrollHeight;
  }

  function addLine(line) {
    lines.push(line);
    const needle = search.value.trim().toLowerCase();
    if (lines.length > MAX_LOG_LINES) {
      lines.splice(0, lines.length - MAX_LOG_LINES);
      logBox.firstChild?.remove();
    }
    if (!needle || line.text.toLowerCase().includes(needle)) logBox.append(lineEl(line, needle));
    logCount.textContent = needle ? "" : `${lines.length} lines`;
    if (followBox.checked) logBox.scrollTop = logBox.scrollHeight;
  }
  search.addEventListener("input", renderLog);
  followBox.addEventListener("change", () => {
    if (followBox.checked) logBox.scrollTop = logBox.scrollHeight;
  });

  // --- timeline ---------------------------------------------------------------------------
  const timeline = h("ol.timeline", { id: "timeline", "aria-label": "Audit timeline" });
  const quietBox = h("input", { type: "checkbox", id: "show-progress" });
  const events = [];
  function eventEl(event) {
    return h("li", { dataset: { type: event.type }, hidden: QUIET_EVENTS.has(event.type) && !quietBox.checked },
      h("time", { datetime: event.at }, fmtTime(event.at)),
      h("div", h("strong", event.type), event.actor ? h("span.actor", `by ${event.actor}`) : null),
      h("div.what", describe(event)));
  }
  quietBox.addEventListener("change", () => timeline.replaceChildren(...events.slice().reverse().map(eventEl)));

  // --- artifacts, spec and command --------------------------------------------------------
  const artifacts = h("div");
  const spec = h("pre.code", { id: "spec" });
  const commandBox = h("pre.code", { id: "command" }, "Appears once a runner starts the job.");
  const copy = h("button.secondary.small", { type: "button", onclick: async () => {
    if (!command) return;
    try {
      await navigator.clipboard.writeText(shellQuote(command));
      toast("command line copied");
    } catch (err) {
      toast(`could not copy: ${err.message}`, "error");
    }
  } }, "Copy");

  main.append(
    h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", jobId),
    h("div.page-head", h("div.title", title, status), actions),
    problem,
    facts,
    h("section", { "aria-labelledby": "charts-h" }, h("h2", { id: "charts-h" }, "Training curves"),
      h("div.charts", Object.values(charts).map((c) => c.element))),
    h("div.split",
      h("section.panel", { "aria-labelledby": "log-h" },
        h("div.panel-head", h("h2", { id: "log-h" }, "Log"),
          h("div.tools",
            h("label.inline", { for: "log-search" }, h("span.sr-only", "Search the log"), search),
            h("label.inline", followBox, " Follow"),
            logCount)),
        logBox),
      h("section.panel", { "aria-labelledby": "timeline-h" },
        h("div.panel-head", h("h2", { id: "timeline-h" }, "Audit timeline"),
          h("label.inline", quietBox, " progress events")),
        timeline)),
    h("section.panel", { "aria-labelledby": "art-h" }, h("h2", { id: "art-h" }, "Checkpoints and exports"), artifacts),
    h("div.split",
      h("section.panel", { "aria-labelledby": "spec-h" }, h("h2", { id: "spec-h" }, "Spec as submitted"), spec),
      h("section.panel", { "aria-labelledby": "cmd-h" },
        h("div.panel-head", h("h2", { id: "cmd-h" }, "swift command line"), copy), commandBox)),
  );

  function renderSummary(job) {
    const p = job.progress || {};
    status.replaceChildren(badge(job.status));
    for (const button of actions.querySelectorAll("button[data-action]")) {
      button.hidden = !allows(button.dataset.action, job);
    }
    document.title = `${job.job_id} · ${job.status} · swift-trainer`;
    facts.replaceChildren(
      h("div.card.wide", h("span.k", "Progress"), progressCell(job)),
      h("div.card", h("span.k", "Loss"), h("span.v", { id: "fact-loss" }, fmtNumber(p.loss))),
      h("div.card", h("span.k", "Eval loss"), h("span.v", fmtNumber(p.eval_loss))),
      h("div.card", h("span.k", "Learning rate"), h("span.v", fmtNumber(p.learning_rate))),
      h("div.card", h("span.k", "Grad norm"), h("span.v", fmtNumber(p.grad_norm))),
      h("div.card", h("span.k", "Elapsed"), h("span.v", fmtDuration(elapsedOf(job)))),
      h("div.card", h("span.k", "ETA"), h("span.v", job.status === "running" ? fmtDuration(p.remaining_s) : "–")),
      h("div.card", h("span.k", "GPUs"), h("span.v", gpusText(job))),
      h("div.card", h("span.k", "Priority"), h("span.v", String(job.priority))),
      h("div.card", h("span.k", "Attempt"), h("span.v", `${job.attempt}`, h("small.muted", ` · ${job.retries}/${job.max_retries} retries`), h("small.muted", ` · preempted ${job.preemptions ?? 0}×`))),
    );
    const scores = Object.entries(job.eval_results || {});
    if (scores.length || job.eval_error) {
      facts.append(h("div.card.wide", { id: "fact-eval" }, h("span.k", "Evaluation"),
        h("span.v", scores.length ? scores.map(([d, v]) => `${d} ${fmtNumber(v)}`).join(" · ") : "failed"),
        job.eval_model ? h("small.muted", ` of ${job.eval_model}`) : null,
        job.eval_error ? h("small.muted", ` ${job.eval_error}`) : null));
    }
    if (job.status === "waiting" && (job.after || []).length) {
      facts.append(h("div.card.wide", { id: "fact-after" }, h("span.k", "Waiting for"),
        h("span.v", job.after.map((d, i) => [i ? ", " : "", h("a", { href: `#/job/${encodeURIComponent(d.job)}` }, d.job), ` ${d.on}`]))));
    }
    const runs = Object.entries(job.tracker_urls || {}).filter(([, url]) => /^https?:\/\//.test(url));
    if (runs.length) {
      facts.append(h("div.card.wide", { id: "fact-tracker" }, h("span.k", "Tracked in"),
        h("span.v", runs.map(([tracker, url], i) => [i ? " · " : "", h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, tracker)]))));
    }
    for (const warning of job.start_warnings || []) facts.append(h("div.card.wide", h("span.k", "Warning"), h("span.v", warning)));
    const failure = job.failure;
    const failedText = job.failure_reason && (failure ? `failed (${failure.kind}): ${job.failure_reason}` : `failed: ${job.failure_reason}`);
    const retried = !job.failure_reason && failure && job.status !== "failed" ? `retried after ${failure.kind}: ${failure.detail}` : null;
    const warned = (job.warnings || []).filter((w) => w.attempt === job.attempt && ["running", "stopping"].includes(job.status))
      .map((w) => `warning (${w.kind.replace("_", " ")}): ${w.reason}`);
    const reasons = [failedText, retried, ...warned, job.stop_reason && `stopped: ${job.stop_reason}`, job.preempted_by && `being preempted by ${job.preempted_by}`].filter(Boolean);
    problem.hidden = !reasons.length;
    problem.replaceChildren(reasons.join(" · "));
    if (failure && failure.log_line) problem.append(" — ", h("code.failure-line", { id: "failure-line" }, failure.log_line));
    if (job.excluded_gpus && job.excluded_gpus.length) problem.append(" · ", h("span.muted", `avoids GPUs ${job.excluded_gpus.join(", ")}`));
    spec.textContent = JSON.stringify({
      data_path: job.data_path || undefined, training_file: job.training_file ?? undefined,
      validation_file: job.validation_file ?? undefined, model_path: job.model_path, output_dir: job.output_dir,
      owner: job.owner ?? undefined,
      priority: job.priority, gpu_count: job.gpu_count, gpu_name: job.gpu_name ?? undefined,
      min_gpu_memory_gb: job.min_gpu_memory_gb ?? undefined, auto_start: job.auto_start,
      max_retries: job.max_retries, labels: job.labels, train_args: job.train_args,
      preemptible: job.preemptible, max_runtime: job.max_runtime ?? undefined,
    }, null, 2);
    // Re-rendered only when they change, so a focused button keeps its focus.
    const exportable = allows("export", job);
    const artifactsKey = JSON.stringify([job.checkpoints, job.exports, exportable]);
    if (artifactsKey === shownArtifacts) return;
    shownArtifacts = artifactsKey;
    artifacts.replaceChildren(
      h("h3", "Checkpoints"),
      job.checkpoints.length
        ? h("table.compact", h("thead", h("tr", ["Step", "Attempt", "Path", ""].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", job.checkpoints.map((c) => h("tr", h("td.num", String(c.step)), h("td.num", String(c.attempt)), h("td", h("code", c.path)),
            h("td", !exportable ? "" : h("button.secondary.small", {
              type: "button",
              "aria-label": `Export checkpoint ${c.step}`,
              onclick: async () => {
                const result = await confirmAction(`Export checkpoint ${c.step}?`, `Merge the LoRA adapter of ${c.path} into a full model.`,
                  () => post(`${path}/export`, { checkpoint: c.path }), { okLabel: "Export", danger: false });
                if (result && result.message) toast(result.message);
                refresh();
              },
            }, "Export"))))))
        : h("p.muted", "None yet: swift saves one every save_steps steps."),
      h("h3", "Exports"),
      job.exports.length
        ? h("table.compact", h("thead", h("tr", ["Export", "Status", "Checkpoint", "Merged model"].map((c) => h("th", { scope: "col" }, c)))),
          h("tbody", job.exports.map((x) => h("tr", h("td", x.export_id), h("td", badge(x.status)), h("td", h("code", x.checkpoint)), h("td", x.artifact_path ? h("code", x.artifact_path) : x.error || "–")))))
        : h("p.muted", "None: Export merges the latest checkpoint's LoRA adapter."),
    );

  }

  /** An unknown (or deleted) id: a page that says so, with nothing to act on. */
  function showNotFound() {
    alive = false;
    disconnect();
    document.title = "Job not found · swift-trainer";
    main.replaceChildren(
      h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", jobId),
      h("section.not-found", { id: "job-not-found" },
        h("h1", "Job not found"),
        h("p", `There is no job with the id ${jobId}. It may have been deleted, or the link may be mistyped.`),
        h("p", h("a", { href: "#/jobs" }, "Back to the jobs"))),
    );
  }

  // Summaries and progress messages race each other: each carries the job's version, and
  // an older one never overwrites a newer one. A refresh asked for while one is in flight
  // runs again after it, since the one in flight may have read before the change.
  let pending = null;
  let again = false;
  let shownVersion = -1;
  async function refresh() {
    if (pending) {
      again = true;
      return pending;
    }
    pending = (async () => {
      try {
        do {
          again = false;
          const fresh = await get(path);
          if (alive && fresh.version >= shownVersion) {
            summary = fresh;
            shownVersion = fresh.version;
            renderSummary(summary);
          }
        } while (again && alive);
      } catch (err) {
        if (!alive) return;
        if (err.status === 404) {
          showNotFound();
        } else {
          toast(errorText(err), "error");
        }
      } finally {
        pending = null;
      }
    })();
    return pending;
  }

  // The streams hold three of the browser's six connections to this host: a hidden tab
  // lets them go (so a few open job tabs cannot starve the rest) and picks up where it
  // left off when shown again.
  let lastSeq = null;
  let lastPosition = 0;

  // One read at a time; a report that arrives during a read asks for one more after it,
  // since the read in flight may predate that report's steps.
  let curveRead = null;
  let curveAgain = false;
  function catchUpCurve() {
    if (curveRead) {
      curveAgain = true;
      return curveRead;
    }
    curveRead = (async () => {
      do {
        curveAgain = false;
        await readCurve();
      } while (curveAgain && alive);
    })().finally(() => { curveRead = null; });
    return curveRead;
  }

  async function readCurve() {
    try {
      const progress = await get(`${path}/progress?history=true`);
      for (const point of progress.history || []) addPoint(point);
    } catch (err) {
      toast(errorText(err), "error");
    }
  }

  function connect() {
    stops.push(stream(`${path}/progress/stream`, {
      onMessage: (p, id) => {
        // A report carries the steps logged since the previous one: read them from the
        // curve (they are there before the report is streamed), then the report's own.
        if (p.step > lastStep) {
          catchUpCurve().then(() => addPoint(p));
        }
        const version = Number(id);
        if (summary && version >= shownVersion) {
          shownVersion = version;
          summary = { ...summary, status: p.status, progress: { ...p } };
          renderSummary(summary);
        }
      },
      onError: (err) => toast(`progress: ${errorText(err)}`, "error"),
    }));
    const logQuery = lastSeq === null ? "limit=500" : `after=${lastSeq}`;
    stops.push(stream(`${path}/logs/stream?${logQuery}`, {
      onMessage: (line) => {
        lastSeq = line.seq;
        addLine(line);
      },
      onError: (err) => toast(`log: ${errorText(err)}`, "error"),
    }));
    stops.push(stream(`${path}/events/stream?after=${lastPosition}`, {
      onMessage: (event) => {
        lastPosition = event.position;
        events.push(event);
        timeline.prepend(eventEl(event));
        if (event.type === "JobStarted" && Array.isArray(event.data.command)) {
          command = event.data.command;
          commandBox.textContent = shellQuote(command);
        }
        if (!QUIET_EVENTS.has(event.type)) refresh();
      },
      onError: (err) => toast(`events: ${errorText(err)}`, "error"),
    }));
  }

  function disconnect() {
    for (const stop of stops.splice(0)) stop();
  }

  async function onVisibility() {
    if (document.hidden) {
      disconnect();
    } else if (alive && !stops.length && summary) {
      await Promise.all([refresh(), catchUpCurve()]);
      if (alive && !document.hidden && !stops.length) connect();
    }
  }

  (async () => {
    await refresh();
    if (!alive || !summary) return;
    await catchUpCurve();
    if (alive && !document.hidden) connect();
  })();
  document.addEventListener("visibilitychange", onVisibility);

  return () => {
    alive = false;
    document.removeEventListener("visibilitychange", onVisibility);
    disconnect();
    for (const chart of Object.values(charts)) chart.destroy();
  };
}
