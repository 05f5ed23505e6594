"""The guard's route table, derived from the BentoML service's own API methods.

    routes = api_routes(Detector)   # {"/detect": Route(...), "/detect_batch": Route(...)}

Every `@bentoml.api` of the public service becomes a Route: its path and its input fields,
split into file fields (multipart uploads, one file or a list) and plain fields. The guard
checks every route in this table, so a new endpoint gets the key, admission and body checks
without anyone remembering to list it; an endpoint whose inputs the guard cannot check
fails at import instead of being served unchecked.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

# Paths that never need a key (probes and scrapes); everything else does when keys are set.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
# BentoML's own pages: the OpenAPI document (rewritten by the guard) and its viewer.
SYSTEM_PATHS = frozenset({"/docs.json", "/docs", "/"})


@dataclass(frozen=True)
class Option:
    """A text form field of an endpoint, checked by the guard as BentoML would check it, so a bad
    value gets our 400 (field, value, what it takes) instead of a logged pydantic traceback."""

    name: str
    adapter: typing.Any  # pydantic TypeAdapter of the field's type and constraints
    takes: str  # what it allows, in words: "an integer from 1 to 16"
    default: typing.Any

    def problem(self, text: str) -> str | None:
        """Why `text` (as sent in the form) is refused, or None when BentoML will accept it."""
        from pydantic import ValidationError

        try:
            value = json.loads(text)  # what BentoML does with each text part (so faces=true is a bool)
        except ValueError:
            value = text
        try:
            self.adapter.validate_python(value)
        except ValidationError:
            return (f"form field '{self.name}' is {text[:80]!r}; it takes {self.takes} "
                    f"(default {json.dumps(self.default)})")
        return None


@dataclass(frozen=True)
class Route:
    path: str
    files: dict[str, bool]  # file field -> takes a list of files (True) or exactly one (False)
    fields: tuple[str, ...] = ()  # other form fields, passed on as text
    options: dict[str, Option] = field(default_factory=dict, compare=False, repr=False)  # checks of `fields`

    @property
    def max_files(self) -> int | None:
        """1 when every file field takes one file; None: a list field (capped by settings)."""
        return None if any(self.files.values()) else len(self.files)

    def example(self, base: str = "URL") -> str:
        return " ".join(f"-F {f}=@{EXAMPLE_FILES.get(f, 'photo.jpg')}" for f in self.files) + f" {base}{self.path}"


EXAMPLE_FILES = {"video": "clip.mp4"}  # file fields that do not take a photo


def _takes(info) -> str:
    """A field's type and bounds in words, for the 400 that refuses a value."""
    kind = info.annotation
    if typing.get_origin(kind) is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(kind))
    if kind is bool:
        return "true or false"
    noun = {int: "an integer", float: "a number"}.get(kind, getattr(kind, "__name__", str(kind)))
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}  # annotated_types' Ge(ge=1), Le(le=16), ...
    bounds = {k: getattr(m, k) for m in info.metadata for k in signs if hasattr(m, k)}
    if {"ge", "le"} <= set(bounds):
        return f"{noun} from {bounds['ge']} to {bounds['le']}"
    return " ".join([noun, " and ".join(f"{signs[k]} {v}" for k, v in bounds.items())]).strip()


def _option(name: str, info) -> Option:
    from pydantic import TypeAdapter

    kind = typing.Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return Option(name, TypeAdapter(kind), _takes(info), info.default)


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
        files, fields, options = {}, [], {}
        for field_name, info in api.input_spec.model_fields.items():
            is_file, many = _is_file(info.annotation)
            if is_file:
                files[field_name] = many
            else:
                fields.append(field_name)
                options[field_name] = _option(field_name, info)
        if not files:
            raise TypeError(
                f"API {name!r} ({api.route}) takes no file upload; the upload guard (service/guard.py) only "
                "knows multipart endpoints: teach it this one before serving it"
            )
        routes[api.route] = Route(api.route, files, tuple(fields), options)
    return routes
