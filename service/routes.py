"""The guard's route table, derived from the BentoML service's own API methods.

    routes = api_routes(Detector)   # {"/detect": Route(...), "/detect_batch": Route(...)}

Every `@bentoml.api` of the public service becomes a Route: its path and its input fields,
split into file fields (multipart uploads, one file or a list) and plain fields. The guard
checks every route in this table, so a new endpoint gets the key, admission and body checks
without anyone remembering to list it; an endpoint whose inputs the guard cannot check
fails at import instead of being served unchecked.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

# Paths that never need a key (probes and scrapes); everything else does when keys are set.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
# BentoML's own pages: the OpenAPI document (rewritten by the guard) and its viewer.
SYSTEM_PATHS = frozenset({"/docs.json", "/docs", "/"})


@dataclass(frozen=True)
class Route:
    path: str
    files: dict[str, bool]  # file field -> takes a list of files (True) or exactly one (False)
    fields: tuple[str, ...] = ()  # other form fields, passed on as text

    @property
    def max_files(self) -> int | None:
        """1 when every file field takes one file; None: a list field (capped by settings)."""
        return None if any(self.files.values()) else len(self.files)

    def example(self, base: str = "URL") -> str:
        return " ".join(f"-F {f}=@photo.jpg" for f in self.files) + f" {base}{self.path}"


def _is_file(annotation) -> tuple[bool, bool]:
    """(is a file field, takes a list) for a pydantic field annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is Path:
        return True, False
    if typing.get_origin(annotation) is list:
        inner = typing.get_args(annotation)[0]
        return _is_file(inner)[0], True
    return False, False


def api_routes(service) -> dict[str, Route]:
    """{path: Route} for every API method of a BentoML service class."""
    routes = {}
    for name, api in service.apis.items():
        files, fields = {}, []
        for field, info in api.input_spec.model_fields.items():
            is_file, many = _is_file(info.annotation)
            if is_file:
                files[field] = many
            else:
                fields.append(field)
        if not files:
            raise TypeError(
                f"API {name!r} ({api.route}) takes no file upload; the upload guard (service/guard.py) only "
                "knows multipart endpoints: teach it this one before serving it"
            )
        routes[api.route] = Route(api.route, files, tuple(fields))
    return routes
