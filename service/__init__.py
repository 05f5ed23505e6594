"""fakelens.service: the BentoML HTTP service, offline batch scoring, and the `fakelens` CLI."""
