"""Bounded label cardinality for BentoML's HTTP metrics.

BentoML's traffic-metrics middleware labels every request series with the raw request
path, so each random path a client tries (even one answered 401 or 404) becomes new
series: 5,000 random paths grew /metrics from 93 KB to 22 MB. `bound_endpoint_labels`
swaps in a subclass that labels any path outside the known set as "/other" while the
request itself still goes on with its real path.

NOTE: this reaches into `bentoml._internal` (pinned `bentoml<1.5`); BentoML offers no
setting for it. tests/test_service_hardening.py fails if an upgrade undoes it.
"""

from __future__ import annotations

from collections.abc import Iterable

OTHER = "/other"
_REAL_SCOPE = "fakelens.real_scope"


def bound_endpoint_labels(known_paths: Iterable[str]) -> None:
    """Patch, once per process and before BentoML builds its app, the class it instantiates."""
    from bentoml._internal.server.http import instruments

    base = instruments.RunnerTrafficMetricsMiddleware
    known = frozenset(known_paths)
    if getattr(base, "fakelens_known", None) is not None:
        base.fakelens_known = known
        return

    class BoundedTrafficMetrics(base):
        fakelens_known = known

        def __init__(self, app, **options) -> None:
            async def with_real_path(scope, receive, send):
                await app(scope.get(_REAL_SCOPE, scope), receive, send)

            super().__init__(with_real_path, **options)

        async def __call__(self, scope, receive, send) -> None:
            if scope["type"].startswith("http") and scope["path"] not in self.fakelens_known:
                scope = {**scope, "path": OTHER, _REAL_SCOPE: scope}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = BoundedTrafficMetrics
