"""Cross-request batching: several requests' searches run in lockstep on one engine.

A search is plain sequential code that calls ``engine.prefill`` and ``engine.decode``. To batch
across requests without rewriting every search as a state machine, each search runs in its own
thread against an ``EngineView``, but only one thread runs at a time (a baton passed by
semaphores): a search runs until it asks the engine for a decode, then parks. When every live
search is parked, the scheduler runs all their decodes as one ``DecodingEngine.decode_many``
batch, hands each search its own rows, and wakes them one by one in slot order. A finished
search frees its slot for the next request. Because exactly one thread runs at any moment, no
other code needs locks (tokenizers, BO and the model are never used concurrently), and the
schedule, hence every result, is a deterministic function of the request order and the number
of slots.

If a merged batch raises, its calls are retried one at a time, so one bad request gets its own
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
        workers = [w for w in live if w is not None]
        replies = dict(zip(workers, _decode_all(engine, [w.call for w in workers])))
        for slot, worker in enumerate(live):
            if worker is None:
                continue
            worker.reply = replies[worker]
            worker.step()
            if worker.finished:
                _retire(worker, on_done)
                refill(slot)


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
