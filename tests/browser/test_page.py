"""The analyst's page in a real headless Chromium against a real `fakelens serve`.

Files are made at test time and uploaded through the page's own file input; the tests read
the API answers the page actually received and assert that the cards, the table and the
downloaded CSV show exactly those. Evidence answers the tiny test model cannot produce (a
declared file, faces, heatmaps, a video timeline) are exercised by answers the test shapes
from a real one.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import KEY, MAX_BYTES

pytestmark = pytest.mark.slow

TITLES = {"synthetic": "Synthetic", "real": "Real", "uncertain": "Uncertain"}
STATIC = Path(__file__).resolve().parents[2] / "service" / "static"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)

    def noise(w, h):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    out = {}
    for name, img, fmt in [("noise.png", noise(64, 48), "PNG"), ("photo.jpg", noise(80, 60), "JPEG"),
                           ("frame.webp", noise(50, 70), "WEBP"), ("big.png", noise(400, 400), "PNG")]:
        out[name] = folder / name
        img.save(out[name], format=fmt)
    assert out["big.png"].stat().st_size > MAX_BYTES
    out["notes.jpg"] = folder / "notes.jpg"
    out["notes.jpg"].write_text("meeting notes, not a picture\n")
    out["cut.png"] = folder / "cut.png"
    out["cut.png"].write_bytes(out["noise.png"].read_bytes()[:400])
    out["clip.mp4"] = folder / "clip.mp4"
    out["clip.mp4"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    return out


def use_key(page, key=KEY) -> None:
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")


def record_answers(page) -> list:
    """Every /detect response the page receives, in arrival order (Chromium does not expose
    multipart upload bodies to the test, so answers are matched to files by what they say)."""
    seen = []
    page.on("response", lambda r: seen.append(r) if r.request.method == "POST" and r.url.endswith("/detect")
            else None)
    return seen


def by_size(responses, files, names) -> dict:
    """file name -> its 200 answer, matched through the image size each answer reports."""
    sizes = {Image.open(files[n]).size: n for n in names}
    assert len(sizes) == len(names), "test files need distinct sizes"
    out = {}
    for r in responses:
        if r.status == 200:
            body = r.json()
            out[sizes[(body["image"]["width"], body["image"]["height"])]] = body
    return out


def record_form_fields(page) -> None:
    """Keep the form field names of each fetch the page makes in window.sentFields."""
    page.add_init_script("""
        window.sentFields = [];
        const realFetch = window.fetch;
        window.fetch = (url, opts = {}) => {
            if (opts.body instanceof FormData) window.sentFields.push([String(url), [...opts.body.keys()]]);
            return realFetch(url, opts);
        };
    """)


def settle(page, n: int) -> None:
    # a function, not an expression: Playwright evals expressions, which the page's CSP forbids
    page.wait_for_function(
        "n => document.querySelectorAll('article.card').length === n && !document.querySelector('.card.pending')",
        arg=n)


def card(page, name: str):
    return page.locator("article.card").filter(has=page.get_by_role("heading", name=name, exact=True))


def test_cards_table_and_csv_show_what_the_api_answered(page, files):
    responses = record_answers(page)
    use_key(page)
    names = ["noise.png", "photo.jpg", "frame.webp"]
    page.set_input_files("#file-input", [str(files[n]) for n in names])
    settle(page, 3)
    answers = by_size(responses, files, names)
    assert sorted(answers) == sorted(names)
    table = page.locator("#table tbody tr")
    assert table.count() == 3
    for row, name in zip(table.all(), names, strict=True):
        api = answers[name]
        c = card(page, name)
        assert c.locator(".badge").inner_text() == TITLES[api["label"]]
        assert f"verdict-{api['label']}" in c.get_attribute("class")
        assert c.locator("dd.score").inner_text() == f"{api['score']:.3f}"
        assert c.locator("dd.threshold-value").inner_text() == f"{api['threshold']:.3f}"
        low, high = api["uncertain_band"]
        assert c.locator("dd.band-value").inner_text() == f"{low:.3f} – {high:.3f}"
        assert c.locator("dd.model").inner_text() == f"{api['model']['name']} {api['model']['version']}"
        # the bar puts the marker, the threshold and the band where the numbers say
        for part, value in ((".marker", api["score"]), (".threshold", api["threshold"]), (".band", low)):
            left = c.locator(f".scorebar {part}").evaluate("e => e.style.left")
            assert float(left.rstrip("%")) == pytest.approx(value * 100, abs=0.006), part
        assert f"{api['score']:.3f}" in c.locator(".scorebar .track").get_attribute("aria-label")
        # every answer now carries provenance (none declared here); what it did not answer is not shown
        assert "not evidence" in c.locator(".provenance").inner_text()
        for part in (".face-list", ".timeline"):
            assert c.locator(part).is_hidden(), part
        # the test model has no family head: no family line
        assert api["family"] is None and c.locator("dd.family").count() == 0
        cells = [td.inner_text() for td in row.locator("th, td").all()]
        assert cells[:3] == [name, api["label"], f"{api['score']:.3f}"]

    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    assert download.value.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["file"] for r in rows] == names
    for r in rows:
        api = answers[r["file"]]
        assert r["label"] == api["label"]
        assert float(r["score"]) == api["score"]  # full precision, not the 3 digits on screen
        assert float(r["threshold"]) == api["threshold"]
        assert [float(r["band_low"]), float(r["band_high"])] == api["uncertain_band"]
        assert (r["model_name"], r["model_version"]) == (api["model"]["name"], api["model"]["version"])
        assert (int(r["width"]), int(r["height"])) == (api["image"]["width"], api["image"]["height"])
        assert r["family"] == "" and r["family_score"] == ""


def test_errors_are_shown_in_words(page, files):
    responses = record_answers(page)
    use_key(page)
    page.set_input_files("#file-input", [str(files[n]) for n in ("big.png", "notes.jpg", "cut.png", "clip.mp4")])
    settle(page, 4)
    expected = {
        "big.png": (413, "too large for this server (limit 0.2 MB)"),
        "notes.jpg": (415, "not an image the service can read"),
        "cut.png": (422, "looks damaged or incomplete"),
    }
    # the clip went to /detect_video and came back 415 too (its bytes are not a video)
    answers = {r.status: r.json()["error"] for r in responses}
    assert sorted(answers) == [413, 415, 422]
    for name, (status, words) in expected.items():
        c = card(page, name)
        assert c.locator(".badge").inner_text() == f"Error {status}"
        assert words in c.locator(".error-text").inner_text()
        # the server's own message stays available as a detail
        assert answers[status]["message"] in c.locator(".error-detail").inner_text()
        assert c.get_by_role("button", name="Try again").is_visible()
    # the server scores videos (/detect_video); these bytes are not one, and the page says so
    assert "not a video the service can read" in card(page, "clip.mp4").locator(".error-text").inner_text()

    # overload: the service answers 503 + Retry-After; the page says when to retry and can retry
    def busy(route):
        route.fulfill(status=503, headers={"Retry-After": "2"},
                      json={"error": {"code": 503, "kind": "overloaded", "message": "the server is busy"}})
    page.route("**/detect", busy)
    page.set_input_files("#file-input", str(files["noise.png"]))
    settle(page, 5)
    c = card(page, "noise.png")
    assert c.locator(".error-text").inner_text() == "The server is busy right now. Try again in 2 s."
    page.unroute("**/detect")
    c.get_by_role("button", name="Try again").click()
    settle(page, 5)
    assert c.locator(".badge").inner_text() in TITLES.values()


def test_api_key_asked_for_then_used_from_session_storage_only(page, files):
    responses = record_answers(page)
    assert page.locator("#api-key").is_visible()  # config says keys are on
    page.set_input_files("#file-input", str(files["noise.png"]))
    settle(page, 1)
    c = card(page, "noise.png")
    assert [r.status for r in responses] == [401]
    assert "needs an API key" in c.locator(".error-text").inner_text()
    assert page.evaluate("document.activeElement.id") == "api-key"  # focus goes where the fix is

    use_key(page, "wrong-key")
    settle(page, 1)
    assert "was not accepted" in c.locator(".error-text").inner_text()

    use_key(page)  # Enter in the key field sends the refused files again
    settle(page, 1)
    assert [r.status for r in responses] == [401, 401, 200]
    assert c.locator(".badge").inner_text() == TITLES[responses[-1].json()["label"]]
    storage = page.evaluate("[JSON.stringify(sessionStorage), localStorage.length, document.cookie]")
    assert storage == [json.dumps({"fakelens.apiKey": KEY}, separators=(",", ":")), 0, ""]


def test_page_is_open_and_the_api_stays_protected(page_server):
    """Needs no browser: the guard lets the page's own GETs through and nothing else."""
    for path in ("/", "/page/page.js", "/page/page.css", "/page/answer.js", "/page/config.json"):
        r = httpx.get(page_server + path)
        assert r.status_code == 200, path
    assert httpx.head(page_server + "/").status_code == 200
    assert "default-src 'self'" in httpx.get(page_server + "/").headers["content-security-policy"]
    config = httpx.get(page_server + "/page/config.json").json()
    assert config["api_keys"] is True and config["max_bytes"] == MAX_BYTES
    assert config["routes"]["/detect"] == ["faces", "image"]
    assert httpx.post(page_server + "/", files={"image": ("a.png", b"x")}).status_code == 401
    assert httpx.post(page_server + "/detect", files={"image": ("a.png", b"x")}).status_code == 401
    assert httpx.get(page_server + "/docs.json").status_code == 401
    for sneaky in ("/page/..%2fservice.py", "/page/%2e%2e/%2e%2e/service/service.py"):
        assert httpx.get(page_server + sneaky).status_code in (401, 404), sneaky


def test_page_is_self_contained(page, page_server):
    # nothing in the page points outside this server (the SVG namespace is a name, not a fetch)
    for f in STATIC.iterdir():
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+", f.read_text())) - {"http://www.w3.org"}
        assert not urls, (f.name, urls)
    # and loading it fetches only from this server
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert requested and all(u.startswith(page_server) or u.startswith(("data:", "blob:")) for u in requested)


def evidence_answer(api: dict) -> dict:
    """A real /detect answer plus what the evidence work adds, in the shapes of models/evidence/provenance.py
    and models/evidence/faces.py (face mode: `faces` is {faces, face_found, max_face})."""
    return {
        **api,
        "label": "synthetic", "reason": "declared", "family": "unknown", "family_score": 0.41,
        "provenance": {"declared_ai": True, "declared_by": ["png text 'parameters' (Stable Diffusion web UI)"],
                       "c2pa": {"status": "absent"}, "exif": {"software": "test"}, "warnings": []},
        "faces": {"faces": [{"box": [8, 6, 24, 20], "confidence": 0.93, "score": 0.71, "label": "synthetic",
                             "family": "unknown", "family_score": 0.41}],
                  "face_found": True, "max_face": 0},
    }


def video_answer(api: dict) -> dict:
    """A /detect_video answer in models/evidence/video.py's shape (summarize_video) around a real answer's rule."""
    timeline = [{"index": i * 12, "time_s": i / 2, "keyframe": i == 0, "score": s, "label": lab}
                for i, (s, lab) in enumerate([(0.2, "real"), (0.5, "uncertain"), (0.9, "synthetic")])]
    return {"label": "uncertain", "score": 0.5333, "family": "beta", "family_score": 0.7,
            "aggregate": "mean", "mean": 0.5333, "max": 0.9,
            "share_flagged": 1 / 3, "frames_scored": 3, "reason": "model",
            "video": {"container": "mp4", "codec": "h264", "width": 64, "height": 48, "duration_s": 1.5, "fps": 24.0},
            "timeline": timeline, "threshold": api["threshold"], "uncertain_band": api["uncertain_band"],
            "model": api["model"], "provenance": {"declared_ai": False, "declared_by": [], "warnings": [],
                                                  "note": "absence of provenance metadata is not evidence"}}


def test_evidence_is_drawn_when_the_answer_has_it(page, files, page_server):
    config = httpx.get(page_server + "/page/config.json").json()
    config["routes"].update({"/detect": ["faces", "image"], "/explain": ["grid", "image", "overlay"],
                             "/detect_video": ["aggregate", "faces", "frames", "keyframes", "per_second", "video"]})
    real = httpx.post(page_server + "/detect", headers={"Authorization": f"Bearer {KEY}"},
                      files={"image": ("noise.png", files["noise.png"].read_bytes())}).json()
    heat = {"values": [[0.5, None], [-0.25, 1.0]], "rows": 2, "cols": 2, "origin": [16, 8], "cell_px": 16,
            "image_size": [64, 48], "base_logit": 0.1}
    page.route("**/page/config.json", lambda route: route.fulfill(json=config))
    page.route("**/detect", lambda route: route.fulfill(json=evidence_answer(real)))
    page.route("**/explain", lambda route: route.fulfill(json={**real, "heatmap": heat}))
    page.route("**/detect_video", lambda route: route.fulfill(json=video_answer(real)))
    record_form_fields(page)
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    use_key(page)
    page.get_by_label(re.compile("Face mode")).check()
    page.set_input_files("#file-input", [str(files["noise.png"]), str(files["clip.mp4"])])
    settle(page, 2)

    c = card(page, "noise.png")
    assert "declares itself AI-generated" in c.locator(".verdict-text").inner_text()
    assert "declares itself AI-generated" in c.locator(".provenance").inner_text()
    assert c.locator(".face-box").count() == 1
    assert c.locator(".face-box").evaluate("e => [e.style.left, e.style.width]") == ["12.5%", "37.5%"]
    assert "Face 1: score 0.710 (synthetic), family unknown" in c.locator(".face-list").inner_text()
    family = c.locator("dd.family")
    assert family.inner_text().startswith("unknown (0.410): Looks synthetic, but like none of the generator")
    assert "none of the generator families" in family.get_attribute("title")
    c.get_by_label(re.compile("Show heatmap")).check()
    overlay = c.locator("canvas.overlay.heat")
    overlay.wait_for()
    assert overlay.evaluate("e => [e.width, e.height, e.style.left, e.style.width]") == [2, 2, "25%", "50%"]
    c.get_by_label(re.compile("Show heatmap")).uncheck()
    assert overlay.count() == 0

    v = card(page, "clip.mp4")
    assert v.locator(".badge").inner_text() == "Uncertain"
    assert v.locator(".timeline rect.bar").count() == 3
    assert v.locator(".timeline tbody tr").count() == 3
    assert "3 frames scored; 1 flagged synthetic" in v.locator(".timeline svg").get_attribute("aria-label")
    assert "3 scored: mean 0.533, max 0.900, 33% of frames flagged; verdict on the mean" in v.inner_text()
    assert "not evidence" in v.locator(".provenance").inner_text()
    assert v.locator("dd.family").inner_text() == "beta (0.700)"

    sent = page.evaluate("window.sentFields")
    assert sorted(sent) == [["/detect", ["image", "faces"]], ["/detect_video", ["video", "faces"]],
                            ["/explain", ["image", "overlay"]]]


def test_drop_and_paste(page, files):
    use_key(page)
    data = list(files["photo.jpg"].read_bytes())
    transfer = page.evaluate_handle("""bytes => {
        const t = new DataTransfer();
        t.items.add(new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"}));
        return t;
    }""", data)
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    assert "over" in page.locator("#drop").get_attribute("class")  # the drop zone lights up
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    settle(page, 1)
    assert card(page, "dropped.jpg").locator(".badge").inner_text() in TITLES.values()
    page.evaluate("""bytes => {
        const t = new DataTransfer();
        t.items.add(new File([new Uint8Array(bytes)], "pasted.jpg", {type: "image/jpeg"}));
        window.dispatchEvent(new ClipboardEvent("paste", {clipboardData: t}));
    }""", data)
    settle(page, 2)
    assert card(page, "pasted.jpg").locator("dd.score").inner_text() == \
        card(page, "dropped.jpg").locator("dd.score").inner_text()


def open_chooser_with_space(page, tries: int = 3):
    """Space on the focused file input opens the chooser. Under a loaded CI machine Chromium once
    dropped the first press (30 s with no chooser while the input kept focus), so a press that opens
    nothing within 10 s is repeated, as a user would; the focus must still be on the input."""
    for _ in range(tries):
        assert page.evaluate("document.activeElement.id") == "file-input"
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Space")
            return chooser.value
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"Space on the focused file input opened no file chooser in {tries} tries")


def test_keyboard_only(page, files):
    use_key(page)
    page.evaluate("document.activeElement.blur()")
    focused = []
    for _ in range(6):  # skip link, key field, file chooser
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        if focused[-1] == "file-input":
            break
    assert focused[-1] == "file-input", focused
    open_chooser_with_space(page).set_files([str(files["noise.png"]), str(files["photo.jpg"])])
    settle(page, 2)
    page.get_by_role("button", name="Download CSV").focus()
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert len(Path(download.value.path()).read_text().strip().splitlines()) == 3
    assert page.locator("#status").get_attribute("aria-live") == "polite"
    assert page.locator("#status").inner_text() == "All 2 files checked."


def test_phone_width(phone, files):
    use_key(phone)
    phone.set_input_files("#file-input", [str(files["noise.png"]), str(files["notes.jpg"])])
    settle(phone, 2)
    width = phone.evaluate("window.innerWidth")
    assert phone.evaluate("document.documentElement.scrollWidth") <= width  # no sideways page scroll
    for box in phone.locator("article.card").all():
        b = box.bounding_box()
        assert b["x"] >= 0 and b["x"] + b["width"] <= width
    assert phone.locator("label.button").bounding_box()["height"] >= 44  # a thumb-sized target
