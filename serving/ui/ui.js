// The /ui page: everything comes from this server's JSON routes (GET overview, POST predict,
// POST invocations). No framework, no external asset; text is set with textContent only.
"use strict";

const $ = (selector) => document.querySelector(selector);

function element(tag, text, attributes) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? cell : element("td", cell));
  return tr;
}

function fill(tableSelector, rows) {
  const body = $(tableSelector + " tbody");
  body.replaceChildren(...rows.map(row));
}

function showError(selector, message) {
  const node = $(selector);
  node.textContent = message || "";
  node.hidden = !message;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch (error) {
    return { detail: `HTTP ${response.status}: ${response.statusText}` };
  }
}

// --- the form, one input per feature -----------------------------------------------------

function fieldId(name) {
  return "feature-" + Array.from(name, (c) => c.charCodeAt(0).toString(16)).join("-");
}

function input(hint, example) {
  const id = fieldId(hint.name);
  const value = example === undefined || example === null ? "" : String(example);
  if (hint.type === "boolean") {
    const select = element("select", null, { id, name: hint.name });
    for (const option of ["", "true", "false"]) {
      select.append(element("option", option || "(missing)", { value: option }));
    }
    select.value = value.toLowerCase();
    return select;
  }
  const field = element("input", null, { id, name: hint.name, type: "text", autocomplete: "off" });
  field.value = value;
  if (hint.type === "numeric") {
    field.setAttribute("inputmode", "decimal");
    if (hint.minimum !== null && hint.maximum !== null) {
      field.placeholder = `${format(hint.minimum)} to ${format(hint.maximum)}`;
    }
  } else if (hint.categories.length) {
    const list = element("datalist", null, { id: id + "-categories" });
    for (const category of hint.categories) list.append(element("option", null, { value: category }));
    field.setAttribute("list", list.id);
    field.placeholder = hint.categories.slice(0, 3).join(", ");
    field.after(list);
    return [field, list];
  }
  return field;
}

function format(number) {
  return Number.isInteger(number) ? String(number) : Number(number).toPrecision(4);
}

function hintText(hint) {
  if (hint.type === "numeric" && hint.minimum !== null) {
    return `number, training range ${format(hint.minimum)} to ${format(hint.maximum)}`;
  }
  if (hint.categories.length) return `${hint.type}: ${hint.categories.join(", ")}`;
  return hint.type;
}

function renderFields(features, example) {
  const fields = features.map((hint) => {
    const wrapper = element("div", null, { class: "field", "data-feature": hint.name });
    const label = element("label", hint.name, { for: fieldId(hint.name) });
    const control = [input(hint, example ? example[hint.name] : undefined)].flat();
    const help = element("small", hintText(hint), { class: "hint" });
    const message = element("small", null, { class: "field-error", role: "alert" });
    wrapper.append(label, ...control, help, message);
    return wrapper;
  });
  $("#fields").replaceChildren(...fields);
}

// A value as the API takes it: empty is missing (null), a number field's number a JSON
// number, true/false a boolean. Anything else goes as typed, so the API names what is wrong.
function value(hint, raw) {
  const text = raw.trim();
  if (text === "") return null;
  if (hint.type === "numeric") {
    const number = Number(text);
    return Number.isFinite(number) ? number : text;
  }
  if (hint.type === "boolean") return text === "true";
  return text;
}

function record(features) {
  const result = {};
  for (const hint of features) result[hint.name] = value(hint, $("#" + fieldId(hint.name)).value);
  return result;
}

// `records[0].mean radius` -> the field of feature `mean radius`
function markField(field, message) {
  for (const node of document.querySelectorAll(".field")) {
    node.classList.remove("invalid");
    node.querySelector(".field-error").textContent = "";
  }
  const feature = (field || "").replace(/^records\[\d+\]\./, "");
  const node = Array.from(document.querySelectorAll(".field")).find(
    (candidate) => candidate.dataset.feature === feature
  );
  if (node) {
    node.classList.add("invalid");
    node.querySelector(".field-error").textContent = message;
  }
}

async function scoreRecord(features) {
  showError("#form-error", "");
  markField(null, "");
  const response = await fetch("predict", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(record(features)),
  });
  const body = await readJson(response);
  if (!response.ok) {
    $("#answer").hidden = true;
    showError("#form-error", body.detail || `HTTP ${response.status}`);
    markField(body.field, body.detail);
    return;
  }
  const prediction = body.predictions[0];
  $("#answer-id").textContent = prediction.prediction_id;
  // A regressor answers a value and no class probabilities.
  const regression = prediction.value !== undefined;
  $("#answer-label").textContent = String(regression ? prediction.value : prediction.label);
  $("#answer-proba").hidden = regression;
  if (regression) {
    $("#answer").hidden = false;
    return;
  }
  fill(
    "#answer-proba",
    Object.entries(prediction.probabilities).map(([label, probability]) => [
      label,
      probability.toFixed(4),
      element("td", null).appendChild(
        element("meter", null, { min: "0", max: "1", value: String(probability) })
      ).parentNode,
    ])
  );
  $("#answer").hidden = false;
}

// --- CSV: the file to /invocations, its labels back as a download -------------------------

function csvCell(label) {
  const text = label === null ? "" : String(label);
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

async function scoreFile() {
  const file = $("#csv-file").files[0];
  showError("#csv-error", "");
  $("#csv-download").hidden = true;
  if (!file) return;
  $("#csv-status").textContent = `scoring ${file.name}…`;
  const response = await fetch("invocations", {
    method: "POST",
    headers: { "Content-Type": "text/csv" },
    body: await file.text(),
  });
  const body = await readJson(response);
  if (!response.ok) {
    $("#csv-status").textContent = "";
    showError("#csv-error", `${file.name}: ${body.message || body.detail || response.status}`);
    return;
  }
  const lines = ["prediction", ...body.predictions.map(csvCell)];
  const link = $("#csv-download");
  if (link.href) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([lines.join("\n") + "\n"], { type: "text/csv" }));
  link.hidden = false;
  $("#csv-status").textContent = `${body.predictions.length} rows of ${file.name} scored`;
}

// --- the model and continuous training ----------------------------------------------------

function renderModel(overview) {
  $("#model-name").textContent = overview.model_name;
  $("#model-version").textContent = overview.model_version;
  $("#model-summary").textContent =
    `${overview.model_uri}, run ${overview.run_id}, loaded ${overview.loaded_at}; ` +
    `predicts ${overview.target || "the target"}: ` +
    (overview.task === "regression" ? "a value (regression)" : overview.classes.join(", "));
  $("#row-limit").textContent = overview.max_request_rows;
  const promotion = $("#promotion");
  promotion.replaceChildren();
  for (const [key, text] of Object.entries(overview.promotion)) {
    promotion.append(element("dt", key), element("dd", text));
  }
  if (!Object.keys(overview.promotion).length) promotion.append(element("dd", "no gate decision recorded"));
  fill("#holdout", Object.entries(overview.holdout).map(([metric, score]) => [metric, score.toFixed(4)]));
  if (overview.errors.length) showError("#load-error", overview.errors.join("; "));
}

function renderCt(ct) {
  fill(
    "#quality",
    ct.quality.map((window) => [
      window.name,
      `${window.labelled} (${window.min_labels} needed)`,
      Object.entries(window.scores).map(([name, score]) => `${name} ${score.toFixed(4)}`).join(", ") ||
        "not enough labelled predictions",
    ])
  );
  fill(
    "#ct-runs",
    ct.runs.map((run) => [
      run.started_at,
      run.outcome,
      run.triggers || "-",
      run.trained_version || "-",
      run.promoted === null ? "-" : String(run.promoted),
      run.detail,
    ])
  );
  if (!ct.runs.length) fill("#ct-runs", [["no CT run recorded yet", "", "", "", "", ""]]);
  showError("#ct-error", [ct.runs_error, ct.quality_error].filter(Boolean).join("; "));
}

async function main() {
  const response = await fetch("overview");
  const overview = await readJson(response);
  if (!response.ok) {
    showError("#load-error", overview.detail || `HTTP ${response.status}`);
    return;
  }
  renderModel(overview);
  renderCt(overview.ct);
  renderFields(overview.features, overview.example);
  $("#record-form").addEventListener("submit", (event) => {
    event.preventDefault();
    scoreRecord(overview.features).catch((error) => showError("#form-error", String(error)));
  });
  $("#csv-form").addEventListener("submit", (event) => {
    event.preventDefault();
    scoreFile().catch((error) => showError("#csv-error", String(error)));
  });
  document.body.dataset.ready = "true";
}

main().catch((error) => showError("#load-error", String(error)));
