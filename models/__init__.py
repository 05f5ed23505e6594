"""fakelens.models: what every consumer shares.

The detector config, preprocessing, network construction, checkpoint format and the
runtime loader live here. This package imports neither `training` nor `service`.
"""
