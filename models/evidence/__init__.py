"""What else a file tells beside the score: provenance, faces, where the evidence is, video frames.

`provenance` (C2PA manifests and generator metadata read from the bytes), `faces` (face crops
scored one by one, verdict = max), `explain` (occlusion relevance maps) and `video` (frame
sampling and the per-video summary). Pure logic over images, views and probabilities: it may
import `models.core` only, never `models.runtime` (a detector is passed in, not loaded here),
so the service, the scorer and the CLI combine evidence and runtime themselves (docs/evidence.md).
"""
