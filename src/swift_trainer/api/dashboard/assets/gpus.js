// GPUs per host: memory, utilisation, temperature, and who holds each one (a job of this
// system, or a foreign process using its memory). Hosts past their lease are marked down.

import { get } from "./api.js";
import { bar, errorText, fmtAgo, fmtBytesMiB, h, replaceKeepingFocus } from "./ui.js";

const REFRESH_MS = 3000;
const HOT_C = 80;

function holder(gpu) {
  if (gpu.job_id) {
    const link = h("a", { href: `#/job/${encodeURIComponent(gpu.job_id)}` }, gpu.job_id);
    // A multi-node job's GPU: which of its ranks runs here.
    return gpu.rank == null ? link : h("span", link, h("span.muted", ` rank ${gpu.rank}`));
  }
  if (gpu.held) {
    return h("span.muted", "another owner's job");
  }
  if (gpu.foreign_memory_mib) {
    return h("span.warn", `foreign process (${fmtBytesMiB(gpu.foreign_memory_mib)})`);
  }
  return h("span.muted", "free");
}

function gpuRow(gpu) {
  const total = gpu.memory_total_mib;
  const used = gpu.memory_used_mib;
  const memPct = total ? (100 * used) / total : null;
  const temp = gpu.temperature_c;
  return h("tr", { dataset: { gpu: gpu.index } },
    h("td.num", String(gpu.index)),
    h("td", gpu.name || "–"),
    h("td.meter", bar(memPct, `${fmtBytesMiB(used)} / ${fmtBytesMiB(total)}`, memPct > 90 ? "bad" : "")),
    h("td.meter", bar(gpu.utilization_pct, `${gpu.utilization_pct ?? "–"}%`)),
    h(`td.num${temp >= HOT_C ? ".hot" : ""}`, temp === null || temp === undefined ? "–" : `${temp} °C`),
    h("td", holder(gpu),
      gpu.health_problems && gpu.health_problems.length
        ? h("div.warn", { dataset: { health: "unhealthy" } }, `unhealthy: ${gpu.health_problems.join("; ")}`)
        : null),
  );
}

function runnerCard(runner) {
  const inv = runner.inventory?.inventory || {};
  const host = inv.host || {};
  const down = !runner.alive;
  return h(`section.panel.host${down ? ".down" : ""}`, { "aria-label": `Host ${runner.runner_id}`, dataset: { runner: runner.runner_id, alive: String(runner.alive) } },
    h("div.panel-head",
      h("h2", runner.runner_id, host.hostname && host.hostname !== runner.runner_id ? h("span.muted", ` (${host.hostname})`) : null),
      h("div.tools",
        down ? h("span.badge", { "data-status": "failed" }, "down") : h("span.badge", { "data-status": "running" }, "up"),
        h("span.muted", `heartbeat ${fmtAgo(runner.seen_at)}`),
        inv.driver_version ? h("span.muted", `driver ${inv.driver_version}, CUDA ${inv.cuda_driver_version || "?"}`) : null)),
    runner.error ? h("p.problem", runner.error) : null,
    down ? h("p.warn", "No heartbeat within the runner lease: its jobs are requeued once the lease expires.") : null,
    runner.drained ? h("p.warn", { dataset: { drained: "true" } }, `Drained: ${runner.drain_reason || "no reason given"}. It finishes its jobs and takes no new ones.`) : null,
    h("div.table-wrap", h("table", { "aria-label": `GPUs of ${runner.runner_id}` },
      h("thead", h("tr", ["GPU", "Name", "Memory", "Utilisation", "Temp", "Holder"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", runner.gpus.length ? runner.gpus.map(gpuRow) : h("tr", h("td.empty", { colspan: 6 }, "No GPUs reported."))))),
  );
}

export function gpusView(main) {
  let alive = true;
  let timer = null;
  const summary = h("p.muted", { "aria-live": "polite" });
  const hosts = h("div.hosts");
  const error = h("p.problem", { role: "alert", hidden: true });
  main.append(h("div.page-head", h("h1", "GPUs")), summary, error, hosts);

  async function load() {
    try {
      const g = await get("/gpus");
      if (!alive) return;
      error.hidden = true;
      const down = g.runners.filter((r) => !r.alive).length;
      summary.textContent = `${g.total} GPUs on live hosts: ${g.assigned} held by jobs, ${g.free} free.` +
        (down ? ` ${down} host(s) down.` : "");
      replaceKeepingFocus(hosts, [
        ...(g.runners.length ? g.runners.map(runnerCard) : [h("p.muted", "No runner has reported yet.")]),
      ]);
    } catch (err) {
      if (!alive) return;
      error.textContent = errorText(err);
      error.hidden = false;
    }
  }

  async function tick() {
    if (!document.hidden) await load();
    if (alive) timer = setTimeout(tick, REFRESH_MS);
  }
  tick();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
