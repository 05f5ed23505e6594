#!/usr/bin/env bash
# Download, into .whl/, the py3.12 manylinux wheels that the lent GPU machine lacks for
# `fakelens serve` and `fakelens score` (BentoML, C2PA and the dependencies its image does not already hold; see
# /work/.library/device/KINDS.md, "Python packages already there"), and print their size.
#
#   bash bench/gpu_wheels.sh          # then run bench/gpu_check.sh there with `.whl` carried
#
# Versions are the ones this repository's venv runs (bentoml 1.4.40). No dependency
# resolution: each wheel is named (--no-deps), one version each, so the offline install
# there (`pip install --no-index --no-deps --target ...`) cannot meet a conflict.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  bentoml==1.4.40 a2wsgi==1.10.10 aiohttp-asgi-connector==1.2.0 aiosqlite==0.22.1 cattrs==23.1.2
  click-option-group==0.5.10 httpx-ws==0.9.0 kantoku==0.18.3 pyzmq tornado
  opentelemetry-api==1.45.1 opentelemetry-sdk==1.45.1 opentelemetry-semantic-conventions==0.66b1
  opentelemetry-instrumentation==0.66b1 opentelemetry-instrumentation-aiohttp-client==0.66b1
  opentelemetry-instrumentation-asgi==0.66b1 opentelemetry-util-http==0.66b1 asgiref==3.13.0
  importlib-metadata pip-requirements-parser==32.0.1 pydantic==2.14.4 pydantic-core==2.50.5
  annotated-types==0.8.0 typing-inspection==0.4.5 python-json-logger==4.2.0 python-multipart==0.0.34
  rich-toolkit==0.20.6 schema==0.7.8 simple-di==0.1.5 starlette==1.10.0 tomli-w==1.2.0 uvicorn==0.54.0
  watchfiles==1.3.0 wsproto==1.3.2
  # every upload and scored file reads its provenance (models/evidence/provenance.py: C2PA, imported per
  # call). Left out, imported only when used: av (video, ~40 MB with FFmpeg) and yuface (faces;
  # no cp312 wheel of 2023.5.1).
  c2pa-python==0.38.1 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 toml==0.10.2
)
PIP=${PIP:-/work/main/.venv/bin/python -m pip}
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 -d .whl "${WHEELS[@]}"
ls .whl/*.whl | wc -l | xargs echo "wheels:"
du -cb .whl/*.whl | tail -1 | awk '{printf "total: %.1f MiB (limit with the repo: 64 MiB per call)\n", $1 / 1048576}'
