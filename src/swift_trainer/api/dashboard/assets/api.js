// The API client: JSON calls, problem details, the API-key prompt and SSE over fetch.
//
// Streams use fetch rather than EventSource so that an API key can travel in a header
// (EventSource cannot send headers, and a key must never sit in a URL).

export const API_BASE = document.querySelector('meta[name="api-base"]').content;
/** The OpenAI-compatible front (`api/openai`, mounted at /v1): uploaded datasets live there. */
export const FILES_BASE = "/v1";
const KEY_STORE = "swift-trainer.api-key";

/** An API refusal: the problem details' code, text and per-field errors. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || "";
    this.problem = problem;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_STORE);
  document.dispatchEvent(new CustomEvent("api-key-changed"));
}

function headers(extra) {
  const h = { Accept: "application/json", ...extra };
  const key = apiKey();
  if (key) {
    h.Authorization = `Bearer ${key}`;
  }
  return h;
}

let keyPrompt = null;

/** Ask for an API key once, however many requests were refused at the same time. */
function askForKey(message) {
  if (keyPrompt) {
    return keyPrompt;
  }
  const dialog = document.getElementById("auth");
  const form = document.getElementById("auth-form");
  const input = document.getElementById("auth-key");
  const error = document.getElementById("auth-error");
  error.hidden = !message;
  error.textContent = message || "";
  keyPrompt = new Promise((resolve) => {
    form.onsubmit = (event) => {
      event.preventDefault();
      const key = input.value.trim();
      if (!key) {
        return;
      }
      sessionStorage.setItem(KEY_STORE, key);
      input.value = "";
      dialog.close();
      keyPrompt = null;
      document.dispatchEvent(new CustomEvent("api-key-changed"));
      resolve();
    };
  });
  dialog.showModal();
  input.focus();
  return keyPrompt;
}

async function problemOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "object" && body.error) {
      // The /v1 front answers in OpenAI's shape: {"error": {message, code, param}}.
      const { message, code, param } = body.error;
      return { detail: message, code: code || "", errors: param ? [{ key: param, message }] : [] };
    }
    if (body && typeof body === "object") {
      return body;
    }
  } catch {
    // not JSON: fall through
  }
  return { detail: text.trim() || `${response.status} ${response.statusText}` };
}

/** Call the API; resolves to the decoded body (null for 204), rejects with ApiError. */
export function call(method, path, body) {
  return callAt(API_BASE + path, method, body);
}

/**
 * Call any of the service's URLs. A FormData body goes as multipart (the browser sets the
 * boundary), anything else as JSON.
 */
export async function callAt(url, method, body) {
  for (;;) {
    const form = body instanceof FormData;
    const type = body === undefined || form ? {} : { "Content-Type": "application/json" };
    const init = { method, headers: headers(type) };
    if (body !== undefined) {
      init.body = form ? body : JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, { detail: `the service cannot be reached (${err.message})`, code: "unreachable" });
    }
    if (response.status === 401) {
      const problem = await problemOf(response);
      await askForKey(apiKey() ? `That key was refused: ${problem.detail}` : "");
      continue;
    }
    if (!response.ok) {
      throw new ApiError(response.status, await problemOf(response));
    }
    if (response.status === 204) {
      return null;
    }
    return response.json();
  }
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);
export const getFiles = (path) => callAt(FILES_BASE + path, "GET");
export const postFiles = (path, body) => callAt(FILES_BASE + path, "POST", body);

/**
 * Follow an SSE endpoint. onMessage(data, id, event) gets each message's decoded JSON
 * (event is "message" for data, else the control event's name, e.g. "ready").
 * Reconnects after a dropped connection with Last-Event-ID (onDrop runs first); ends on
 * the stream's `end` event or when the returned stop() is called. onEnd(reason) runs once
 * at the end.
 */
export function stream(path, { onMessage, onEnd, onError, onDrop }) {
  const controller = new AbortController();
  let lastId = null;
  let stopped = false;
  let endReason = "";

  async function once() {
    const h = headers({ Accept: "text/event-stream" });
    if (lastId !== null) {
      h["Last-Event-ID"] = String(lastId);
    }
    const response = await fetch(API_BASE + path, { headers: h, signal: controller.signal });
    if (response.status === 401) {
      await askForKey("");
      return "retry";
    }
    if (!response.ok) {
      throw new ApiError(response.status, await problemOf(response));
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        return "dropped";
      }
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        let id = null;
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) {
            continue;
          }
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
          else if (field === "id") id = val;
        }
        if (!data.length) {
          continue;
        }
        if (id !== null) {
          lastId = id;
        }
        const payload = JSON.parse(data.join("\n"));
        if (event === "end") {
          endReason = payload.reason || "";
          return "end";
        }
        if (event === "error") {
          throw new ApiError(0, payload);
        }
        onMessage(payload, id, event);
      }
    }
  }

  (async () => {
    let delay = 500;
    while (!stopped) {
      try {
        const outcome = await once();
        if (outcome === "end") {
          break;
        }
        if (outcome === "dropped" && onDrop) onDrop();
        delay = 500;
      } catch (err) {
        if (stopped || err.name === "AbortError") {
          break;
        }
        if (err instanceof ApiError && err.status >= 400 && err.status < 500) {
          if (onError) onError(err);
          break;
        }
        if (onError) onError(err);
        if (onDrop) onDrop();
        delay = Math.min(delay * 2, 10000);
      }
      if (!stopped) {
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
    if (!stopped && onEnd) {
      onEnd(endReason);
    }
  })();

  return () => {
    stopped = true;
    controller.abort();
  };
}
