"""Cross-request batching: several requests' searches run in lockstep on one engine.

A search is plain sequential code that calls ``engine.prefill`` and ``engine.decode``. To batch
across requests without rewriting every search as a state machine, each search runs in its own
thread against an ``EngineView``, but only one thread runs at a time (a baton passed by
semaphores): a search runs until it asks the engine for a decode, then parks. The scheduler
admits every parked call into the engine's running batch (``engine.open_batch()``) and steps
it; a call whose rows have all ended is handed back to its search at once, which runs on to its
next decode (admitted at the next step) while the other calls keep decoding: continuous
batching, so no search waits for another's longest row. An engine without a running batch
(vLLM, which batches in its own scheduler) gets ``WholeBatch``: all parked calls decoded
together to the end. A finished search frees its slot for the next request. Because exactly one
thread runs at any moment, no other code needs locks (tokenizers, BO and the model are never
used concurrently), and the schedule, hence every result, is a deterministic function of the
request order and the number of slots.

If a batched pass raises, its calls are retried one at a time, so one bad request gets its own
exception (and falls back) while the others continue.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from .engine import Candidate, DecodeCall, DecodingEngine, EngineStats, Prefix
from .search.problem import Engine, protocol_members


class EngineView:
    """One search's handle on the shared engine: an ``Engine`` (search/problem.py) whose
    ``decode`` goes through the scheduler, whose ``prefill`` runs at once, and whose ``stats``
    count this search's own cost; every other member of the protocol is the engine's own."""

    _SHARED = protocol_members(Engine) - {"decode", "prefill", "stats"}

    def __init__(self, engine: DecodingEngine, worker: "_Worker") -> None:
        self._engine, self._worker = engine, worker
        self.stats = EngineStats()

    def __getattr__(self, name: str) -> Any:
        if name in EngineView._SHARED:
            return getattr(self._engine, name)
        raise AttributeError(f"EngineView has no {name!r}: a search sees the Engine protocol "
                             f"only ({', '.join(sorted(protocol_members(Engine)))})")

    def prefill(self, prompt_ids: list[int]) -> Prefix:
        # runs here, at once: this thread holds the baton, so nothing else uses the model
        before = self._engine.stats.copy()
        prefix = self._engine.prefill(prompt_ids)
        self.stats.add(self._engine.stats.since(before))
        return prefix

    def decode(self, prefix: Prefix, soft_embeds=None, **kwargs: Any) -> list[Candidate]:
        return self._worker.park(DecodeCall(prefix, soft_embeds, stats=self.stats, **kwargs))


# The shared members as class properties too: Python >= 3.12 checks a runtime Protocol with
# inspect.getattr_static, which never calls __getattr__ (isinstance(view, Engine) was False).
for _name in EngineView._SHARED:
    setattr(EngineView, _name, property(lambda self, _n=_name: getattr(self._engine, _n)))
del _name


class _Worker(threading.Thread):
    """Runs one search; parks at each decode until the scheduler has its rows."""

    def __init__(self, index: int, fn: Callable[[EngineView], Any], engine: DecodingEngine):
        super().__init__(daemon=True, name=f"softreason-search-{index}")
        self.index, self.fn = index, fn
        self.view = EngineView(engine, self)
        self._resume = threading.Semaphore(0)
        self._parked = threading.Semaphore(0)
        self.call: DecodeCall | None = None
        self.reply: list[Candidate] | BaseException | None = None
        self.output: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def run(self) -> None:
        self._resume.acquire()
        try:
            self.output = self.fn(self.view)
        except BaseException as exc:  # handed to the scheduler's thread, re-raised there
            self.error = exc
        self.finished = True
        self._parked.release()

    def park(self, call: DecodeCall) -> list[Candidate]:
        """(worker thread) Queue ``call``, give the baton back, wait for the rows."""
        self.call = call
        self._parked.release()
        self._resume.acquire()
        reply, self.reply, self.call = self.reply, None, None
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def step(self) -> None:
        """(scheduler thread) Let the search run until its next decode or its end."""
        if not self.is_alive() and not self.finished:
            self.start()
        self._resume.release()
        self._parked.acquire()


def run_lockstep(
    engine: DecodingEngine,
    searches: Iterable[Callable[[EngineView], Any]],
    slots: int,
    on_done: Callable[[int, Any, EngineStats], None],
) -> None:
    """Run ``searches`` (each ``fn(engine_view) -> outcome``) with up to ``slots`` in flight.

    ``on_done(index, outcome, stats)`` is called in this thread as each search finishes (in
    finishing order), with the search's own engine cost. An exception escaping a search is
    re-raised here (searches are expected to catch their own).
    """
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    pending = iter(enumerate(searches))
    live: list[_Worker | None] = [None] * slots
    batch = open_batch(engine)
    queued: set[_Worker] = set()

    def refill(slot: int) -> None:
        # start searches in this slot until one parks (a search may finish without decoding)
        while True:
            nxt = next(pending, None)
            if nxt is None:
                live[slot] = None
                return
            worker = _Worker(nxt[0], nxt[1], engine)
            worker.step()
            if not worker.finished:
                live[slot] = worker
                return
            _retire(worker, on_done)

    for slot in range(slots):
        refill(slot)
    while any(live):
        for worker in live:  # slot order: the schedule is a function of the request order
            if worker is not None and worker not in queued:
                batch.admit(worker, worker.call)
                queued.add(worker)
        for worker, reply in batch.step():
            queued.discard(worker)
            worker.reply = reply
            worker.step()
            if worker.finished:
                slot = live.index(worker)
                _retire(worker, on_done)
                refill(slot)


def open_batch(engine: DecodingEngine) -> Any:
    """The engine's continuous batch (``engine.open_batch()``: calls join and leave at every
    step), or, for an engine without one (vLLM, whose own scheduler batches), ``WholeBatch``."""
    opener = getattr(engine, "open_batch", None)
    return opener() if opener is not None else WholeBatch(engine)


class WholeBatch:
    """The admit/step interface over ``decode_many``: a step decodes every admitted call
    together to the end and hands them all back."""

    def __init__(self, engine: DecodingEngine) -> None:
        self.engine = engine
        self.calls: list[tuple[Any, DecodeCall]] = []

    def admit(self, key: Any, call: DecodeCall) -> None:
        self.calls.append((key, call))

    def step(self) -> list[tuple[Any, list[Candidate] | BaseException]]:
        calls, self.calls = self.calls, []
        if not calls:
            return []
        return list(zip([k for k, _ in calls], _decode_all(self.engine, [c for _, c in calls])))


def _decode_all(engine: DecodingEngine, calls: list[DecodeCall]) -> list:
    """All parked calls in one batch; if that raises, each alone (its own rows or error)."""
    try:
        return engine.decode_many(calls)
    except Exception as exc:
        if len(calls) == 1:
            return [exc]
    return [_decode_alone(engine, call) for call in calls]


def _decode_alone(engine: DecodingEngine, call: DecodeCall) -> list[Candidate] | Exception:
    try:
        return engine.decode_many([call])[0]
    except Exception as exc:
        return exc


def _retire(worker: _Worker, on_done: Callable[[int, Any, EngineStats], None]) -> None:
    worker.join()
    if worker.error is not None:
        raise worker.error
    on_done(worker.index, worker.output, worker.view.stats)


def auto_slots(engine: DecodingEngine, rows: int, positions: int, cap: int | None = None) -> int:
    """How many searches fit in free memory (``batch_size=auto``).

    A search holds at most ``rows`` KV-cache rows of up to ``positions`` positions; counted
    twice (the copied prefix and the merged, padded batch), against half the free memory of
    the model's device. Capped at ``cap`` (default 64 on GPU, 8 on CPU, where decoding is
    compute-bound well before memory runs out).
    """
    import torch

    config = engine.model.config.get_text_config()
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_position = 2 * config.num_hidden_layers * kv_heads * head_dim * engine.model.dtype.itemsize
    per_search = 2 * rows * positions * per_position
    if engine.device.type == "cuda":
        free = torch.cuda.mem_get_info(engine.device)[0]
        default_cap = 64
    else:
        free = psutil.virtual_memory().available
        default_cap = 8
    return max(1, min(cap or default_cap, int(0.5 * free // per_search)))
