"""After a burst, BentoML's batcher must not hold a lone request back (issue 19, 5.4; service/batching.py).

Drives BentoML's own Optimizer with what a burst leaves in it and applies the dispatcher's own rule
for holding back one queued request (bentoml/_internal/marshal/dispatcher.py, CorkDispatcher.controller)."""

from __future__ import annotations

from bentoml._internal.marshal.dispatcher import CorkDispatcher, Optimizer

from service.batching import install


def holds_back(opt: Optimizer, waited_s: float = 0.0, n: int = 1) -> bool:
    """CorkDispatcher.controller: keep waiting while n * (wn + dt + a) <= wait * 0.95."""
    return n * (waited_s + CorkDispatcher.TICKET_INTERVAL + opt.o_a) <= opt.wait * 0.95


def after_a_burst() -> Optimizer:
    """32 clients on a model taking 10 ms + 4 ms per image: batches of 32 waited ~1.5 s in the queue."""
    opt = Optimizer(max_latency=10.0)
    for i in range(60):
        n = 32 - i % 3
        opt.log_outbound(n=n, wait=1.5, duration=0.010 + 0.004 * n)
    return opt


def test_a_burst_leaves_bentomls_own_window_holding_lone_requests_back():
    opt = after_a_burst()
    bentomls_own = getattr(Optimizer.trigger_refresh, "__wrapped__", Optimizer.trigger_refresh)
    bentomls_own(opt)
    assert holds_back(opt, waited_s=1.0)  # an idle request waits over a second for a batch that never comes


def test_the_capped_window_sends_a_lone_request_at_once_and_keeps_the_fit():
    install()
    opt = after_a_burst()
    opt.trigger_refresh()
    assert not holds_back(opt)
    assert abs(opt.o_a - 0.004) < 1e-6 and abs(opt.o_b - 0.010) < 1e-6  # the latency model itself is untouched
    install()  # idempotent: a second import of the service does not wrap twice
    assert Optimizer.trigger_refresh.__wrapped__.__name__ == "trigger_refresh"
    assert not hasattr(Optimizer.trigger_refresh.__wrapped__, "__wrapped__")
