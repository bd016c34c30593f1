"""One model thread for the whole server, and micro-batching of concurrent Recommend calls.

Every model computation runs here, one at a time, with torch's intra-op threads set to the cores the
server was given: two requests never compete for the same cores (no oversubscription between worker
threads), and concurrent Recommend calls with the same parameters become one `recommend_batch`, whose
larger matmuls run faster per candidate than many small ones. Worker threads keep the I/O (feature
store reads, waiting here).

Threads per call (`parallel_min_flops`; the server's `parallel_min_mflop`): a call whose ranking is under it
(`Recommender.ranking_flops`: say one request with a narrow MLP) runs on one thread, where a second
would mostly wait at fork-join barriers while the event loop, the gRPC threads and other processes
want the core; larger calls (batches, wide MLPs) run on all `threads` (README, Speed: measured).

Gathering: the thread takes the oldest waiting call, then every call already waiting (up to
`max_batch`). It waits for more, at most `max_wait_s`, only while other calls are on their way (a
worker has announced one with `arriving()` and is still reading its user): a lone request at
concurrency 1 is computed at once and pays no wait.

Calls in one batch share a model and everything but the user and the time (`Key`); calls that differ
are computed in separate groups of the same round. An error in a group (say k out of range) is raised
to every call of that group, which share the parameters that caused it; other groups are unaffected.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from recsys.features import UserState
from recsys.recommender import Filters, FreshItems, Recommendation, Recommender
from serving.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
MODEL_STAGE = {"Recommend": "retrieval_and_ranking", "Rank": "ranking"}  # the model call's stage name


@dataclass(frozen=True)
class Key:
    """What the calls of one `recommend_batch` share."""

    model: Recommender  # compared by identity: a batch never mixes two versions during a hot swap
    k: int
    exclude_seen: bool
    depth: int | None
    allow: tuple[str, ...] | None
    deny: tuple[str, ...]
    unavailable: frozenset[str]  # the store's set; hashed once per set (frozensets cache their hash)
    fresh: int  # id() of the FreshItems (or 0)
    filters: Filters = field(compare=False)
    fresh_items: FreshItems | None = field(compare=False)


@dataclass
class Ticket:
    """An announced call (`ModelThread.arriving`)."""

    used: bool = False


@dataclass
class _Call:
    method: str  # for the stage metrics
    key: Hashable
    run: Callable[[Sequence[Any]], Sequence[Any]] | None  # batched: (payloads) -> results, same order
    payload: Any
    future: Future[Any]
    queued: float


class ModelThread:
    """`recommend(...)` and `call(fn)` block the calling worker until the model thread has run them."""

    def __init__(
        self,
        metrics: Metrics,
        max_batch: int = 16,
        max_wait_s: float = 0.001,
        threads: int | None = None,
        parallel_min_flops: float = 0.0,
    ) -> None:
        """`threads`: torch's intra-op threads for a large call (None: as the process has them when the
        thread starts); `parallel_min_flops`: calls ranking fewer FLOPs run on one thread (0 = never)."""
        if max_batch < 1 or max_wait_s < 0 or parallel_min_flops < 0:
            raise ValueError(
                f"max_batch={max_batch} must be >= 1, max_wait_s={max_wait_s} >= 0 and "
                f"parallel_min_flops={parallel_min_flops} >= 0"
            )
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.threads = threads or torch.get_num_threads()
        self.parallel_min_flops = parallel_min_flops
        self._metrics = metrics
        self._calls: deque[_Call] = deque()
        self._arriving = 0  # calls announced by workers and not yet submitted
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="recsys-model", daemon=True)
        self._thread.start()

    @contextmanager
    def arriving(self) -> Iterator[Ticket]:
        """Announce a call that this worker will submit soon (it is reading its user): the model thread
        may wait up to `max_wait_s` for it to join the batch being gathered. Submit inside the block,
        passing the ticket: the announcement ends as the call enters the queue, atomically."""
        ticket = Ticket()
        with self._cv:
            self._arriving += 1
        try:
            yield ticket
        finally:
            with self._cv:
                if not ticket.used:  # left without submitting (an error while reading the user)
                    ticket.used = True
                    self._arriving -= 1
                    self._cv.notify_all()

    def recommend(self, key: Key, user: UserState, now: float, ticket: Ticket | None = None) -> Recommendation:
        """`key.model.recommend_batch([user], ...)[0]`, computed in a batch with concurrent calls."""

        def run(payloads: Sequence[tuple[UserState, float]]) -> list[Recommendation]:
            return key.model.recommend_batch(
                [u for u, _ in payloads],
                key.k,
                key.exclude_seen,
                [t for _, t in payloads],
                key.depth,
                key.filters,
                key.fresh_items,
            )

        return self._submit(_Call("Recommend", key, run, (user, now), Future(), time.perf_counter()), ticket)

    def call(self, method: str, fn: Callable[[], T]) -> T:
        """`fn()` on the model thread, alone (Rank, and anything else that runs the model)."""
        return self._submit(_Call(method, object(), None, fn, Future(), time.perf_counter()))

    def close(self) -> None:
        """Stop after the calls already submitted; later calls raise RuntimeError."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    # -- internals -------------------------------------------------------------------------------

    def _submit(self, call: _Call, ticket: Ticket | None = None) -> Any:
        with self._cv:
            if ticket is not None and not ticket.used:
                ticket.used = True
                self._arriving -= 1
            if self._closed:
                raise RuntimeError("the model thread is closed (the server is stopping)")
            self._calls.append(call)
            self._cv.notify_all()
        return call.future.result()

    def _gather(self) -> list[_Call] | None:
        """The next round's calls (None once closed and drained)."""
        with self._cv:
            while not self._calls:
                if self._closed:
                    return None
                self._cv.wait()
            deadline = time.perf_counter() + self.max_wait_s
            while len(self._calls) < self.max_batch and self._arriving > 0 and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            return [self._calls.popleft() for _ in range(min(self.max_batch, len(self._calls)))]

    def _loop(self) -> None:
        while (calls := self._gather()) is not None:
            start = time.perf_counter()
            groups: dict[Hashable, list[_Call]] = {}
            for c in calls:
                groups.setdefault(c.key, []).append(c)
            for group in groups.values():
                for c in group:
                    self._metrics.observe_stage(c.method, "batch_wait", start - c.queued)
                self._run(group)
            if len(calls) > 1:
                ms = 1e3 * (time.perf_counter() - start)
                log.debug("ran %d calls in %d groups in %.1f ms", len(calls), len(groups), ms)

    def threads_for(self, key: Hashable, n_calls: int) -> int:
        """Intra-op threads for a group: one for a Recommend group whose ranking is under
        `parallel_min_flops`, else `threads` (Rank and other calls: always `threads`)."""
        if isinstance(key, Key) and key.model.ranking_flops(n_calls, key.depth) < self.parallel_min_flops:
            return 1
        return self.threads

    def _run(self, group: list[_Call]) -> None:
        first = group[0]
        self._metrics.batch_size.observe(len(group))
        threads = self.threads_for(first.key, len(group))
        if threads != torch.get_num_threads():  # only this thread runs the model (reload warm-ups aside)
            torch.set_num_threads(threads)
        start = time.perf_counter()
        try:
            if first.run is None:
                results = [first.payload()]
            else:
                results = list(first.run([c.payload for c in group]))
        except BaseException as err:  # every call of the group gets the error; the thread goes on
            for c in group:
                c.future.set_exception(err)
            return
        seconds = time.perf_counter() - start
        for c, r in zip(group, results, strict=True):
            self._metrics.observe_stage(c.method, MODEL_STAGE[c.method], seconds)
            c.future.set_result(r)
