// The submit form: the job's fields with their defaults, the GPU count and priority.
// Only the training arguments that differ from the defaults are sent, so the spec
// as submitted says what the person chose. The API validates; its errors appear next to
// the field they name (problem details' `errors[].key`, or the field a domain error names).
//
// The dataset is a path (or a ModelScope id) on the runner, or a file uploaded to the
// /v1/files store: the spec then names it as `training_file` (and `validation_file`), and
// each runner fetches it from the object store before starting swift. A file can be
// uploaded from the form too.

import { ApiError, getFiles, post, postFiles } from "./api.js";
import { errorText, fmtBytesMiB, h, parseLabels, toast } from "./ui.js";

// [key, label, type, default, extra attributes, hint]
const JOB_FIELDS = [
  ["model_path", "Model", "text", "", { required: true, placeholder: "Qwen/Qwen2.5-7B-Instruct" }, "A ModelScope id or a path on the runner."],
  ["output_dir", "Output folder", "text", "", { placeholder: "output/<job id>" }, "Relative to the runner's OUTPUT_ROOT."],
  ["job_id", "Job id", "text", "", { placeholder: "generated", pattern: "[A-Za-z0-9_-]{1,64}" }, "Optional; letters, digits, '_' and '-'."],
  ["gpu_count", "GPUs", "number", 1, { min: 1, max: 64, step: 1, required: true }, "Per host."],
  ["nodes", "Hosts", "number", 1, { min: 1, max: 64, step: 1 }, "Hosts the job spans; the GPUs above on each."],
  ["host_labels", "Host labels", "text", "", { placeholder: "rack=r12" }, "Only runners with all these labels."],
  ["priority", "Priority", "number", 5, { min: 0, max: 10, step: 1, required: true }, "0-10, larger starts first."],
  ["labels", "Labels", "text", "", { placeholder: "team=nlp, project=vl" }, "key=value pairs, comma separated."],
  ["max_retries", "Retries when lost", "number", 2, { min: 0, max: 20, step: 1 }, ""],
  ["min_gpu_memory_gb", "Min GPU memory (GB)", "number", "", { min: 0, step: "any" }, "Per GPU; optional."],
  ["gpu_name", "GPU name contains", "text", "", { placeholder: "A100" }, "Optional."],
  ["max_runtime", "Time limit", "text", "", { placeholder: "6h", pattern: "[0-9]+[smhd]?" }, "Over all attempts: seconds, or 90m, 6h, 2d."],
];

// The default swift training arguments (core/spec.py EffectiveTrainArgs).
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

/** A select of uploaded files, with the same label, hint and error slots as field(). */
function fileSelect(key, label, hint, emptyText) {
  const id = fieldId(key);
  const select = h("select", { id, name: key, "aria-describedby": `${id}-hint ${id}-error` },
    h("option", { value: "" }, emptyText));
  return h("div.field",
    h("label", { for: id }, label),
    select,
    h("small", { id: `${id}-hint` }, hint),
    h("span.field-error", { id: `${id}-error`, role: "alert" }),
  );
}

function fileLabel(file) {
  const size = file.bytes >= 1048576 ? fmtBytesMiB(file.bytes / 1048576) : `${Math.max(1, Math.round(file.bytes / 1024))} KiB`;
  return `${file.filename} (${file.id}, ${size})`;
}

function datasetPicker() {
  const radio = (value, text, checked) => h("label.inline",
    h("input", { type: "radio", name: "dataset_source", value, checked, id: `f-source-${value}` }), text);
  const pathPart = h("div.grid", { id: "dataset-path" },
    field("data_path", "Path or dataset id", "text", "",
      { required: true, placeholder: "AI-ModelScope/coco#20000", list: "dataset-suggestions" },
      "A ModelScope id or a path on the runner; '#N' samples N rows."));
  const upload = h("input", { type: "file", id: "f-upload", name: "upload", accept: ".jsonl,.json,application/jsonl,application/json", "aria-describedby": "f-upload-hint f-upload-error" });
  const uploadButton = h("button.secondary", { type: "button", id: "upload-button" }, "Upload");
  const filePart = h("div", { id: "dataset-file", hidden: true },
    h("div.grid",
      fileSelect("training_file", "Training file", "An uploaded JSONL file (messages, or query and response).", "choose a file"),
      fileSelect("validation_file", "Validation file", "Optional.", "none")),
    h("div.field",
      h("label", { for: "f-upload" }, "Upload a JSONL file"),
      h("div.upload", upload, uploadButton, h("span.muted", { id: "f-upload-status", role: "status" })),
      h("small", { id: "f-upload-hint" }, "Checked line by line; it becomes the training file."),
      h("span.field-error", { id: "f-upload-error", role: "alert" })),
  );
  const part = h("fieldset", { id: "dataset" },
    h("legend", "Dataset"),
    h("fieldset.dataset-source", { "aria-label": "Where the dataset comes from" },
      radio("path", "A path or dataset id", true),
      radio("file", "An uploaded file", false)),
    pathPart,
    filePart,
  );
  return { part, pathPart, filePart, upload, uploadButton };
}

function valueOf(input) {
  if (input.type === "checkbox") return input.checked;
  if (input.type === "number") return input.value === "" ? null : Number(input.value);
  const text = input.value.trim();
  return text === "" ? null : text;
}

export function submitView(main) {
  const formError = h("p.problem", { role: "alert", hidden: true });
  const picker = datasetPicker();
  const submit = h("button", { type: "submit" }, "Submit job");
  const form = h("form.submit-form", { novalidate: true, "aria-labelledby": "submit-h" },
    formError,
    h("fieldset", h("legend", "Job"), h("div.grid", JOB_FIELDS.map((f) => field(...f)))),
    picker.part,
    h("details.fieldset",
      h("summary", "Training arguments (defaults shown; change what you need)"),
      h("div.grid", TRAIN_FIELDS.map(([key, label, type, value, extra]) => field(`train_args.${key}`, label, type, value, extra)))),
    h("div.field.check", h("input", { type: "checkbox", id: "f-auto_start", name: "auto_start", checked: true }),
      h("label", { for: "f-auto_start" }, "Queue it now (untick to hold it until started)")),
    h("div.actions", submit),
    h("datalist", { id: "dataset-suggestions" },
      ["AI-ModelScope/coco#20000", "AI-ModelScope/alpaca-gpt4-data-en#500"].map((v) => h("option", { value: v }))),
  );
  main.append(h("div.page-head", h("h1", { id: "submit-h" }, "Submit a training job")), form);

  const fromFile = () => form.querySelector("input[name=dataset_source]:checked").value === "file";
  let filesLoaded = null;
  let filesAsked = 0;

  async function loadFiles(selected) {
    const asked = ++filesAsked;
    const training = document.getElementById(fieldId("training_file"));
    const validation = document.getElementById(fieldId("validation_file"));
    const errorSlot = document.getElementById(`${fieldId("training_file")}-error`);
    try {
      const list = await getFiles("/files?purpose=fine-tune&limit=200");
      if (asked !== filesAsked) return; // a newer list was asked for (after an upload)
      const keep = [selected ?? training.value, validation.value];
      const usable = list.data.filter((f) => f.status !== "error");
      for (const [select, empty, value] of [[training, "choose a file", keep[0]], [validation, "none", keep[1]]]) {
        select.replaceChildren(h("option", { value: "" }, usable.length ? empty : "no uploaded files yet"),
          ...usable.map((f) => h("option", { value: f.id, selected: f.id === value }, fileLabel(f))));
      }
      errorSlot.textContent = "";
    } catch (err) {
      errorSlot.textContent = `The uploaded files cannot be listed: ${errorText(err)}`;
    }
  }

  function showSource() {
    const file = fromFile();
    picker.pathPart.hidden = file;
    picker.filePart.hidden = !file;
    document.getElementById(fieldId("data_path")).required = !file;
    if (file && !filesLoaded) filesLoaded = loadFiles();
  }
  for (const input of form.querySelectorAll("input[name=dataset_source]")) input.addEventListener("change", showSource);

  picker.uploadButton.addEventListener("click", async () => {
    const status = document.getElementById("f-upload-status");
    const error = document.getElementById("f-upload-error");
    error.textContent = "";
    picker.upload.removeAttribute("aria-invalid");
    const file = picker.upload.files[0];
    if (!file) {
      error.textContent = "Choose a file to upload first.";
      picker.upload.setAttribute("aria-invalid", "true");
      picker.upload.focus();
      return;
    }
    const body = new FormData();
    body.append("purpose", "fine-tune");
    body.append("file", file, file.name);
    picker.uploadButton.disabled = true;
    status.textContent = `uploading ${file.name}…`;
    try {
      const stored = await postFiles("/files", body);
      if (stored.status === "error") {
        status.textContent = "";
        error.textContent = `${stored.filename} was stored but is not usable: ${stored.status_details}`;
        picker.upload.setAttribute("aria-invalid", "true");
        return;
      }
      picker.upload.value = "";
      await loadFiles(stored.id);
      status.textContent = `uploaded ${stored.filename} as ${stored.id}`;
    } catch (err) {
      status.textContent = "";
      error.textContent = errorText(err);
      picker.upload.setAttribute("aria-invalid", "true");
    } finally {
      picker.uploadButton.disabled = false;
    }
  });

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
      if (key === "labels" || key === "host_labels") {
        body[key] = parseLabels(value || "");
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
    if (fromFile()) {
      for (const key of ["training_file", "validation_file"]) {
        const value = document.getElementById(fieldId(key)).value;
        if (value) body[key] = value;
      }
    } else {
      const path = valueOf(document.getElementById(fieldId("data_path")));
      if (path !== null) body.data_path = path;
    }
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
    for (const key of ["model_path", fromFile() ? "training_file" : "data_path"]) {
      if (!body[key]) missing = showError(key, key === "training_file" ? "Choose a file, or upload one." : "Required.") || true;
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
          const named = [...JOB_FIELDS.map(([k]) => k), "data_path", "training_file", "validation_file", ...TRAIN_FIELDS.map(([k]) => `train_args.${k}`)]
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
