"""fakelens.models: what every consumer shares, in three rooms and a front door.

- `models.core`: what a detector is (config, preprocessing, network, checkpoint, verdict, metrics,
  datasets, drift statistics, the shipped detector's facts). Imports no other room.
- `models.evidence`: what else a file tells (provenance, faces, occlusion heatmaps, video frames).
  Imports only `models.core`.
- `models.runtime`: how a detector runs (backends, the runtime `Detector`, the request path from
  bytes to views, export, parity, int8, the model store, and the `fakelens export|quantize|models`
  subcommands). Imports `models.core` and `models.evidence`.
- `models.commands`: the `fakelens` dispatcher; it finds every package's subcommands through entry
  points and imports no room.
- `models/default/`: the shipped detector's files (package data).

The order is checked by import-linter (the `layers` contracts in pyproject.toml). This package
imports neither `training` nor `service`.
"""
