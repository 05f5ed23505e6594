"""Adaptive batching that comes back to idle latency after a burst (issue 19, 5.4).

BentoML's dispatcher (bentoml/_internal/marshal/dispatcher.py) holds a lone request back while
`n * (its wait + a) <= optimizer.wait * 0.95`, where `optimizer.wait` is the mean time the last
50 batches waited between arriving and being sent. Under a burst most of that wait is spent
queued behind the busy model (the dispatcher's semaphore), not choosing a batch; so after 60 s of
32 clients `wait` is seconds, every later lone request is held back almost that long, and each
such request logs a wait nearly as long as the mean: the window decays by about 5% per 50
requests, so an idle /detect stayed 3-30x slower for minutes.

The window exists to gather a batch. With one model process, requests that arrive while the
model is busy queue anyway and leave together as one batch when it is free, so a window is never
needed to batch under load; when the model is idle, a window longer than the time the model
spends on one more image (`o_a`) only adds latency. `install()` caps the learned window at `o_a`
after each refresh of BentoML's estimates. Call it at import in the model's process.
"""

from __future__ import annotations


def capped_refresh(refresh):
    def trigger_refresh(self) -> None:
        refresh(self)
        self.wait = min(self.wait, self.o_a)  # never hold a lone request longer than one image's model time

    trigger_refresh.capped = True
    trigger_refresh.__wrapped__ = refresh  # BentoML's own, for the test that shows the hold-back
    return trigger_refresh


def install() -> None:
    from bentoml._internal.marshal.dispatcher import Optimizer

    if not getattr(Optimizer.trigger_refresh, "capped", False):
        Optimizer.trigger_refresh = capped_refresh(Optimizer.trigger_refresh)
