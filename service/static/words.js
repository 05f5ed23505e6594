// What the page says to a person: verdicts and HTTP errors in plain words.

export const VERDICTS = {
  synthetic: { title: "Synthetic", text: "Likely AI-generated or manipulated." },
  real: { title: "Real", text: "No sign of AI generation found. This is not proof that the file is authentic." },
  uncertain: { title: "Uncertain", text: "The score lies in the model's uncertain band: too weak to act on either way." },
};

// why the server decided as it did, when it was not the model's score alone
const REASONS = {
  declared: "Decided by the file's own provenance: it declares itself AI-generated.",
};

export function reasonWords(reason) {
  return REASONS[reason] || null;
}

// the generator family beside a verdict (never for "real"): "unknown" is the open-set answer
export const UNKNOWN_FAMILY = "Looks synthetic, but like none of the generator families this model knows " +
  "(no family fired strongly enough).";

/** {text, title} for a family answer, or null when there is none (real, or a model without a family head). */
export function familyWords(family, score, fmt) {
  if (family == null) return null;
  const at = score == null ? "" : ` (${fmt(score)})`;
  if (family === "unknown") return { text: `unknown${at}: ${UNKNOWN_FAMILY}`, title: UNKNOWN_FAMILY };
  return { text: `${family}${at}`, title: "The generator family this picture most resembles among the ones this " +
    "model knows, and its probability among them: evidence of resemblance, not proof of which tool made it." };
}

export function verdictWords(label) {
  return VERDICTS[label] || { title: label || "Unknown", text: "The server gave no verdict." };
}

export const mb = (n) => `${(n / (1024 * 1024)).toFixed(n < 10 * 1024 * 1024 ? 1 : 0)} MB`;

/**
 * An HTTP error -> one sentence a person can act on. `kind` and `message` come from the
 * service's error body; the message stays available as a detail line.
 */
export function errorWords(status, kind, { maxBytes = null, retryAfter = null, hadKey = false, video = false } = {}) {
  const what = video ? "video" : "image";
  switch (status) {
    case 0:
      return "Could not reach the fakelens server. Check that it is running and that this page was opened from it.";
    case 400:
      return kind === "empty" ? "The file is empty (0 bytes)." : "The server could not read the upload. Try the file again.";
    case 401:
      return hadKey
        ? "The API key was not accepted. Check the key in the API key field and try again."
        : "This server needs an API key. Enter it in the API key field above and try again.";
    case 404:
      return video ? "This server does not score videos (it has no /detect_video)." : "This server does not offer that service.";
    case 408:
      return "The upload took too long to arrive. Check the connection and try again.";
    case 413:
      if (kind === "too_many_pixels") {
        return `The ${what} has too many pixels for this server. Send a downscaled copy.`;
      }
      if (kind === "too_long" || kind === "too_many_frames") {
        return `The ${what} is too long for this server. Send a shorter clip.`;
      }
      return `The file is too large for this server${maxBytes ? ` (limit ${mb(maxBytes)})` : ""}. Send a smaller copy.`;
    case 415:
      return video
        ? "This file is not a video the service can read. Use MP4, WebM or MOV."
        : "This file is not an image the service can read. Use JPEG, PNG, WebP, GIF, BMP or TIFF.";
    case 422:
      return `The file looks damaged or incomplete: the ${what} could not be decoded. Try the original file.`;
    case 429:
    case 503:
      return `The server is busy right now. Try again${retryAfter ? ` in ${retryAfter} s` : " in a moment"}.`;
    default:
      return status >= 500
        ? `The server failed on this file (HTTP ${status}). Try again; if it persists, tell the operator.`
        : `The server refused this file (HTTP ${status}).`;
  }
}
