"""Real media files made at test time: C2PA-signed JPEGs (throwaway certificate chain),
generator metadata (PNG `parameters`, XMP DigitalSourceType, EXIF Software) and short videos."""

from __future__ import annotations

import contextlib
import datetime
import io
import subprocess

import numpy as np
from PIL import Image, PngImagePlugin

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def jpeg_bytes(size=(64, 48), seed: int = 0, **save) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def cert_chain() -> tuple[bytes, bytes]:
    """(end-entity + CA certificate PEM chain, end-entity private key PEM): ES256, valid a day around now."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fakelens test")])

    def usage(sign: bool):
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not sign,
                             crl_sign=not sign, encipher_only=False, decipher_only=False)

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def builder(subject, issuer, public):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1)))

    ca = (builder(name("test root"), name("test root"), ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    ee = (builder(name("test signer"), ca.subject, key.public_key())
          .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
          .add_extension(usage(True), critical=True)
          .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
          .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain = ee.public_bytes(pem) + ca.public_bytes(pem)
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return chain, private


def root_pem(chain: tuple[bytes, bytes]) -> str:
    """The CA certificate of a `cert_chain()` (what a verifier would configure as a trust anchor)."""
    end = b"-----END CERTIFICATE-----"
    return (chain[0].split(end)[1].lstrip() + end + b"\n").decode()


def c2pa_signed_jpeg(source_type: str = "trainedAlgorithmicMedia", remote_url: str | None = None,
                     chain: tuple[bytes, bytes] | None = None, fmt: str = "jpeg") -> bytes:
    """A JPEG (or `fmt` png/webp) with a C2PA manifest (c2pa Builder) whose c2pa.created action
    declares `source_type`."""
    import c2pa

    chain, private = chain or cert_chain()
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, private, None))
    manifest = {
        "claim_generator_info": [{"name": "fakelens-test", "version": "1"}],
        "title": f"test.{fmt}",
        "format": f"image/{fmt}",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]}}],
    }
    out = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        if remote_url:
            builder.set_no_embed()
            builder.set_remote_url(remote_url)
        builder.sign(signer, f"image/{fmt}", io.BytesIO(_encoded(jpeg_bytes(seed=3), fmt)), out)
    return out.getvalue()


def _encoded(jpeg: bytes, fmt: str) -> bytes:
    if fmt == "jpeg":
        return jpeg
    buf = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(buf, fmt.upper())
    return buf.getvalue()


def tampered(data: bytes) -> bytes:
    """The same file with two bytes of the compressed image data flipped (the manifest is untouched)."""
    out = bytearray(data)
    out[-200] ^= 0xFF
    out[-300] ^= 0xFF
    return bytes(out)


def png_with_text(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 120, 150)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def jpeg_with_xmp(source_type: str) -> bytes:
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'Iptc4xmpExt:DigitalSourceType="{IPTC}{source_type}"/></rdf:RDF></x:xmpmeta>'
    )
    return jpeg_bytes(xmp=xmp.encode())


def jpeg_with_exif(**tags: str) -> bytes:
    exif = Image.Exif()
    ids = {"software": 0x0131, "make": 0x010F, "model": 0x0110}
    for key, value in tags.items():
        exif[ids[key]] = value
    return jpeg_bytes(exif=exif.tobytes())


def encode_video(n: int = 48, fps: int = 24, size=(64, 48), fmt: str = "mp4", codec: str = "libx264",
                 gop: int = 12) -> bytes:
    """A short clip whose frame i is a flat grey of level 5*i, encoded with PyAV."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(n):
            frame = np.full((size[1], size[0], 3), (i * 5) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def astronaut() -> Image.Image:
    """scikit-image's bundled photo of Eileen Collins (public domain, one frontal face, 512 x 512)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


@contextlib.contextmanager
def tmpfs(mount, options: str = "size=1m"):
    """A small tmpfs mounted at `mount` for the test's duration (a real full disk, or a read-only
    file system, without touching the machine's); skips where mounting needs rights we lack."""
    import pytest

    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs ({options}) here (needs root with CAP_SYS_ADMIN): {e}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)
