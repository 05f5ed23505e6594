// Drawing the evidence beside a verdict: face boxes, the heatmap overlay, the video timeline
// and the provenance block. Each takes the mapped answer (answer.js) and hides itself when
// the answer has nothing for it.

const SVG = "http://www.w3.org/2000/svg";
const fmt = (v) => (v == null ? "" : v.toFixed(3));

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  parent.append(el);
  return el;
}

/** Face boxes over the preview (percent of the decoded image) and a list of their scores. */
export function drawFaces(card, v) {
  const layer = card.querySelector(".overlay.faces");
  const section = card.querySelector(".face-list");
  const list = section.querySelector("ol");
  layer.replaceChildren();
  list.replaceChildren();
  const { width, height } = v.media;
  section.hidden = !(v.faces.length || v.facesNote);
  if (!v.faces.length) {
    if (v.facesNote) {
      const li = document.createElement("li");
      li.textContent = v.facesNote;
      list.append(li);
    }
    return;
  }
  v.faces.forEach((f, i) => {
    const li = document.createElement("li");
    li.textContent = `Face ${i + 1}: score ${fmt(f.score)}${f.label ? ` (${f.label})` : ""}` +
      (f.family ? `, family ${f.family}` : "");
    list.append(li);
    if (!width || !height) return;
    const [x, y, w, h] = f.box;
    const b = document.createElement("div");
    b.className = `face-box${f.label ? ` verdict-${f.label}` : ""}`;
    Object.assign(b.style, {
      left: `${(100 * x) / width}%`, top: `${(100 * y) / height}%`,
      width: `${(100 * w) / width}%`, height: `${(100 * h) / height}%`,
    });
    b.textContent = `${i + 1}`;
    layer.append(b);
  });
}

/** The heatmap as a layer over the preview: the grid drawn here where it came, else the server's PNG. */
export function drawHeatmap(card, heat) {
  const frame = card.querySelector(".frame");
  frame.querySelector(".overlay.heat")?.remove();
  if (!heat) return;
  const layer = heat.grid ? gridCanvas(heat) : document.createElement("img");
  if (!heat.grid) {
    layer.src = heat.png; // the server's overlay is the whole image with its heat blended in
    layer.alt = "";
    layer.classList.add("png");
  }
  layer.classList.add("overlay", "heat");
  layer.setAttribute("aria-hidden", "true");
  frame.querySelector(".overlay.faces").before(layer);
}

function gridCanvas(heat) {
  const rows = heat.grid.length;
  const cols = rows ? heat.grid[0].length : 0;
  const canvas = document.createElement("canvas");
  canvas.width = cols;
  canvas.height = rows;
  const values = heat.grid.flat().filter((x) => x != null).map(Number);
  const peak = Math.max(1e-9, ...values.map(Math.abs));
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cols, rows);
  heat.grid.flat().forEach((value, i) => {
    if (value == null) return; // no view covered this cell: leave it clear
    const t = Number(value) / peak; // + pushed towards synthetic (red), - towards real (blue)
    img.data.set(t >= 0 ? [230, 40, 20, Math.round(230 * t)] : [30, 90, 230, Math.round(-160 * t)], i * 4);
  });
  ctx.putImageData(img, 0, 0);
  // the grid covers the part of the image the model saw: place it there, not over the whole preview
  if (heat.cellPx && heat.imageSize) {
    const [w, h] = heat.imageSize;
    Object.assign(canvas.style, {
      inset: "auto",
      left: `${(100 * heat.origin[0]) / w}%`, top: `${(100 * heat.origin[1]) / h}%`,
      width: `${(100 * cols * heat.cellPx) / w}%`, height: `${(100 * rows * heat.cellPx) / h}%`,
    });
  }
  return canvas;
}

/** Per-frame scores of a video as bars against the threshold, plus the same as a table. */
export function drawTimeline(card, v) {
  const section = card.querySelector(".timeline");
  const chart = section.querySelector(".chart");
  const body = section.querySelector("tbody");
  chart.replaceChildren();
  body.replaceChildren();
  section.hidden = v.frames.length === 0;
  if (!v.frames.length) return;
  const n = v.frames.length;
  chart.setAttribute("viewBox", `0 0 ${n} 100`);
  const [low, high] = v.band;
  if (high > low) svg("rect", { class: "band", x: 0, y: 100 - 100 * high, width: n, height: 100 * (high - low) }, chart);
  v.frames.forEach((f, i) => {
    const h = 100 * (f.score ?? 0);
    const bar = svg("rect", { class: `bar verdict-${f.label}`, x: i + 0.1, y: 100 - h, width: 0.8, height: h }, chart);
    svg("title", {}, bar).textContent = `frame ${f.index}${f.time != null ? ` at ${f.time.toFixed(2)} s` : ""}: ${fmt(f.score)}`;
    const tr = document.createElement("tr");
    for (const text of [f.index, f.time == null ? "" : f.time.toFixed(2), fmt(f.score), f.label ?? ""]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  });
  const y = 100 - 100 * (v.threshold ?? 0.5);
  svg("line", { class: "threshold", x1: 0, x2: n, y1: y, y2: y, "vector-effect": "non-scaling-stroke" }, chart);
  const flagged = v.frames.filter((f) => f.label === "synthetic").length;
  chart.setAttribute("aria-label", `${n} frames scored; ${flagged} flagged synthetic; threshold ${fmt(v.threshold)}`);
}

function renderValue(value, depth) {
  if (value == null) return document.createTextNode("—");
  if (Array.isArray(value)) {
    if (value.every((x) => x == null || typeof x !== "object")) return document.createTextNode(value.join(", ") || "—");
    const ol = document.createElement("ol");
    value.forEach((x) => {
      const li = document.createElement("li");
      li.append(renderValue(x, depth + 1));
      ol.append(li);
    });
    return ol;
  }
  if (typeof value === "object") {
    if (Object.keys(value).length === 0) return document.createTextNode("—");
    if (depth > 3) return document.createTextNode(JSON.stringify(value));
    const dl = document.createElement("dl");
    for (const [k, x] of Object.entries(value)) {
      const dt = document.createElement("dt");
      dt.textContent = k.replace(/_/g, " ");
      const dd = document.createElement("dd");
      dd.append(renderValue(x, depth + 1));
      dl.append(dt, dd);
    }
    return dl;
  }
  return document.createTextNode(String(value));
}

/**
 * The provenance block: a one-line summary (declared AI, warnings, the caveat) and then every
 * field as the server sent it (its shape is the API's; shown, not reinterpreted).
 */
export function renderProvenance(details, provenance) {
  const body = details.querySelector(".prov-body");
  const summary = details.querySelector(".prov-summary");
  body.replaceChildren();
  summary.replaceChildren();
  details.hidden = !provenance;
  if (!provenance) return;
  const line = (text, cls) => {
    const p = document.createElement("p");
    p.className = cls;
    p.textContent = text;
    summary.append(p);
  };
  const by = Array.isArray(provenance.declared_by) ? provenance.declared_by.join("; ") : "";
  if (provenance.declared_ai) line(`The file declares itself AI-generated${by ? `: ${by}` : ""}.`, "prov-declared");
  for (const w of provenance.warnings || []) line(`Warning: ${w}`, "prov-warning");
  if (provenance.note) line(provenance.note, "help");
  const rest = { ...provenance };
  for (const k of ["declared_ai", "declared_by", "warnings", "note"]) delete rest[k];
  body.append(renderValue(rest, 0));
}
