"""How a detector runs: backends, the runtime detector, input preparation, export, int8 and the store.

From the bottom up: `metadata` (an export's facts and file names), `backends` (every runtime
and the SPECS table), `prepare` and `jpeg_decode` (bytes -> model views), `store` (BentoML
model store), `parity`, `detector` (the `Detector` and opening a folder or tag), `export` and
`quantize` (write and verify artifacts with that `Detector`), `loader` (`load_detector`, which
also resolves "default" by ensuring its export) and `cli` (`fakelens export|quantize|models`).
It may import `models.core` and `models.evidence`; nothing below imports it. Within it each
module imports only modules listed before it (checked by the "models.runtime" layers contract).
"""
