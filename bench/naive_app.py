"""Naive serving baseline for bench/serve_load.py: one FastAPI endpoint, eager PyTorch per request.

    NAIVE_MODEL=/path/to/model_folder uvicorn bench.naive_app:app --host 127.0.0.1 --port 3100

No batching, no admission control: each request decodes and runs the model alone in
FastAPI's thread pool. It exists only to be measured against the BentoML service.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, File, HTTPException, UploadFile

from models.core.preprocess import ImageError, decode_image
from models.runtime.loader import load_detector

detector = load_detector(os.environ["NAIVE_MODEL"], "eager", "cpu")
app = FastAPI()


@app.post("/detect")
def detect(image: UploadFile = File(...)) -> dict:
    try:
        img, _ = decode_image(image.file.read())
    except ImageError as e:
        raise HTTPException(status_code=400, detail=str(e)) from None
    score = float(detector.probabilities([img])[0])
    return {"score": score, "label": "synthetic" if score >= detector.config.threshold else "real"}
