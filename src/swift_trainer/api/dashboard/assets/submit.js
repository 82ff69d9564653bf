// The submit form: the seed's fields with their defaults, the GPU count and priority.
// Only the training arguments that differ from the seed's defaults are sent, so the spec
// as submitted says what the person chose. The API validates; its errors appear next to
// the field they name (problem details' `errors[].key`, or the field a domain error names).

import { ApiError, post } from "./api.js";
import { errorText, h, parseLabels, toast } from "./ui.js";

// [key, label, type, default, extra attributes, hint]
const JOB_FIELDS = [
  ["model_path", "Model", "text", "", { required: true, placeholder: "Qwen/Qwen2.5-7B-Instruct" }, "A ModelScope id or a path on the runner."],
  ["data_path", "Dataset", "text", "", { required: true, placeholder: "AI-ModelScope/coco#20000", list: "dataset-suggestions" }, "A dataset id or a path on the runner; '#N' samples N rows."],
  ["output_dir", "Output folder", "text", "", { placeholder: "output/<job id>" }, "Relative to the runner's OUTPUT_ROOT."],
  ["job_id", "Job id", "text", "", { placeholder: "generated", pattern: "[A-Za-z0-9_-]{1,64}" }, "Optional; letters, digits, '_' and '-'."],
  ["gpu_count", "GPUs", "number", 1, { min: 1, max: 64, step: 1, required: true }, "All on one host."],
  ["priority", "Priority", "number", 5, { min: 0, max: 10, step: 1, required: true }, "0-10, larger starts first."],
  ["labels", "Labels", "text", "", { placeholder: "team=nlp, project=vl" }, "key=value pairs, comma separated."],
  ["max_retries", "Retries when lost", "number", 2, { min: 0, max: 20, step: 1 }, ""],
  ["min_gpu_memory_gb", "Min GPU memory (GB)", "number", "", { min: 0, step: "any" }, "Per GPU; optional."],
  ["gpu_name", "GPU name contains", "text", "", { placeholder: "A100" }, "Optional."],
];

// The seed's swift defaults (core/spec.py EffectiveTrainArgs).
const TRAIN_FIELDS = [
  ["num_epochs", "Epochs", "number", 1, { min: 0, step: "any" }],
  ["max_steps", "Max steps", "number", "", { min: 1, step: 1, placeholder: "from epochs" }],
  ["batch_size", "Batch size", "number", 1, { min: 1, step: 1 }],
  ["gradient_accumulation_steps", "Gradient accumulation", "number", 4, { min: 1, step: 1 }],
  ["learning_rate", "Learning rate", "number", 1e-4, { min: 0, step: "any" }],
  ["vit_lr", "ViT learning rate", "number", 1e-5, { min: 0, step: "any" }],
  ["aligner_lr", "Aligner learning rate", "number", 1e-5, { min: 0, step: "any" }],
  ["warmup_ratio", "Warm-up ratio", "number", 0.05, { min: 0, max: 1, step: "any" }],
  ["train_type", "Train type", "select", "lora", { options: ["lora", "full"] }],
  ["lora_rank", "LoRA rank", "number", 16, { min: 1, step: 1 }],
  ["lora_alpha", "LoRA alpha", "number", 32, { min: 1, step: 1 }],
  ["torch_dtype", "dtype", "select", "bfloat16", { options: ["bfloat16", "float16", "float32"] }],
  ["max_length", "Max length", "number", 8192, { min: 1, step: 1 }],
  ["split_dataset_ratio", "Validation split", "number", "", { min: 0, max: 1, step: "any", placeholder: "none" }],
  ["eval_steps", "Eval every (steps)", "number", 100, { min: 1, step: 1 }],
  ["save_steps", "Save every (steps)", "number", 100, { min: 1, step: 1 }],
  ["save_total_limit", "Checkpoints kept", "number", 2, { min: 1, step: 1 }],
  ["logging_steps", "Log every (steps)", "number", 5, { min: 1, step: 1 }],
  ["dataloader_num_workers", "Dataloader workers", "number", 4, { min: 0, step: 1 }],
  ["dataset_num_proc", "Dataset processes", "number", 4, { min: 1, step: 1 }],
  ["save_only_model", "Save only the model", "checkbox", true, {}],
];

const fieldId = (key) => `f-${key.replace(/\./g, "-")}`;

function field(key, label, type, value, extra = {}, hint = "") {
  const id = fieldId(key);
  const errorId = `${id}-error`;
  const hintId = hint ? `${id}-hint` : null;
  const describedBy = [hintId, errorId].filter(Boolean).join(" ");
  let input;
  const { options, ...attrs } = extra;
  if (type === "select") {
    input = h("select", { id, name: key, "aria-describedby": describedBy },
      options.map((o) => h("option", { value: o, selected: o === value }, o)));
  } else if (type === "checkbox") {
    input = h("input", { id, name: key, type: "checkbox", checked: value === true, "aria-describedby": describedBy });
  } else {
    input = h("input", { id, name: key, type, value: value === "" ? null : value, "aria-describedby": describedBy, ...attrs });
  }
  input.dataset.default = String(value);
  return h(`div.field${type === "checkbox" ? ".check" : ""}`,
    type === "checkbox" ? [input, h("label", { for: id }, label)] : [h("label", { for: id }, label, attrs.required ? h("span.req", { "aria-hidden": "true" }, " *") : null), input],
    hint ? h("small", { id: hintId }, hint) : null,
    h("span.field-error", { id: errorId, role: "alert" }),
  );
}

function valueOf(input) {
  if (input.type === "checkbox") return input.checked;
  if (input.type === "number") return input.value === "" ? null : Number(input.value);
  const text = input.value.trim();
  return text === "" ? null : text;
}

export function submitView(main) {
  const formError = h("p.problem", { role: "alert", hidden: true });
  const submit = h("button", { type: "submit" }, "Submit job");
  const form = h("form.submit-form", { novalidate: true, "aria-labelledby": "submit-h" },
    formError,
    h("fieldset", h("legend", "Job"), h("div.grid", JOB_FIELDS.map((f) => field(...f)))),
    h("details.fieldset",
      h("summary", "Training arguments (the seed's defaults; change what you need)"),
      h("div.grid", TRAIN_FIELDS.map(([key, label, type, value, extra]) => field(`train_args.${key}`, label, type, value, extra)))),
    h("div.field.check", h("input", { type: "checkbox", id: "f-auto_start", name: "auto_start", checked: true }),
      h("label", { for: "f-auto_start" }, "Queue it now (untick to hold it until started)")),
    h("div.actions", submit),
    h("datalist", { id: "dataset-suggestions" },
      ["AI-ModelScope/coco#20000", "AI-ModelScope/alpaca-gpt4-data-en#500"].map((v) => h("option", { value: v }))),
  );
  main.append(h("div.page-head", h("h1", { id: "submit-h" }, "Submit a training job")), form);

  function clearErrors() {
    formError.hidden = true;
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
  }

  function showError(key, message) {
    const input = document.getElementById(fieldId(key));
    if (!input) return false;
    document.getElementById(`${fieldId(key)}-error`).textContent = message;
    input.setAttribute("aria-invalid", "true");
    if (key.startsWith("train_args.")) form.querySelector("details").open = true;
    return true;
  }

  function build() {
    const body = {};
    for (const [key] of JOB_FIELDS) {
      const value = valueOf(document.getElementById(fieldId(key)));
      if (key === "labels") {
        body.labels = parseLabels(value || "");
      } else if (value !== null) {
        body[key] = value;
      }
    }
    const trainArgs = {};
    for (const [key, , , def] of TRAIN_FIELDS) {
      const value = valueOf(document.getElementById(fieldId(`train_args.${key}`)));
      if (value !== null && value !== def) trainArgs[key] = value;
    }
    if (Object.keys(trainArgs).length) body.train_args = trainArgs;
    body.auto_start = document.getElementById("f-auto_start").checked;
    return body;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    let body;
    try {
      body = build();
    } catch (err) {
      showError("labels", err.message);
      return;
    }
    let missing = false;
    for (const key of ["model_path", "data_path"]) {
      if (!body[key]) missing = showError(key, "Required.") || true;
    }
    if (missing) {
      form.querySelector("[aria-invalid]").focus();
      return;
    }
    submit.disabled = true;
    try {
      const answer = await post("/jobs", body);
      toast(answer.message);
      location.hash = `#/job/${encodeURIComponent(answer.job_id)}`;
    } catch (err) {
      let placed = false;
      if (err instanceof ApiError) {
        for (const item of err.problem.errors || []) {
          placed = showError(item.key, item.message) || placed;
        }
        if (!placed && err.code === "unsatisfiable") placed = showError("gpu_count", err.message);
        if (!placed) {
          const named = [...JOB_FIELDS.map(([k]) => k), ...TRAIN_FIELDS.map(([k]) => `train_args.${k}`)]
            .find((k) => err.message.startsWith(k.replace("train_args.", "")) || err.message.includes(`${k} `));
          if (named) placed = showError(named, err.message);
        }
      }
      if (!placed) {
        formError.textContent = errorText(err);
        formError.hidden = false;
      }
      const first = form.querySelector("[aria-invalid]") || formError;
      if (first.focus) first.focus();
    } finally {
      submit.disabled = false;
    }
  });
  return null;
}
