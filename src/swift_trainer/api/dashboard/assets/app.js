// The dashboard's router: one view at a time, chosen by the URL fragment (#/jobs,
// #/job/ID, #/queue, #/gpus, #/usage, #/submit), so links, the back button and reloads all work
// without any server-side routing beyond "/".

import { forgetKey, apiKey, get } from "./api.js";
import { h } from "./ui.js";
import { jobsView } from "./jobs.js";
import { jobView } from "./job.js";
import { queueView } from "./queue.js";
import { gpusView } from "./gpus.js";
import { submitView } from "./submit.js";
import { usageView } from "./usage.js";
import { compareView, sweepView, sweepsView } from "./sweeps.js";

const main = document.getElementById("main");
let teardown = null;

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [pathPart, queryPart = ""] = hash.split("?");
  const [name, ...rest] = pathPart.split("/");
  const arg = rest.length ? decodeURIComponent(rest.join("/")) : "";
  const views = {
    "": () => jobsView(main, ""),
    jobs: () => jobsView(main, queryPart),
    job: () => jobView(main, arg),
    queue: () => queueView(main),
    gpus: () => gpusView(main),
    usage: () => usageView(main),
    submit: () => submitView(main),
    sweeps: () => sweepsView(main),
    sweep: () => sweepView(main, arg),
    compare: () => compareView(main, queryPart),
  };
  const view = views[name] || (() => {
    main.replaceChildren(h("h1", "Not found"), h("p", h("a", { href: "#/jobs" }, "Back to the jobs")));
    return null;
  });
  if (teardown) teardown();
  teardown = null;
  main.replaceChildren();
  const nav = name === "job" || name === "" ? "jobs" : name === "sweep" || name === "compare" ? "sweeps" : name;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  teardown = view();
  main.focus({ preventScroll: true });
}

function showKeyButton() {
  document.getElementById("forget-key").hidden = !apiKey();
}

document.getElementById("forget-key").addEventListener("click", () => {
  forgetKey();
  route();
});
document.addEventListener("api-key-changed", showKeyButton);
window.addEventListener("hashchange", route);
showKeyButton();
route();

// The header's connection light: is the API answering, and is the queue processor on?
const conn = document.getElementById("conn");
async function ping() {
  try {
    const status = await get("/queue/processor/status");
    conn.textContent = status.paused ? "queue paused" : "live";
    conn.dataset.state = status.paused ? "paused" : "ok";
  } catch (err) {
    conn.textContent = "offline";
    conn.dataset.state = "down";
  }
}
ping();
setInterval(ping, 5000);
