"""Hot model reload: load a version beside the served one, warm it up, swap it in atomically.

Two triggers, one code path (`ModelReloader.reload`):
- `Admin.Reload(version)` (an explicit version under the root, or unset for what LATEST names);
- `watch(interval)`, when the server was started with an artifacts ROOT: it polls ROOT/LATEST and
  reloads when the pointer *moves*. It follows changes of the pointer, not its value, so a version
  chosen through Admin.Reload stays until LATEST moves again, and a refused version is not retried
  every poll.

Loading (file reads, checksums, FAISS) and the warm-up recommendation run on the worker pool, never
on the event loop; the swap is `RecommendationService.swap`, so calls in flight finish on the model
they started with. A version that fails to load or to warm up raises `ArtifactError`
(FAILED_PRECONDITION), is logged and counted (`recsys_model_reloads_total{result="failed"}`), and the
old model keeps serving. Reloads are serialized.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Literal, TypedDict

from recsys import artifact as artifact_format
from recsys.errors import ArtifactError, InvalidArgument, RecsysError
from recsys.features import Event, UserState
from recsys.index import FIRST_ITEM
from recsys.recommender import Recommender
from serving.metrics import Metrics
from serving.service import RecommendationService

logger = logging.getLogger(__name__)


def is_root(path: str | Path) -> bool:
    """An artifacts root (a LATEST pointer, no manifest of its own), as opposed to one version dir."""
    p = Path(path)
    return (p / artifact_format.LATEST).is_file() and not (p / artifact_format.MANIFEST).exists()


def read_latest(root: Path) -> str:
    return (root / artifact_format.LATEST).read_text().strip()


def warm_up(model: Recommender) -> None:
    """One personalised recommendation (a one-click history), so the first real request does not pay
    for lazy initialisation. Raises whatever the model raises."""
    tokens = model.featurizer.items.tokens
    now = time.time()
    history = (Event(tokens[FIRST_ITEM], now - 60.0),) if len(tokens) > FIRST_ITEM else ()
    model.recommend(UserState(history=history), k=10, now=now)


class ModelOptions(TypedDict, total=False):
    scorer: Literal["fast", "reference"]
    precision: Literal["fp32", "bf16", "int8"]
    state_cache: int
    retrieval_blend: float | None


def load_and_warm(path: Path, options: ModelOptions | None = None) -> Recommender:
    """`Recommender.load` + `warm_up`; either failing is an `ArtifactError` naming the version.
    `options`: Recommender keyword arguments (scorer, precision, state_cache, retrieval_blend)."""
    model = Recommender.load(path, **(options or {}))
    try:
        warm_up(model)
    except Exception as err:  # any failure: a model that cannot answer must never be swapped in
        raise ArtifactError(
            f"{path}: loaded, but its warm-up recommendation failed ({type(err).__name__}: {err}); "
            "fix: re-export the artifact"
        ) from err
    freeze_heap()
    return model


def freeze_heap() -> None:
    """Collect once, then move every object alive into the cyclic collector's permanent generation.

    A loaded model brings millions of long-lived container objects (vocabularies, seed histories,
    module trees) that every full collection walked again: at 16 concurrent calls about one call in a
    hundred was held 100-250 ms by those pauses (README, Speed). Frozen objects are still freed by
    reference counting when a reload drops them; `unfreeze` first lets this collection also reclaim
    the reference cycles of a model the previous reload replaced."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelReloader:
    def __init__(
        self,
        service: RecommendationService,
        artifact: str | Path,
        executor: Executor,
        metrics: Metrics,
        options: ModelOptions | None = None,
    ):
        self._options = options
        self._service = service
        self._executor = executor
        self._metrics = metrics
        self.root: Path | None = Path(artifact) if is_root(artifact) else None
        self._lock = asyncio.Lock()
        self._seen_latest: str | None = read_latest(self.root) if self.root else None

    async def reload(self, version: str | None = None) -> tuple[str, bool]:
        """Serve `version` (a directory name under the root; None = what LATEST names). Returns
        (the version served afterwards, whether it changed)."""
        async with self._lock:
            current = self._service.recommender
            try:
                target = await asyncio.to_thread(self._target, version)
                if target.resolve() == Path(current.path).resolve():
                    self._metrics.reloads.labels(result="unchanged").inc()
                    return current.version, False
                loop = asyncio.get_running_loop()
                model = await loop.run_in_executor(self._executor, load_and_warm, target, self._options)
            except ArtifactError as err:
                self._metrics.reloads.labels(result="failed").inc()
                logger.error("model reload refused; still serving %s: %s", current.version, err)
                raise
            old = self._service.swap(model)
            self._metrics.reloads.labels(result="ok").inc()
            logger.info("model reloaded: now serving %s from %s (was %s)", model.version, model.path, old.version)
            return model.version, True

    def _target(self, version: str | None) -> Path:
        if self.root is None:
            if version is not None:
                raise ArtifactError(
                    f"reload of version {version!r}: this server was started with one version directory "
                    "(no artifacts root with a LATEST pointer); fix: start it with --artifact ROOT"
                )
            return Path(self._service.recommender.path)
        if version is None:
            return artifact_format.resolve(self.root)  # follows LATEST; ArtifactError if it dangles
        if not version or version != Path(version).name or version in (".", "..") or version.startswith("."):
            raise InvalidArgument(
                f"version: {version!r} is not a version name; fix: pass a directory name under the root"
            )
        return self.root / version

    async def watch(self, interval: float) -> None:
        """Poll LATEST every `interval` seconds and reload when it moves. Runs until cancelled."""
        if self.root is None:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                latest = await asyncio.to_thread(read_latest, self.root)
            except OSError as err:
                logger.warning("model watcher: cannot read %s: %s", self.root / artifact_format.LATEST, err)
                continue
            if latest == self._seen_latest:
                continue
            self._seen_latest = latest
            logger.info("model watcher: LATEST moved to %r", latest)
            try:
                await self.reload(latest)
            except ArtifactError as err:  # refused, logged and counted by reload; wait for the next move
                logger.debug("model watcher: %s", err)
            except RecsysError as err:
                logger.error("model watcher: LATEST names %r: %s", latest, err)
            except Exception:  # keep watching; a bug here must not end hot reload for the process
                logger.exception("model watcher: reload of %r failed", latest)
