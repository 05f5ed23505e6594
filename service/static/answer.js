// Every name the page shares with the HTTP API lives in this file: routes, form fields, and
// the mapping from an API answer to what a card shows. When the API grows or renames a field,
// only this file changes. Optional parts (provenance, faces, heatmap, video frames) map to
// null / [] when the answer lacks them, and the page then simply does not show them.

export const ROUTES = {
  detect: "/detect",
  video: "/detect_video",
  explain: "/explain",
  config: "/page/config.json",
};

// Form field names each route may take, first match wins (read against /page/config.json).
export const FIELDS = {
  image: ["image"],
  video: ["video", "file"],
  explain: ["image"],
  faceMode: ["faces", "face_mode", "face"],
  // /explain's option to skip its overlay PNG: the page draws the grid itself
  explainOverlay: ["overlay"],
};

export function pickField(config, route, candidates) {
  const fields = (config && config.routes && config.routes[route]) || null;
  if (!fields) return null;
  return candidates.find((c) => fields.includes(c)) || null;
}

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

function box(face) {
  // [x, y, width, height] in pixels of the decoded (EXIF-rotated) image, as models/evidence/faces.py writes it
  const b = face.box || face.bbox;
  if (Array.isArray(b) && b.length === 4) return b.map(Number);
  if (["x", "y", "w", "h"].every((k) => k in face)) return [face.x, face.y, face.w, face.h];
  return null;
}

// one row of /detect_video's `timeline` (models/evidence/video.py summarize_video)
function frame(f, i) {
  return {
    index: f.index ?? i,
    time: num(f.time_s),
    keyframe: Boolean(f.keyframe),
    score: num(f.score),
    label: f.label ?? null,
    family: f.family ?? null,
    familyScore: num(f.family_score),
  };
}

// models/evidence/explain.py Heat.to_dict(): values (rows x cols, null where no view covered the cell),
// origin [x, y] and cell_px in original pixels, image_size [w, h]; or an overlay PNG.
function heatmap(h) {
  if (!h || typeof h !== "object") return null;
  const grid = h.values ?? h.grid ?? null;
  let png = h.overlay_png_base64 ?? h.overlay_png ?? null;
  if (typeof png === "string" && !png.startsWith("data:")) png = `data:image/png;base64,${png}`;
  if (!Array.isArray(grid) && !png) return null;
  return {
    grid: Array.isArray(grid) ? grid : null,
    origin: Array.isArray(h.origin) ? h.origin.map(Number) : [0, 0],
    cellPx: num(h.cell_px),
    imageSize: Array.isArray(h.image_size) ? h.image_size.map(Number) : null,
    png,
  };
}

/** The /explain answer (or a heatmap inside a /detect answer) -> the heatmap to draw, or null. */
export function heatFromExplain(body) {
  if (!body || typeof body !== "object") return null;
  const h = heatmap(body.heatmap ?? body);
  const png = body.overlay_png_base64 ?? body.overlay_png;
  if (h && !h.png && png) h.png = heatmap({ overlay_png: png }).png;
  return h;
}

/**
 * An API answer (/detect, /detect_video, /explain or a /detect_batch item) -> what a card shows.
 * Shapes: service/verdict.py (label, score, family, family_score, threshold, uncertain_band, model, image),
 * models/evidence/families.py (family on every verdict, face and frame), models/evidence/
 * provenance.py (provenance), models/evidence/faces.py (faces: {faces: [...], face_found, note}),
 * models/evidence/explain.py (heatmap), models/evidence/video.py (video, timeline, mean/max/share_flagged).
 */
export function fromAnswer(a) {
  const threshold = num(a.threshold);
  const band = Array.isArray(a.uncertain_band) && a.uncertain_band.length === 2
    ? a.uncertain_band.map(Number) : [threshold, threshold];
  const model = a.model || {};
  const media = a.image || a.video || {};
  const faceMode = Array.isArray(a.faces) ? { faces: a.faces } : a.faces || null;
  const faces = faceMode && Array.isArray(faceMode.faces) ? faceMode.faces : [];
  const timeline = a.timeline ?? null;
  return {
    label: a.label ?? null, // synthetic | real | uncertain, decided by the server (models/core/verdict.py)
    score: num(a.score),
    // the generator family (models/core/attribution.py): null when real or without a family head,
    // "unknown" when the picture looks synthetic but like none of the families the model knows
    family: a.family ?? null,
    familyScore: num(a.family_score),
    threshold,
    band,
    reason: a.reason ?? null, // "declared" when the file's own provenance made it synthetic, else "model"
    model: { name: model.name ?? null, version: model.version ?? null, backend: model.backend ?? null,
             device: model.device ?? null },
    media: { format: media.format ?? media.codec ?? media.container ?? null, width: num(media.width), height: num(media.height),
             frames: num(media.frames), duration: num(media.duration_s), fps: num(media.fps),
             note: media.note ?? null },
    elapsedMs: num(a.elapsed_ms),
    provenance: a.provenance && typeof a.provenance === "object" ? a.provenance : null,
    faces: faces.map((f) => ({ box: box(f), score: num(f.score), label: f.label ?? null,
                               family: f.family ?? null, familyScore: num(f.family_score),
                               confidence: num(f.confidence) })).filter((f) => f.box),
    // face mode with no face: the whole image was scored and the answer says so
    facesNote: faceMode && faceMode.face_found === false
      ? (faceMode.note ?? "no face found: the whole image was scored") : null,
    heatmap: heatmap(a.heatmap),
    frames: Array.isArray(timeline) ? timeline.map(frame) : [],
    aggregate: Array.isArray(timeline) ? { rule: a.aggregate ?? null, mean: num(a.mean), max: num(a.max),
                                           shareFlagged: num(a.share_flagged) } : null,
  };
}

/** The service's error body {"error": {code, kind, message}} -> {kind, message}. */
export function errorBody(body) {
  const e = body && body.error;
  if (e && typeof e === "object") return { kind: e.kind ?? null, message: e.message ?? "" };
  if (typeof e === "string") return { kind: null, message: e };
  return { kind: null, message: "" };
}
