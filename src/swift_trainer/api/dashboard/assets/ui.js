// Small DOM and formatting pieces every view uses: element building, numbers, times,
// status badges, progress bars, toasts and the confirmation dialog.

import { ApiError } from "./api.js";

/** h("div.card", {attrs}, ...children): build an element; strings become text nodes. */
export function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  if (abs < 1e-3 || abs >= 1e6) return value.toExponential(2);
  return Number(value.toPrecision(digits)).toString();
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

export function fmtAgo(iso) {
  if (!iso) return "–";
  return `${fmtDuration((Date.now() - new Date(iso).getTime()) / 1000)} ago`;
}

export function fmtBytesMiB(mib) {
  if (mib === null || mib === undefined) return "–";
  return mib >= 1024 ? `${(mib / 1024).toFixed(1)} GiB` : `${Math.round(mib)} MiB`;
}

export function badge(status) {
  return h("span.badge", { "data-status": status }, status);
}

/** A labelled progress bar: value in 0..100 (null: unknown). */
export function bar(percent, label, kind = "") {
  const known = percent !== null && percent !== undefined;
  const clamped = known ? Math.max(0, Math.min(100, percent)) : 0;
  const fill = h(`span.bar-fill${kind ? "." + kind : ""}`);
  fill.style.width = `${clamped}%`;
  return h(
    "span.bar",
    {
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": known ? clamped.toFixed(0) : null,
      "aria-label": label,
    },
    fill,
    h("span.bar-text", label),
  );
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const item = h(`div.toast.${kind}`, message);
  box.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 9000 : 4000);
}

/** The text to show for a failure: the API's own words when it gave any. */
export function errorText(err) {
  if (err instanceof ApiError) {
    return err.code ? `${err.message} (${err.code})` : err.message;
  }
  return String(err && err.message ? err.message : err);
}

/**
 * Ask before acting. action() runs on confirm; if the API refuses, its error text shows in
 * the dialog and the dialog stays open. Resolves to action()'s result, or null if cancelled.
 */
export function confirmAction(title, text, action, { okLabel = "Confirm", danger = true } = {}) {
  const dialog = document.getElementById("confirm");
  const ok = document.getElementById("confirm-ok");
  const error = document.getElementById("confirm-error");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  error.hidden = true;
  error.textContent = "";
  ok.textContent = okLabel;
  ok.className = danger ? "danger" : "";
  ok.disabled = false;
  return new Promise((resolve) => {
    let result = null;
    ok.onclick = async () => {
      ok.disabled = true;
      try {
        result = await action();
        dialog.close();
      } catch (err) {
        error.textContent = errorText(err);
        error.hidden = false;
        ok.disabled = false;
      }
    };
    dialog.onclose = () => {
      ok.onclick = null;
      dialog.onclose = null;
      resolve(result);
    };
    dialog.showModal();
    ok.focus();
  });
}

/** "key=value, key2=value2" -> {key: value}; throws on a malformed pair. */
export function parseLabels(text) {
  const labels = {};
  for (const part of text.split(/[,\n]/)) {
    const item = part.trim();
    if (!item) continue;
    const eq = item.indexOf("=");
    if (eq <= 0) throw new Error(`"${item}" is not key=value`);
    labels[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  return labels;
}

/** Quote an argv for a POSIX shell, so the command line can be copied and run. */
export function shellQuote(argv) {
  return argv
    .map((arg) => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'"'"'`)}'`))
    .join(" ");
}

/**
 * Replace a live-refreshed container's content without stealing keyboard focus: the
 * focused link or control is found again in the new content (by id, href or label).
 */
export function replaceKeepingFocus(container, children) {
  const active = document.activeElement;
  let selector = null;
  if (active && active !== container && container.contains(active)) {
    for (const attr of ["id", "href", "aria-label"]) {
      const value = active.getAttribute(attr);
      if (value) {
        selector = `${active.tagName.toLowerCase()}[${attr}="${CSS.escape(value)}"]`;
        break;
      }
    }
  }
  container.replaceChildren(...children);
  if (selector) container.querySelector(selector)?.focus({ preventScroll: true });
}
