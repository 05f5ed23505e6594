"""What a file says about its own origin: C2PA content credentials and generator metadata.

    prov = read_provenance(Path("photo.jpg").read_bytes())
    prov["declared_ai"], prov["declared_by"], prov["c2pa"]["status"], prov["warnings"]

Sources, all read from the uploaded bytes, offline:
- C2PA manifests through `c2pa-python`'s Reader: status `trusted` (signer on a trust
  list), `untrusted_signer` (signature and hashes intact, signer unknown), `invalid`
  (hash or signature failures: the file was changed after signing, reported loudly with
  the validation codes), `remote_not_fetched` (the manifest lives at a URL; we never
  fetch), `unreadable`. Claim generator, signer and actions with `digitalSourceType`.
- IPTC `DigitalSourceType` in XMP, EXIF Software/Make/Model, and the text chunks that
  generators write (Stable Diffusion web UIs' `parameters`, ComfyUI's `prompt`/`workflow`,
  InvokeAI, NovelAI).

Trust: C2PA signers are checked against the PEM trust anchors named by the environment
variable FAKELENS_C2PA_TRUST_ANCHORS (a file path; read by the service, the scorer and the
CLI alike), or passed as `trust_anchors`; without any, a valid signature is
`untrusted_signer`, never `trusted`.

Policy (docs/evidence.md): an intact declaration of generative AI (a manifest that is not
`invalid`, or plain metadata) makes the verdict `synthetic` with reason "declared"
(`models.core.verdict.decide`). Nothing here is ever evidence of authenticity: metadata is
stripped by most uploads and re-encodes, and anyone can write "Canon" into EXIF.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re

from PIL import Image

# IPTC digital source types that declare generative AI (cv.iptc.org/newscodes/digitalsourcetype).
GENERATIVE_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia")
# EXIF Software values that name a generator (lower-case substrings).
GENERATOR_SOFTWARE = ("stable diffusion", "midjourney", "dall-e", "dall·e", "firefly", "novelai", "comfyui",
                      "automatic1111", "invokeai", "imagen", "flux", "leonardo.ai", "sdxl")
# PNG text keys written by generators -> the tool that writes them.
GENERATOR_CHUNKS = {
    "parameters": "Stable Diffusion web UI (A1111/Forge)",
    "prompt": "ComfyUI",
    "workflow": "ComfyUI",
    "invokeai_metadata": "InvokeAI",
    "sd-metadata": "InvokeAI",
    "dream": "InvokeAI",
}
EXIF_TAGS = {"software": 0x0131, "make": 0x010F, "model": 0x0110}
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
XMP_PACKET = re.compile(rb"<x:xmpmeta.*?</x:xmpmeta>", re.S)
SOURCE_TYPE = re.compile(r"DigitalSourceType(?:>|=\")\s*(?:<rdf:[^>]*>\s*)?([^<\"\s]+)")
TRUST_ENV = "FAKELENS_C2PA_TRUST_ANCHORS"
NOTE = "absence of provenance metadata is not evidence of authenticity (most uploads strip it)"


def _short(source_type: str | None) -> str | None:
    """'http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia' -> 'trainedAlgorithmicMedia'."""
    return source_type.rstrip("/").rsplit("/", 1)[-1] if source_type else None


@functools.lru_cache(maxsize=4)
def _anchors_file(path: str) -> str:
    try:
        text = open(path, encoding="ascii").read()
    except OSError as e:
        raise ValueError(f"{TRUST_ENV}={path}: cannot read the trust anchors ({e.strerror}); give a PEM file") from None
    if "BEGIN CERTIFICATE" not in text:
        raise ValueError(f"{TRUST_ENV}={path} holds no PEM certificate")
    return text


def env_trust_anchors() -> str | None:
    path = os.environ.get(TRUST_ENV, "")
    return _anchors_file(path) if path else None


def _c2pa_context(trust_anchors: str | None):
    import c2pa

    # Never touch the network while reading an upload: remote manifests are reported, not fetched.
    settings: dict = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    return c2pa.Context(c2pa.Settings.from_json(json.dumps(settings)))


# Byte strings every file with C2PA data holds: the manifest store's JUMBF box ("jumb") and its
# "c2pa" label (JPEG APP11, PNG caBX, HEIF/MP4 uuid boxes), WebP's "C2PA" chunk, and XMP's
# dcterms:provenance, which points to a remote manifest.
C2PA_MARKERS = (b"c2pa", b"C2PA", b"jumb", b"provenance")


def may_hold_c2pa(data: bytes) -> bool:
    """False when the bytes cannot hold a C2PA manifest or a reference to one.

    Opening c2pa's Reader (a native context, settings and a format parser) cost the service's
    front more CPU per upload than decoding the image did (docs/performance.md); a scan for
    the markers runs at memory speed and skips it for the common file with no credentials.
    """
    return any(marker in data for marker in C2PA_MARKERS)


def read_c2pa(data: bytes, trust_anchors: str | None = None) -> dict:
    """The active C2PA manifest's facts, or {"present": False}."""
    if not may_hold_c2pa(data):
        return {"present": False}
    import c2pa

    try:
        with c2pa.Reader(None, io.BytesIO(data), context=_c2pa_context(trust_anchors)) as reader:
            store = json.loads(reader.json())
    except c2pa.C2paError as e:
        text = str(e)
        if "ManifestNotFound" in type(e).__name__ or text.startswith(("ManifestNotFound", "NotSupported")):
            return {"present": False}
        if text.startswith("Remote"):
            url = text.split("url", 1)[-1].strip() if "url" in text else None
            return {"present": True, "status": "remote_not_fetched", "remote_url": url,
                    "message": "the file points to a remote C2PA manifest; it was not fetched (offline by design)"}
        return {"present": True, "status": "unreadable", "message": f"the C2PA data could not be read: {text[:300]}"}
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    state = store.get("validation_state")
    failures = [f["code"] for f in (store.get("validation_results", {}).get("activeManifest", {}).get("failure", []))]
    hard = [c for c in failures if c != "signingCredential.untrusted"]
    if state == "Invalid" or hard:
        status = "invalid"
    elif state == "Trusted":
        status = "trusted"
    else:
        status = "untrusted_signer"
    actions = []
    for assertion in manifest.get("assertions", []):
        if assertion.get("label", "").startswith("c2pa.actions"):
            for act in assertion.get("data", {}).get("actions", []):
                actions.append({"action": act.get("action"), "digital_source_type": _short(act.get("digitalSourceType"))})
    generators = manifest.get("claim_generator_info") or []
    generator = manifest.get("claim_generator") or ", ".join(
        f"{g.get('name', '?')} {g.get('version', '')}".strip() for g in generators)
    sig = manifest.get("signature_info", {})
    return {
        "present": True,
        "status": status,
        "validation_codes": failures,
        "claim_generator": generator or None,
        "signer": {"issuer": sig.get("issuer"), "common_name": sig.get("common_name"), "alg": sig.get("alg")},
        "actions": actions,
    }


def _exif(img: Image.Image) -> dict:
    exif = img.getexif()
    out = {k: str(exif.get(tag)).strip("\x00 ") for k, tag in EXIF_TAGS.items() if exif.get(tag)}
    comment = exif.get_ifd(EXIF_IFD).get(USER_COMMENT)
    if isinstance(comment, bytes):
        # EXIF UserComment starts with an 8-byte charset header; A1111 writes UNICODE (UTF-16).
        body = comment[8:]
        text = body.decode("utf-16-be" if comment[:8].startswith(b"UNICODE") else "latin-1", errors="ignore")
        if "Steps:" in text and "Sampler:" in text:
            out["user_comment_generator"] = "Stable Diffusion web UI (A1111/Forge) parameters in EXIF UserComment"
    return out


def _text_chunks(img: Image.Image) -> dict[str, str]:
    """Generator text chunks (PNG tEXt/iTXt, WebP/JPEG comments are not used by the tools we know)."""
    text = getattr(img, "text", None) or {}
    return {k: GENERATOR_CHUNKS[k] for k in text if k in GENERATOR_CHUNKS}


def _xmp_source_type(data: bytes) -> str | None:
    packet = XMP_PACKET.search(data)
    if packet is None:
        return None
    match = SOURCE_TYPE.search(packet.group(0).decode("utf-8", errors="ignore"))
    return _short(match.group(1)) if match else None


def read_provenance(data: bytes, trust_anchors: str | None = None) -> dict:
    """Every provenance signal in the file's bytes, and whether any of them declares generative AI.

    `trust_anchors` (PEM text) defaults to the file named by FAKELENS_C2PA_TRUST_ANCHORS."""
    declared, warnings = [], []
    c2pa_facts = read_c2pa(data, trust_anchors or env_trust_anchors())
    status = c2pa_facts.get("status")
    if status == "invalid":
        warnings.append("the C2PA manifest is INVALID (" + ", ".join(c2pa_facts["validation_codes"]) +
                        "): the file was changed after it was signed, or the manifest is forged; "
                        "its claims cannot be relied on")
    elif status in ("trusted", "untrusted_signer"):
        for act in c2pa_facts["actions"]:
            if act["digital_source_type"] in GENERATIVE_SOURCE_TYPES:
                declared.append(f"c2pa action {act['action']}: {act['digital_source_type']} ({status})")
    xmp_type = _xmp_source_type(data)
    if xmp_type in GENERATIVE_SOURCE_TYPES:
        declared.append(f"xmp DigitalSourceType: {xmp_type}")
    exif, chunks = {}, {}
    try:
        with Image.open(io.BytesIO(data)) as img:
            exif, chunks = _exif(img), _text_chunks(img)
    except Exception:  # not an image Pillow knows (a video container): C2PA/XMP above still apply
        pass
    software = exif.get("software", "").lower()
    if any(name in software for name in GENERATOR_SOFTWARE):
        declared.append(f"exif Software: {exif['software']}")
    if "user_comment_generator" in exif:
        declared.append(exif["user_comment_generator"])
    declared.extend(f"png text '{key}' ({tool})" for key, tool in chunks.items())
    out = {
        "declared_ai": bool(declared),
        "declared_by": declared,
        "c2pa": c2pa_facts,
        "xmp_digital_source_type": xmp_type,
        "exif": exif,
        "generator_chunks": sorted(chunks),
        "warnings": warnings,
    }
    if not declared:
        out["note"] = NOTE
    return out
