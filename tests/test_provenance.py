"""Provenance: C2PA manifests (signed here with a throwaway chain), XMP, EXIF and generator chunks."""

from __future__ import annotations

import json

import pytest

from models.core.config import DetectorConfig
from models.core.verdict import decide
from models.evidence.provenance import TRUST_ENV, read_provenance
from tests.media_helpers import (
    c2pa_signed_jpeg,
    cert_chain,
    jpeg_bytes,
    jpeg_with_exif,
    jpeg_with_xmp,
    png_with_text,
    root_pem,
    tampered,
)


@pytest.fixture(scope="module")
def signed():
    return c2pa_signed_jpeg("trainedAlgorithmicMedia")


def test_signed_manifest_declaring_ai_is_read_and_declared(signed):
    prov = read_provenance(signed)
    c2pa = prov["c2pa"]
    assert c2pa["present"] and c2pa["status"] == "untrusted_signer"  # a throwaway CA is on no trust list
    assert c2pa["validation_codes"] == ["signingCredential.untrusted"]
    assert c2pa["claim_generator"].startswith("fakelens-test")
    assert c2pa["signer"]["common_name"] == "test signer"
    assert {"action": "c2pa.created", "digital_source_type": "trainedAlgorithmicMedia"} in c2pa["actions"]
    assert prov["declared_ai"] and "trainedAlgorithmicMedia" in prov["declared_by"][0]
    assert prov["warnings"] == []
    json.dumps(prov)  # goes into JSON answers and score rows as is


def test_signer_under_a_configured_trust_anchor_is_trusted(monkeypatch, tmp_path):
    chain = cert_chain()
    signed = c2pa_signed_jpeg(chain=chain)
    anchors = tmp_path / "anchors.pem"
    anchors.write_text(root_pem(chain))
    monkeypatch.setenv(TRUST_ENV, str(anchors))
    prov = read_provenance(signed)
    assert prov["c2pa"]["status"] == "trusted" and prov["c2pa"]["validation_codes"] == []
    assert prov["declared_ai"] and "(trusted)" in prov["declared_by"][0]
    assert read_provenance(c2pa_signed_jpeg())["c2pa"]["status"] == "untrusted_signer"  # another CA
    monkeypatch.setenv(TRUST_ENV, str(tmp_path / "missing.pem"))
    with pytest.raises(ValueError, match="trust anchors"):
        read_provenance(signed)


def test_tampered_manifest_is_invalid_loudly_and_declares_nothing(signed):
    prov = read_provenance(tampered(signed))
    assert prov["c2pa"]["status"] == "invalid"
    assert "assertion.dataHash.mismatch" in prov["c2pa"]["validation_codes"]
    assert prov["warnings"] and "INVALID" in prov["warnings"][0]
    assert not prov["declared_ai"]


def test_manifest_of_a_camera_capture_is_not_a_declaration():
    prov = read_provenance(c2pa_signed_jpeg("digitalCapture"))
    assert prov["c2pa"]["actions"][0]["digital_source_type"] == "digitalCapture"
    assert not prov["declared_ai"] and "note" in prov


def test_remote_manifest_is_reported_not_fetched():
    prov = read_provenance(c2pa_signed_jpeg(remote_url="http://127.0.0.1:9/manifest.c2pa"))
    assert prov["c2pa"]["status"] == "remote_not_fetched"
    assert "127.0.0.1:9" in prov["c2pa"]["remote_url"]


@pytest.mark.parametrize("chunks, tool", [
    ({"parameters": "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"}, "Stable Diffusion web UI"),
    ({"prompt": '{"3": {"class_type": "KSampler"}}', "workflow": "{}"}, "ComfyUI"),
])
def test_generator_text_chunks_declare_ai(chunks, tool):
    prov = read_provenance(png_with_text(**chunks))
    assert prov["declared_ai"] and tool in prov["declared_by"][0]
    assert prov["generator_chunks"] == sorted(chunks)


def test_xmp_digital_source_type():
    prov = read_provenance(jpeg_with_xmp("compositeWithTrainedAlgorithmicMedia"))
    assert prov["xmp_digital_source_type"] == "compositeWithTrainedAlgorithmicMedia" and prov["declared_ai"]
    prov = read_provenance(jpeg_with_xmp("digitalCapture"))
    assert prov["xmp_digital_source_type"] == "digitalCapture" and not prov["declared_ai"]


def test_exif_software_make_model():
    prov = read_provenance(jpeg_with_exif(software="Adobe Firefly 3"))
    assert prov["exif"]["software"] == "Adobe Firefly 3" and prov["declared_ai"]
    prov = read_provenance(jpeg_with_exif(make="Canon", model="EOS R5", software="GIMP 2.10"))
    assert prov["exif"] == {"make": "Canon", "model": "EOS R5", "software": "GIMP 2.10"}
    assert not prov["declared_ai"]


def test_plain_file_says_absence_proves_nothing():
    prov = read_provenance(jpeg_bytes())
    assert prov["c2pa"] == {"present": False} and not prov["declared_ai"]
    assert "not evidence of authenticity" in prov["note"]


def test_decide_declared_overrides_the_model_but_never_makes_real():
    cfg = DetectorConfig(threshold=0.5)
    declared = {"declared_ai": True}
    assert decide(0.01, cfg, declared) == ("synthetic", "declared")
    assert decide(0.99, cfg, {"declared_ai": False}) == ("synthetic", "model")
    assert decide(0.01, cfg, {"declared_ai": False}) == ("real", "model")
    assert decide(None, cfg, declared) == ("synthetic", "declared")
    with pytest.raises(ValueError):
        decide(None, cfg, None)


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_manifests_in_png_and_webp_are_read(fmt):
    prov = read_provenance(c2pa_signed_jpeg(fmt=fmt))
    assert prov["c2pa"]["status"] == "untrusted_signer" and prov["declared_ai"] is True


def test_files_without_c2pa_markers_never_open_the_reader(monkeypatch):
    import c2pa

    def no_reader(*args, **kwargs):
        raise AssertionError("c2pa.Reader opened for a file without C2PA data")

    plain = jpeg_bytes()
    monkeypatch.setattr(c2pa, "Reader", no_reader)
    assert read_provenance(plain)["c2pa"] == {"present": False}
    # a file carrying the markers still goes to the reader
    with pytest.raises(AssertionError, match="Reader opened"):
        read_provenance(plain + b"jumb c2pa")

