"""What a detector is: its config, preprocessing, network, checkpoint format and verdict rule.

`config` (DetectorConfig), `preprocess` (decode, views, normalisation, the scale policy),
`network`, `backbones`, `clip_weights` and `lora` (the timm model and its pretrained weights),
`checkpoint` (the model folder), `verdict` (the one verdict rule), `metrics` and `drift` (numpy
statistics of scores), `dataset` (labelled sample lists), `default_model` (where the shipped
detector lives and what it is) and `atomic` (crash-safe writes, file hashes). The bottom room:
it imports no other part of `models` (nor `training` or `service`), so training, export, the
service and the scorer all build on the same definitions.
"""
