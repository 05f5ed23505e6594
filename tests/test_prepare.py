"""models.runtime.prepare: the one bytes -> views path of the service and the scorer, and the guard's route table."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.core.preprocess import ImageError, decode_image, eval_pixels
from models.runtime.prepare import Limits, prepare
from tests.conftest import tiny_config


def png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_prepare_cuts_the_configured_views():
    cfg = tiny_config(img_size=32, views="tiles", max_tiles=4)
    data = png_bytes(90, 70)
    item = prepare(data, cfg)
    # uint8 pixel views (normalised next to the model: tests/test_foundation.py checks that step)
    np.testing.assert_array_equal(item.views, eval_pixels(decode_image(data)[0], cfg.preprocess))
    assert item.views.shape == (4, 32, 32, 3) and item.views.dtype == np.uint8
    assert (item.facts.width, item.facts.height) == (90, 70)


@pytest.mark.parametrize("limits,kind", [(Limits(max_bytes=100), "too_large"), (Limits(max_pixels=1000), "too_many_pixels")])
def test_prepare_enforces_its_limits(limits, kind):
    with pytest.raises(ImageError) as e:
        prepare(png_bytes(40, 40), tiny_config(), limits)
    assert e.value.kind == kind


def test_route_table_follows_the_service_apis():
    from service.routes import Route, api_routes

    class Api:
        def __init__(self, route, **fields):
            from pydantic import create_model

            self.route = route
            self.input_spec = create_model("Input", **{k: (v, ...) for k, v in fields.items()})

    class Service:
        apis = {"detect": Api("/detect", image=Path), "many": Api("/many", images=list[Path], note=str)}

    routes = api_routes(Service)
    assert routes["/detect"] == Route("/detect", {"image": False})
    assert routes["/many"] == Route("/many", {"images": True}, ("note",))

    class Unguardable:
        apis = {"text": Api("/text", prompt=str)}

    with pytest.raises(TypeError, match="/text.*guard"):
        api_routes(Unguardable)
