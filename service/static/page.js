// The analyst's page: files in, one card per file, a table of all files, CSV out.
// API names live in answer.js, wording in words.js, the drawing of evidence in evidence.js.

import { FIELDS, ROUTES, errorBody, fromAnswer, heatFromExplain, pickField } from "./answer.js";
import { drawFaces, drawHeatmap, drawTimeline, renderProvenance } from "./evidence.js";
import { errorWords, familyWords, mb, reasonWords, verdictWords } from "./words.js";

const KEY_STORE = "fakelens.apiKey"; // sessionStorage only: gone when the tab closes
const PARALLEL = 3; // uploads in flight at once; the server batches them onto the model
const VIDEO_EXT = /\.(mp4|m4v|mov|webm|mkv|avi|mpe?g)$/i;

const $ = (sel, root = document) => root.querySelector(sel);
const state = { config: null, items: [], queue: [], running: 0 };
const fmt = (v, digits = 3) => (v == null ? "" : v.toFixed(digits));

// ---- setup -------------------------------------------------------------------------------

async function loadConfig() {
  try {
    const r = await fetch(ROUTES.config, { cache: "no-store" });
    state.config = r.ok ? await r.json() : null;
  } catch {
    state.config = null;
  }
  const c = state.config || {};
  if (c.api_keys) showKeyForm(false);
  if (c.max_bytes) $("#limit-help").textContent = `Up to ${mb(c.max_bytes)} per file.`;
  if (pickField(c, ROUTES.video, FIELDS.video)) {
    $("#file-input").accept = "image/*,video/*";
    $("#video-help").hidden = false;
  }
  $("#face-option").hidden = !pickField(c, ROUTES.detect, FIELDS.faceMode);
}

function showKeyForm(focus) {
  const form = $("#key-form");
  form.hidden = false;
  if (focus) $("#api-key").focus();
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function setupKey() {
  const input = $("#api-key");
  input.value = apiKey();
  const save = () => {
    if (input.value.trim()) sessionStorage.setItem(KEY_STORE, input.value.trim());
    else sessionStorage.removeItem(KEY_STORE);
  };
  input.addEventListener("change", save);
  $("#key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    save();
    // the files refused for want of a key go again with the new one
    state.items.filter((it) => it.status === 401).forEach(enqueue);
  });
}

function setupInput() {
  const input = $("#file-input");
  const drop = $("#drop");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = ""; // the same file can be picked again
  });
  // the whole window accepts drops, so a near miss does not navigate away from the page
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  window.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) drop.classList.remove("over");
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    addFiles(e.dataTransfer.files);
  });
  window.addEventListener("paste", (e) => {
    if (e.clipboardData && e.clipboardData.files.length) addFiles(e.clipboardData.files);
  });
  $("#csv").addEventListener("click", downloadCsv);
  $("#clear").addEventListener("click", clearAll);
}

// ---- files and requests ------------------------------------------------------------------

function isVideo(file) {
  return file.type.startsWith("video/") || VIDEO_EXT.test(file.name);
}

function addFiles(list) {
  for (const file of Array.from(list || [])) {
    const item = { id: state.items.length, file, video: isVideo(file), status: "pending", view: null };
    item.card = makeCard(item);
    item.row = makeRow(item);
    state.items.push(item);
    enqueue(item);
  }
  updateTable();
}

function enqueue(item) {
  item.status = "pending";
  setPending(item);
  state.queue.push(item);
  pump();
}

function pump() {
  while (state.running < PARALLEL && state.queue.length) {
    const item = state.queue.shift();
    state.running += 1;
    send(item).finally(() => {
      state.running -= 1;
      announceProgress();
      pump();
    });
  }
}

async function post(route, form) {
  const key = apiKey();
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  let r;
  try {
    r = await fetch(route, { method: "POST", body: form, headers });
  } catch {
    return { status: 0, body: null, retryAfter: null };
  }
  let body = null;
  try {
    body = await r.json();
  } catch {
    body = null;
  }
  return { status: r.status, ok: r.ok, body, retryAfter: r.headers.get("Retry-After") };
}

async function send(item) {
  const c = state.config;
  const route = item.video ? ROUTES.video : ROUTES.detect;
  const field = item.video ? pickField(c, route, FIELDS.video) : pickField(c, route, FIELDS.image) || "image";
  if (!field) {
    return showError(item, { status: 404, body: null, retryAfter: null });
  }
  const form = new FormData();
  form.append(field, item.file, item.file.name);
  const faceField = pickField(c, route, FIELDS.faceMode);
  if (faceField && $("#face-mode").checked) form.append(faceField, "true");
  const res = await post(route, form);
  if (!res.ok || !res.body || res.body.error) return showError(item, res);
  item.status = "done";
  item.view = fromAnswer(res.body);
  showResult(item);
}

// ---- cards ---------------------------------------------------------------------------------

function makeCard(item) {
  const card = $("#card-template").content.firstElementChild.cloneNode(true);
  const id = `card-${item.id}`;
  card.id = id;
  card.setAttribute("aria-labelledby", `${id}-name`);
  const name = $(".name", card);
  name.id = `${id}-name`;
  name.textContent = item.file.name;
  const heat = $(".heat-check", card);
  heat.id = `${id}-heat`;
  $(".heat-label", card).htmlFor = heat.id;
  heat.addEventListener("change", () => toggleHeat(item));
  $(".retry", card).addEventListener("click", () => enqueue(item));
  const frame = $(".frame", card);
  const media = document.createElement(item.video ? "video" : "img");
  media.className = "preview";
  media.src = URL.createObjectURL(item.file);
  if (item.video) {
    media.controls = true;
    media.muted = true;
    media.playsInline = true;
    media.setAttribute("aria-label", `Preview of ${item.file.name}`);
  } else {
    media.alt = `Preview of ${item.file.name}`;
  }
  media.addEventListener("error", () => {
    // the browser cannot show it (a TIFF, a broken file): say so instead of a broken icon
    const note = document.createElement("figure");
    note.className = "no-preview";
    note.textContent = "No preview in this browser";
    media.replaceWith(note);
  });
  frame.prepend(media);
  $("#cards").append(card);
  return card;
}

function setPending(item) {
  const card = item.card;
  card.className = "card pending";
  card.setAttribute("aria-busy", "true");
  $(".badge", card).textContent = "Checking…";
  $(".verdict-text", card).textContent = "Sending to the detector…";
  for (const sel of [".error-text", ".error-detail", ".retry"]) $(sel, card).hidden = true;
  updateRow(item);
}

function showError(item, res) {
  const { kind, message } = errorBody(res.body);
  item.status = res.status === 401 ? 401 : "error";
  item.view = null;
  item.error = {
    status: res.status,
    words: errorWords(res.status, kind, {
      maxBytes: state.config && state.config.max_bytes,
      retryAfter: res.retryAfter,
      hadKey: Boolean(apiKey()),
      video: item.video,
    }),
    detail: message,
  };
  const card = item.card;
  card.className = "card error";
  card.removeAttribute("aria-busy");
  $(".badge", card).textContent = res.status ? `Error ${res.status}` : "Error";
  $(".verdict-text", card).textContent = "";
  const text = $(".error-text", card);
  text.textContent = item.error.words;
  text.hidden = false;
  const detail = $(".error-detail", card);
  detail.textContent = message ? `Server said: ${message}` : "";
  detail.hidden = !message;
  $(".retry", card).hidden = res.status === 404;
  if (res.status === 401) showKeyForm(true);
  announce(`${item.file.name}: ${item.error.words}`);
  updateRow(item);
}

function showResult(item) {
  const v = item.view;
  const card = item.card;
  const words = verdictWords(v.label);
  card.className = `card verdict-${v.label}`;
  card.removeAttribute("aria-busy");
  $(".badge", card).textContent = words.title;
  const why = reasonWords(v.reason);
  $(".verdict-text", card).textContent = why ? `${words.text} ${why}` : words.text;
  drawScore(card, v);
  drawNumbers(card, v);
  drawFaces(card, v);
  drawTimeline(card, v);
  renderProvenance($(".provenance", card), v.provenance);
  const canExplain = !item.video && pickField(state.config, ROUTES.explain, FIELDS.explain);
  $(".heat-toggle", card).hidden = !(v.heatmap || canExplain);
  announce(`${item.file.name}: ${words.title}, score ${fmt(v.score)}`);
  updateRow(item);
}

function drawScore(card, v) {
  const bar = $(".scorebar", card);
  if (v.score == null) return;
  bar.hidden = false;
  const pct = (p) => `${(Math.min(1, Math.max(0, p)) * 100).toFixed(2)}%`;
  const [low, high] = v.band;
  const band = $(".band", bar);
  band.hidden = !(high > low);
  band.style.left = pct(low);
  band.style.width = pct(high - low);
  $(".threshold", bar).style.left = pct(v.threshold);
  $(".marker", bar).style.left = pct(v.score);
  $(".track", bar).setAttribute("aria-label",
    `Score ${fmt(v.score)} on a scale from 0 (real) to 1 (synthetic); threshold ${fmt(v.threshold)}` +
    (high > low ? `; uncertain between ${fmt(low)} and ${fmt(high)}` : ""));
}

function drawNumbers(card, v) {
  const dl = $(".numbers", card);
  dl.replaceChildren();
  const add = (term, value, cls, title) => {
    if (value == null || value === "") return;
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    if (cls) dd.className = cls;
    if (title) dd.title = title;
    dl.append(dt, dd);
  };
  const [low, high] = v.band;
  add("Score", fmt(v.score), "score");
  const family = familyWords(v.family, v.familyScore, fmt); // none for real
  if (family) add("Generator family", family.text, "family", family.title);
  add("Threshold", fmt(v.threshold), "threshold-value");
  if (high > low) add("Uncertain band", `${fmt(low)} – ${fmt(high)}`, "band-value");
  add("Model", [v.model.name, v.model.version].filter(Boolean).join(" "), "model");
  add("Runs on", [v.model.backend, v.model.device].filter(Boolean).join(" on "));
  const m = v.media;
  const size = m.width && m.height ? `${m.width} × ${m.height}` : "";
  add("File", [m.format, size, m.duration ? `${m.duration.toFixed(1)} s` : ""].filter(Boolean).join(", "));
  add("Note", m.note);
  const agg = v.aggregate;
  if (agg) {
    const share = agg.shareFlagged == null ? "" : `, ${Math.round(agg.shareFlagged * 100)}% of frames flagged`;
    add("Frames", `${v.frames.length} scored: mean ${fmt(agg.mean)}, max ${fmt(agg.max)}${share}` +
      (agg.rule ? `; verdict on the ${agg.rule}` : ""));
  }
  add("Time", v.elapsedMs == null ? null : `${Math.round(v.elapsedMs)} ms`);
}

async function toggleHeat(item) {
  const card = item.card;
  const on = $(".heat-check", card).checked;
  const note = $(".heat-note", card);
  if (!on) return drawHeatmap(card, null);
  if (!item.view.heatmap) {
    note.hidden = false;
    note.textContent = "Computing the heatmap…";
    const form = new FormData();
    form.append(pickField(state.config, ROUTES.explain, FIELDS.explain), item.file, item.file.name);
    const overlayField = pickField(state.config, ROUTES.explain, FIELDS.explainOverlay);
    if (overlayField) form.append(overlayField, "false"); // the grid is enough: the page draws it
    const res = await post(ROUTES.explain, form);
    const heat = res.ok ? heatFromExplain(res.body) : null;
    if (!heat) {
      const { kind } = errorBody(res.body);
      note.textContent = res.ok ? "The server sent no heatmap." : `No heatmap: ${errorWords(res.status, kind)}`;
      $(".heat-check", card).checked = false;
      return;
    }
    item.view.heatmap = heat;
  }
  note.hidden = true;
  if ($(".heat-check", card).checked) drawHeatmap(card, item.view.heatmap);
}

// ---- table and CSV ---------------------------------------------------------------------------

function makeRow(item) {
  const tr = document.createElement("tr");
  const th = document.createElement("th");
  th.scope = "row";
  const link = document.createElement("a");
  link.href = `#card-${item.id}`;
  link.textContent = item.file.name;
  th.append(link);
  tr.append(th);
  $("#table tbody").append(tr);
  return tr;
}

// [text, class] per cell after the file name; classes let narrow screens drop columns
function rowCells(item) {
  const v = item.view;
  if (item.status === "pending") return [["checking…", ""], ["", "wide"]];
  if (!v) {
    const e = item.error || {};
    return [[e.status ? `error ${e.status}` : "error", ""], [e.words || "", "wide message"]];
  }
  const size = v.media.width && v.media.height ? `${v.media.width}×${v.media.height}` : "";
  const band = v.band[1] > v.band[0] ? `${fmt(v.band[0])}–${fmt(v.band[1])}` : "";
  return [[v.label, ""], [fmt(v.score), ""], [fmt(v.threshold), "col-threshold"], [band, "col-band"],
    [[v.model.name, v.model.version].filter(Boolean).join(" "), "col-model"], [size, "col-size"]];
}

function updateRow(item) {
  const row = item.row;
  row.querySelectorAll("td").forEach((td) => td.remove());
  for (const [text, cls] of rowCells(item)) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls.includes("wide")) td.colSpan = 5; // an error or a wait spans the number columns
    td.className = cls;
    row.append(td);
  }
  row.className = item.view ? `verdict-${item.view.label}` : item.status === "pending" ? "pending" : "error";
  // models without an uncertain band leave that column empty: drop it
  const anyBand = state.items.some((it) => it.view && it.view.band[1] > it.view.band[0]);
  $("#table").classList.toggle("no-band", !anyBand);
}

function updateTable() {
  // one file is its card; from two on, the table compares them and exports them
  $("#table-wrap").hidden = state.items.length < 2;
  $("#results-heading").hidden = state.items.length === 0;
}

const CSV_COLUMNS = ["file", "label", "score", "threshold", "band_low", "band_high", "model_name", "model_version",
  "format", "width", "height", "frames", "reason", "family", "family_score", "error_status", "error"];

function csvCell(value) {
  if (value == null) return "";
  let s = String(value);
  // a file name like "=cmd()" must not run as a formula in a spreadsheet
  if (typeof value === "string" && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function csvText(items) {
  const lines = [CSV_COLUMNS.join(",")];
  for (const it of items) {
    const v = it.view;
    const row = v
      ? [it.file.name, v.label, v.score, v.threshold, v.band[0], v.band[1], v.model.name, v.model.version,
        v.media.format, v.media.width, v.media.height, v.media.frames ?? (v.frames.length || null), v.reason,
        v.family, v.familyScore, "", ""]
      : [it.file.name, "", "", "", "", "", "", "", "", "", "", "", "", "", "", it.error ? it.error.status : "",
        it.error ? it.error.words : "pending"];
    lines.push(row.map(csvCell).join(","));
  }
  return `${lines.join("\r\n")}\r\n`;
}

function downloadCsv() {
  const blob = new Blob([csvText(state.items)], { type: "text/csv;charset=utf-8" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `fakelens-${new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "")}.csv`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function clearAll() {
  state.queue.length = 0;
  for (const it of state.items) {
    it.card.remove();
    it.row.remove();
  }
  state.items = [];
  updateTable();
  announce("Cleared.");
  $("#file-input").focus();
}

// ---- announcements -----------------------------------------------------------------------------

function announce(text) {
  $("#status").textContent = text;
}

function announceProgress() {
  const total = state.items.length;
  const left = state.queue.length + state.running;
  if (total > 1 && left === 0) announce(`All ${total} files checked.`);
}

loadConfig().then(() => {
  setupKey();
  setupInput();
  document.body.dataset.ready = "1"; // tests wait for this before uploading
});
