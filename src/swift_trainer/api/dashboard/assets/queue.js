// The queue: the scheduler's order with positions, estimated starts and the reasons a job
// cannot be placed; priority changes; pausing, resuming and running the processor.

import { call, get, post } from "./api.js";
import { badge, confirmAction, errorText, fmtTime, h, replaceKeepingFocus, toast } from "./ui.js";

const REFRESH_MS = 2000;

export function queueView(main) {
  let alive = true;
  let timer = null;
  const processor = h("div.processor", { "aria-live": "polite" });
  const info = h("p.muted");
  const tbody = h("tbody");
  const error = h("p.problem", { role: "alert", hidden: true });
  const pause = h("button.danger-outline", { type: "button", id: "processor-toggle" }, "Pause processor");
  const processNow = h("button.secondary", { type: "button" }, "Process queue now");
  let paused = false;

  main.append(
    h("div.page-head", h("h1", "Queue"), h("div.actions", processNow, pause)),
    processor,
    error,
    info,
    h("div.table-wrap",
      h("table.queue", { "aria-label": "Queued jobs" },
        h("thead", h("tr", ["#", "Job", "Priority", "Estimated start", "Wait", "Placement"].map((c) => h("th", { scope: "col" }, c)))),
        tbody)),
  );

  function priorityEditor(entry) {
    const id = `prio-${entry.job_id}`;
    const input = h("input.prio", { id, type: "number", min: 0, max: 10, step: 1, value: entry.priority, "aria-label": `Priority of ${entry.job_id}` });
    const form = h("form.inline-form", {
      onsubmit: async (event) => {
        event.preventDefault();
        const value = Number(input.value);
        await confirmAction(
          `Change the priority of ${entry.job_id}?`,
          `From ${entry.priority} to ${value}: larger starts first, equal priorities keep their order.`,
          async () => {
            const answer = await call("PUT", `/jobs/${encodeURIComponent(entry.job_id)}/priority`, { priority: value });
            toast(answer.message);
            return answer;
          },
          { okLabel: "Change priority", danger: false },
        );
        load();
      },
    }, input, h("button.secondary.small", { type: "submit" }, "Set"));
    // Keep the editor steady while the table refreshes under it.
    input.addEventListener("focus", () => clearTimeout(timer));
    input.addEventListener("blur", schedule);
    return form;
  }

  async function load() {
    try {
      const q = await get("/queue");
      if (!alive) return;
      error.hidden = true;
      paused = q.processor.paused;
      processor.replaceChildren(h("span", "Processor:", " ", badge(q.processor.state),
        q.processor.reason ? h("span.muted", ` ${q.processor.reason}`) : null,
        q.processor.changed_at ? h("span.muted", ` since ${fmtTime(q.processor.changed_at)}`) : null));
      pause.textContent = paused ? "Resume processor" : "Pause processor";
      pause.className = paused ? "" : "danger-outline";
      info.textContent = `${q.length} queued, ${q.held} held. ` +
        (q.source === "scheduler" ? `Order and estimates by the scheduler at ${fmtTime(q.computed_at)}.` : "No scheduler estimate yet: priority, then submission order.");
      if (document.activeElement && document.activeElement.classList.contains("prio")) return;
      replaceKeepingFocus(tbody, [
        ...(q.entries.length
          ? q.entries.map((e) => h("tr", { dataset: { jobId: e.job_id } },
            h("td.num", String(e.position)),
            h("td", h("a", { href: `#/job/${encodeURIComponent(e.job_id)}` }, e.job_id)),
            h("td", priorityEditor(e)),
            h("td", e.estimated_start ? fmtTime(e.estimated_start) : "–"),
            h("td", e.estimated_wait_time),
            h("td", e.unplaceable ? h("span.warn", { role: "note" }, `cannot be placed: ${e.unplaceable}`)
              : e.blocked_by === "owner_gpu_quota" ? h("span.warn", { role: "note" }, `waiting for its owner's GPU quota${e.blocked_reason ? `: ${e.blocked_reason}` : ""}`)
              : e.blocked_by === "preempting" ? h("span.warn", { role: "note" }, e.blocked_reason || "preempting jobs of lower priority")
              : h("span.muted", `waiting for ${e.gpu_count > 1 ? `${e.gpu_count} GPUs` : "a GPU"}`))))
          : [h("tr", h("td.empty", { colspan: 6 }, "The queue is empty."))]),
      ]);
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

  pause.addEventListener("click", async () => {
    const resume = paused;
    await confirmAction(
      resume ? "Resume the queue processor?" : "Pause the queue processor?",
      resume
        ? "Queued jobs start again as GPUs free up."
        : "Running jobs go on; queued jobs stay queued and nothing new starts until you resume.",
      async () => {
        const answer = await post(`/queue/processor/${resume ? "start" : "stop"}`);
        toast(answer.message);
        return answer;
      },
      { okLabel: resume ? "Resume" : "Pause", danger: !resume },
    );
    load();
  });
  processNow.addEventListener("click", async () => {
    try {
      await post("/queue/process");
      toast("placement pass done");
    } catch (err) {
      toast(errorText(err), "error");
    }
    load();
  });

  load();
  schedule();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
