"""The model thread: batched Recommend answers equal unbatched ones, errors stay within their group,
a lone call is computed at once, and announced calls join the batch being gathered."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recsys.errors import InvalidArgument
from recsys.recommender import Recommender
from recsys.store import MemoryStore
from serving.batching import ModelThread
from serving.metrics import Metrics
from serving.service import RecommendationService

NOW = 1_706_000_000.0


def batch_sizes(metrics: Metrics) -> dict[float, float]:
    """Cumulative bucket counts of recsys_model_batch_size: upper bound -> calls-batches at or below."""
    out = {}
    for metric in metrics.registry.collect():
        for s in metric.samples:
            if s.name == "recsys_model_batch_size_bucket":
                out[float(s.labels["le"])] = s.value
    return out


@pytest.fixture(scope="module")
def loaded(trained) -> tuple[Recommender, MemoryStore, list[str]]:
    rec = Recommender.load(trained.artifact)
    store = MemoryStore(200)
    histories, profiles = {}, {}
    for user_id, events, profile in rec.seed():
        histories[user_id] = events
        profiles[user_id] = profile
    store.put_users(histories, profiles)
    return rec, store, sorted(histories)[:48]


def test_concurrent_batched_answers_equal_unbatched_ones(loaded) -> None:
    rec, store, users = loaded
    plain = RecommendationService(rec, store, clock=lambda: NOW)
    want = {u: plain.recommend(u, 10) for u in users}
    metrics = Metrics()
    # a long gathering window, so the concurrent calls below do form batches
    thread = ModelThread(metrics, max_batch=16, max_wait_s=0.05)
    batched = RecommendationService(rec, store, clock=lambda: NOW, metrics=metrics, model_thread=thread)
    start = threading.Barrier(16)

    def call(u: str):
        if users.index(u) < 16:  # the first round starts together
            start.wait()
        return batched.recommend(u, 10)

    try:
        with ThreadPoolExecutor(16) as pool:
            got = dict(zip(users, pool.map(call, users), strict=True))
    finally:
        thread.close()
    for u in users:
        assert [i.item_id for i in got[u].items] == [i.item_id for i in want[u].items], u
        assert [i.score for i in got[u].items] == pytest.approx([i.score for i in want[u].items], abs=1e-5)
        assert got[u].reason == want[u].reason
    sizes = batch_sizes(metrics)
    assert sizes[float("inf")] < len(users)  # fewer model calls than requests: some were batched
    assert sizes[1.0] < sizes[float("inf")]


def test_an_error_reaches_only_the_calls_of_its_group(loaded) -> None:
    rec, store, users = loaded
    thread = ModelThread(Metrics(), max_batch=16, max_wait_s=0.05)
    service = RecommendationService(rec, store, clock=lambda: NOW, model_thread=thread)
    start = threading.Barrier(8)

    def call(i: int):
        start.wait()
        try:
            return service.recommend(users[i], 10_000 if i % 2 else 10)  # odd calls: k out of range
        except InvalidArgument as err:
            return err

    try:
        with ThreadPoolExecutor(8) as pool:
            out = list(pool.map(call, range(8)))
    finally:
        thread.close()
    for i, result in enumerate(out):
        if i % 2:
            assert isinstance(result, InvalidArgument) and "k=10000" in str(result)
        else:
            assert not isinstance(result, Exception) and len(result.items) == 10


def test_a_lone_call_is_not_held_for_the_gathering_window(loaded) -> None:
    """With nothing else arriving, the model thread computes at once; a 60 s window must not apply."""
    rec, store, users = loaded
    thread = ModelThread(Metrics(), max_batch=16, max_wait_s=60.0)
    service = RecommendationService(rec, store, clock=lambda: NOW, model_thread=thread)
    try:
        with ThreadPoolExecutor(1) as pool:
            assert len(pool.submit(service.recommend, users[0], 5).result(timeout=30).items) == 5
            ranked = pool.submit(service.rank, users[0], [i.item_id for i in service.recommend(users[0], 3).items])
            assert len(ranked.result(timeout=30).scores) == 3  # Rank runs on the model thread too
    finally:
        thread.close()


def test_an_announced_call_joins_the_batch_being_gathered(loaded) -> None:
    rec, store, users = loaded
    metrics = Metrics()
    thread = ModelThread(metrics, max_batch=16, max_wait_s=30.0)
    service = RecommendationService(rec, store, clock=lambda: NOW, metrics=metrics, model_thread=thread)
    try:
        with ThreadPoolExecutor(2) as pool:
            with thread.arriving():  # announced, never submitted: the window stays open while we hold it
                first = pool.submit(service.recommend, users[0], 10)
                with pytest.raises(TimeoutError):
                    first.result(timeout=0.5)  # held: a call is announced and the window is 30 s
                second = pool.submit(service.recommend, users[1], 10)
            assert len(first.result(timeout=30).items) == 10
            assert len(second.result(timeout=30).items) == 10
    finally:
        thread.close()
    sizes = batch_sizes(metrics)
    assert (sizes[1.0], sizes[2.0]) == (0, 1)  # one batch of two, no batch of one


def test_closed_thread_refuses_new_calls(loaded) -> None:
    rec, store, users = loaded
    thread = ModelThread(Metrics())
    thread.close()
    with pytest.raises(RuntimeError, match="closed"):
        thread.call("Rank", lambda: 1)


def test_small_calls_run_on_one_thread_large_ones_on_all(loaded) -> None:
    import torch

    from recsys.recommender import NO_FILTERS
    from serving.batching import Key

    rec, store, users = loaded
    one = rec.ranking_flops(1)  # one request at the default depth
    assert one == rec.ranking_flops(1, rec.retrieval_depth) > 0 and rec.ranking_flops(3, 40) == 3 * 40 * one / (
        rec.retrieval_depth
    )

    def key(depth: int | None) -> Key:
        return Key(rec, 10, True, depth, None, (), frozenset(), 0, NO_FILTERS, None)

    thread = ModelThread(Metrics(), threads=2, parallel_min_flops=1.5 * one)
    try:
        assert thread.threads_for(key(None), 1) == 1  # under the threshold: one thread
        assert thread.threads_for(key(None), 2) == 2  # a batch of two is over it
        assert thread.threads_for(key(2 * rec.retrieval_depth), 1) == 2  # so is one request at twice the depth
        assert thread.threads_for(object(), 1) == 2  # Rank and other calls: always all
        service = RecommendationService(rec, store, clock=lambda: NOW, model_thread=thread)
        plain = RecommendationService(rec, store, clock=lambda: NOW)
        got, want = service.recommend(users[0], 10), plain.recommend(users[0], 10)  # on one thread / on all
        # the same answer up to float rounding: a thread count can change a matmul's summation order (seen
        # on an AVX-512/AMX machine, where one thread and two differed in the last bits)
        assert [it.item_id for it in got.items] == [it.item_id for it in want.items]
        np.testing.assert_allclose([it.score for it in got.items], [it.score for it in want.items], rtol=1e-5)
        assert thread.call("Rank", torch.get_num_threads) == 2  # the next call is back on all of them
    finally:
        thread.close()
    never = ModelThread(Metrics(), threads=2)  # parallel_min_flops=0: every call on all threads
    try:
        assert never.threads_for(key(None), 1) == 2
    finally:
        never.close()
    with pytest.raises(ValueError, match="parallel_min_flops=-1"):
        ModelThread(Metrics(), parallel_min_flops=-1)
