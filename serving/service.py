"""The domain service behind the gRPC API: validation, feature-store reads and writes, model calls.

No grpc here: errors are `recsys.errors` exceptions that carry their status, and the one interceptor
(`serving.errors`) applies it. Every method is blocking (torch, redis-py) and thread-safe; the
servicer runs them on a worker pool.

Model hot swap: `swap(recommender)` replaces the model reference atomically. Each call reads that
reference exactly once, at its start, so a request in flight finishes on the model it started with,
and every response names the version that produced it.

Events for items the current model does not know are ACCEPTED and stored. The store keeps raw ids, so
the next retrain learns those items, and until then the ranker maps them to its unknown-item slot.
Rejecting them would lose exactly the behavior on new items that the next model needs.

User states are read through an in-process `UserStateCache` (at most one store round trip per
request). Degraded mode: when the store raises `Unavailable` on a read, Recommend and Rank answer from
the cached state however old ("degraded_cache") or from an empty state, i.e. popular items
("degraded_fallback"), and say so in `reason`. Writes never degrade: RecordEvents raises `Unavailable`
(the client retries; event ids make retries idempotent), so nothing is acknowledged that the store
does not hold.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from recsys.data import KNOWN_EVENTS
from recsys.errors import InvalidArgument, Unavailable
from recsys.features import DEFAULT_EVENT, Event, FeatureStore, UserState
from recsys.recommender import MAX_RANK_ITEMS, Filters, FreshItems, Recommendation, Recommender
from serving.batching import Key, ModelThread
from serving.cache import UserStateCache
from serving.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_ID_LENGTH = 256  # user and item ids; longer ones are almost certainly a client bug (or abuse)
MAX_EVENT_LENGTH = 64  # event type names ("click", "cart", ...)
MAX_EVENTS_PER_REQUEST = 1000  # one RecordEvents call; bigger backfills go through the bulk loader
UNAVAILABLE_TTL_S = 1.0  # the store's unavailable-items set is re-read at most this often (not per request)
FRESH_TTL_S = 1.0  # the store's item updates (new items for Recommend) are followed at most this often
FRESH_PAGE = 10_000  # item updates read per refresh: a big catalogue load is caught up page by page
DEGRADED_LOG_EVERY_S = 10.0  # while the store is down, one warning per this many seconds, not one per request


@dataclass(frozen=True)
class Ranking:
    """Scores in the order of the requested item ids, and the model version that produced them."""

    scores: list[float]
    model_version: str
    reason: str = ""  # "" (state from the store), "degraded_cache" or "degraded_fallback"


@dataclass(frozen=True)
class ModelInfo:
    version: str
    created_at: str
    catalog_size: int
    metrics: Mapping[str, float]
    default_retrieval_depth: int  # what Recommend retrieves when a request names no depth
    retrieval_blend: float  # the weight of retrieval's opinion in Recommend's order (recsys.recommender.blend_order)


class RecommendationService:
    """Recommend, rank and record for users of one feature store, with one (swappable) model.

    `clock` returns epoch seconds; it resolves "now" (request times and event timestamps of 0), and
    tests may pass a fixed one. Without a `cache` none is used; without `metrics` they go to a
    registry of their own.
    """

    def __init__(
        self,
        recommender: Recommender,
        store: FeatureStore,
        clock: Callable[[], float] = time.time,
        *,
        cache: UserStateCache | None = None,
        metrics: Metrics | None = None,
        model_thread: ModelThread | None = None,
    ) -> None:
        self._recommender = recommender
        self._store = store
        self._clock = clock
        self._model_thread = model_thread  # None: model calls run on the calling thread
        self._swap_lock = threading.Lock()
        self._cache = cache if cache is not None else UserStateCache(0, 0.0)
        self._metrics = metrics if metrics is not None else Metrics()
        self._metrics.set_model(recommender.version, recommender.created_at)
        self._metrics.track_cache_size(lambda: len(self._cache))
        self._metrics.track_state_cache(lambda: self.recommender.state_cache)
        self._degraded_lock = threading.Lock()
        self._degraded_logged_at = -math.inf
        self._degraded_since_log = 0
        self._unavailable: frozenset[str] = frozenset()
        self._unavailable_read_at = -math.inf
        self._unavailable_lock = threading.Lock()
        # items added after training, followed through the store's update sequence, per model version
        self._fresh_lock = threading.Lock()
        self._fresh: FreshItems | None = None
        self._fresh_features: dict[str, dict[str, str]] = {}
        self._fresh_cursor = -1
        self._fresh_read_at = -math.inf

    @property
    def recommender(self) -> Recommender:
        """The model new requests will use."""
        return self._recommender

    @property
    def store(self) -> FeatureStore:
        return self._store

    def swap(self, recommender: Recommender) -> Recommender:
        """Serve `recommender` from the next request on; returns the previous model.

        Requests already running keep the reference they captured and finish on the old model.
        """
        with self._swap_lock:
            old, self._recommender = self._recommender, recommender
            self._metrics.set_model(recommender.version, recommender.created_at)
        return old

    def recommend(
        self,
        user_id: str,
        k: int,
        exclude_seen: bool = True,
        now: float | None = None,
        *,
        depth: int | None = None,
        allow: Sequence[str] | None = None,
        deny: Sequence[str] = (),
    ) -> Recommendation:
        """The k best items for the user. `k`, `depth` and the list sizes are checked by the recommender.

        Never recommended: seen items (unless `exclude_seen` is false), `deny`, and the store's
        unavailable items (read at most every UNAVAILABLE_TTL_S). With `allow`, only those items.
        Items added to the store after training compete for the candidates (`_fresh_items`).
        """
        model = self._recommender  # captured once: a concurrent swap does not affect this request
        _check_user_id(user_id)
        at = self._resolve_now(now)
        filters = Filters(allow=allow, deny=deny, unavailable=self._unavailable_items())
        if self._model_thread is None:
            user, degraded = self._read_user(user_id, "Recommend")
            with self._metrics.stage("Recommend", "retrieval_and_ranking"):
                rec = model.recommend_batch([user], k, exclude_seen, at, depth, filters, self._fresh_items(model))[0]
        else:  # batched with concurrent calls of the same parameters on the model thread
            with self._model_thread.arriving() as ticket:
                user, degraded = self._read_user(user_id, "Recommend")
                fresh = self._fresh_items(model)
                key = Key(
                    model=model,
                    k=k,
                    exclude_seen=exclude_seen,
                    depth=depth,
                    allow=None if allow is None else tuple(allow),
                    deny=tuple(deny),
                    unavailable=frozenset(filters.unavailable),
                    fresh=id(fresh) if fresh is not None else 0,
                    filters=filters,
                    fresh_items=fresh,
                )
                rec = self._model_thread.recommend(key, user, at, ticket)
        return dataclasses.replace(rec, reason=degraded) if degraded else rec

    def rank(self, user_id: str, item_ids: Sequence[str], now: float | None = None) -> Ranking:
        """Scores for `item_ids`, same order. Unknown items -> NotFound naming them (the recommender's
        contract); an empty or oversized list -> InvalidArgument."""
        model = self._recommender
        _check_user_id(user_id)
        at = self._resolve_now(now)
        user, degraded = self._read_user(user_id, "Rank")
        unknown = list(dict.fromkeys(i for i in item_ids if not model.known_item(i)))
        new_items: dict[str, dict[str, str]] = {}
        if unknown and len(item_ids) <= MAX_RANK_ITEMS:  # items added after training: their side features
            with self._metrics.stage("Rank", "feature_fetch"):
                new_items = dict(zip(unknown, self._store.get_items(unknown), strict=True))
        if self._model_thread is None:
            with self._metrics.stage("Rank", "ranking"):
                scores = list(model.rank(user, item_ids, now=at, new_items=new_items))
        else:
            scores = list(
                self._model_thread.call("Rank", lambda: model.rank(user, item_ids, now=at, new_items=new_items))
            )
        return Ranking(scores=scores, model_version=model.version, reason=degraded)

    def record_events(self, user_id: str, events: Sequence[Event]) -> UserState:
        """Validate all events, then append them in one atomic store write; returns the new state.

        All-or-nothing: one invalid event rejects the request before anything is written. A timestamp
        of 0 becomes the server's clock now and an empty event type becomes "click". Items unknown to
        the current model are accepted (see the module docstring).
        """
        _check_user_id(user_id)
        if not events:
            raise InvalidArgument("events: empty; fix: send at least one event")
        if len(events) > MAX_EVENTS_PER_REQUEST:
            raise InvalidArgument(
                f"events: {len(events)} events in one request; fix: send at most "
                f"{MAX_EVENTS_PER_REQUEST} per call (bulk backfills belong in the offline loader)"
            )
        now = self._clock()
        clean = [_clean_event(i, e, now) for i, e in enumerate(events)]
        # Invalidate first: if the write fails after Redis applied it, the next read still refetches.
        self._cache.invalidate(user_id)
        with self._metrics.stage("RecordEvents", "feature_write"):
            state = self._store.append_events(user_id, clean)
        self._cache.put(user_id, state)
        return state

    def model_info(self) -> ModelInfo:
        model = self._recommender
        return ModelInfo(
            version=model.version,
            created_at=model.created_at,
            catalog_size=model.n_items,
            metrics=dict(model.metrics),
            default_retrieval_depth=model.retrieval_depth,
            retrieval_blend=model.retrieval_blend,
        )

    def _read_user(self, user_id: str, method: str) -> tuple[UserState, str]:
        """The user's state and "" -- or, with the store unreachable, a degraded state and its reason."""
        if self._cache.enabled:
            cached = self._cache.get(user_id)
            self._metrics.cache_lookup(hit=cached is not None)
            if cached is not None:
                return cached, ""
        try:
            with self._metrics.stage(method, "feature_fetch"):
                state = self._store.get_user(user_id)
        except Unavailable as err:
            stale = self._cache.get_stale(user_id)
            reason = "degraded_cache" if stale is not None else "degraded_fallback"
            self._metrics.degraded.labels(method=method, reason=reason).inc()
            self._log_degraded(err)
            return (stale if stale is not None else UserState()), reason
        self._cache.put(user_id, state)
        return state, ""

    def _unavailable_items(self) -> frozenset[str]:
        """The store's unavailable set, re-read at most every UNAVAILABLE_TTL_S; the last copy while
        the store is down (the user read that follows reports the outage)."""
        if time.monotonic() - self._unavailable_read_at < UNAVAILABLE_TTL_S:
            return self._unavailable
        with self._unavailable_lock:
            if time.monotonic() - self._unavailable_read_at >= UNAVAILABLE_TTL_S:
                try:
                    self._unavailable = frozenset(self._store.unavailable_items())
                except Unavailable:
                    pass
                self._unavailable_read_at = time.monotonic()
        return self._unavailable

    def _fresh_items(self, model: Recommender) -> FreshItems | None:
        """The store's items that `model` does not know but can embed from their side features, kept up
        to date by following `items_updated_since` at most every FRESH_TTL_S (FRESH_PAGE updates a
        time); rebuilt from the start for a new model version. The last copy while the store is down."""
        if not model.serves_new_items:
            return None
        fresh = self._fresh
        current = fresh is not None and fresh.version == model.version
        if current and time.monotonic() - self._fresh_read_at < FRESH_TTL_S:
            return fresh
        with self._fresh_lock:
            if self._fresh is None or self._fresh.version != model.version:
                self._fresh, self._fresh_features, self._fresh_cursor = model.fresh_items({}), {}, -1
                self._fresh_read_at = -math.inf
            if time.monotonic() - self._fresh_read_at >= FRESH_TTL_S:
                try:
                    self._follow_items(model)
                except Unavailable:
                    pass
                self._fresh_read_at = time.monotonic()
            return self._fresh

    def _follow_items(self, model: Recommender) -> None:
        """One page of item updates: new features replace old ones, deleted items drop out."""
        updates = self._store.items_updated_since(self._fresh_cursor, FRESH_PAGE)
        if not updates:
            return
        new = [item_id for item_id, _ in updates if not model.known_item(item_id)]
        for item_id, features in zip(new, self._store.get_items(new) if new else [], strict=True):
            self._fresh_features.pop(item_id, None)  # re-inserted last: the newest are kept past the cap
            if features:
                self._fresh_features[item_id] = features
        self._fresh_cursor = updates[-1][1]
        if new:
            self._fresh = model.fresh_items(self._fresh_features)
            logger.info("serving %d items added after training (model %s)", len(self._fresh), model.version)

    def _log_degraded(self, err: Unavailable) -> None:
        """One warning per DEGRADED_LOG_EVERY_S while the store is down (the metric counts every answer)."""
        with self._degraded_lock:
            self._degraded_since_log += 1
            now = time.monotonic()
            if now - self._degraded_logged_at < DEGRADED_LOG_EVERY_S:
                return
            count, self._degraded_since_log, self._degraded_logged_at = self._degraded_since_log, 0, now
        logger.warning("serving degraded answers (%d since the last warning): %s", count, err)

    def _resolve_now(self, now: float | None) -> float:
        """None or 0 -> the clock; negative or non-finite -> InvalidArgument."""
        if now is None or now == 0:
            return self._clock()
        if not math.isfinite(now) or now < 0:
            raise InvalidArgument(
                f"request_time_unix: {now!r} is not a valid time; fix: send epoch seconds > 0, "
                "or 0 / unset for the server's clock"
            )
        return float(now)


def _check_user_id(user_id: str) -> None:
    if not user_id:
        raise InvalidArgument("user_id: empty; fix: send the user's id (1..256 characters)")
    if len(user_id) > MAX_ID_LENGTH:
        raise InvalidArgument(
            f"user_id: {len(user_id)} characters (starts {user_id[:32]!r}); "
            f"fix: send at most {MAX_ID_LENGTH} characters"
        )


def _clean_event(i: int, event: Event, now: float) -> Event:
    """The event as stored: checked, timestamp 0 resolved to `now`, empty type defaulted."""
    where = f"events[{i}]"
    if not event.item_id:
        raise InvalidArgument(f"{where}.item_id: empty; fix: send the id of the item acted on")
    if len(event.item_id) > MAX_ID_LENGTH:
        raise InvalidArgument(
            f"{where}.item_id: {len(event.item_id)} characters (starts {event.item_id[:32]!r}); "
            f"fix: send at most {MAX_ID_LENGTH} characters"
        )
    ts = event.timestamp
    if not math.isfinite(ts) or ts < 0:
        raise InvalidArgument(
            f"{where}.timestamp_unix: {ts!r} is not a valid time; fix: send epoch seconds >= 0 (0 means now)"
        )
    kind = event.event.strip().lower() or DEFAULT_EVENT
    if kind not in KNOWN_EVENTS:  # the exported stream must retrain: recsys.data accepts only these
        shown = event.event[:MAX_EVENT_LENGTH] + ("..." if len(event.event) > MAX_EVENT_LENGTH else "")
        raise InvalidArgument(
            f"{where}.event: {shown!r} is not a known event type; fix: send one of {list(KNOWN_EVENTS)}"
        )
    if len(event.event_id) > MAX_ID_LENGTH:
        raise InvalidArgument(
            f"{where}.event_id: {len(event.event_id)} characters; fix: send an idempotency key of at most "
            f"{MAX_ID_LENGTH} characters, or none"
        )
    timestamp = float(ts) if ts > 0 else now
    return dataclasses.replace(event, timestamp=timestamp, event=kind)
