"""Hot model reload under load: moving LATEST (the watcher) and Admin.Reload, with an in-process server.

The second version is the trained model re-saved under the name "v2" (`recsys.artifact.save`), so
responses name it; a third, "v3", is a copy with one flipped bit in its weights.
"""

from __future__ import annotations

import gc
import shutil
import threading
import time
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from recsys import artifact as artifact_format
from serving.client import RecommenderClient
from serving.reload import load_and_warm
from tests.test_serving_ops import running_server, sample, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def root(trained, tmp_path: Path) -> Path:
    """ROOT/<trained version> (LATEST) and ROOT/v2, the same model re-saved under another version."""
    root = tmp_path / "artifacts"
    root.mkdir()
    shutil.copytree(trained.artifact, root / trained.artifact.name)
    artifact_format.set_latest(root, trained.artifact.name)
    art = artifact_format.load(trained.artifact)
    seed = pq.read_table(trained.artifact / "seed.parquet")
    manifest = art.manifest
    artifact_format.save(
        root, art.model, art.featurizer, art.popular, seed, manifest["data"], manifest["metrics"],
        version="v2", make_latest=False,
    )  # fmt: skip
    return root


def test_reload_under_load_switches_once_and_refuses_a_corrupt_version(trained, root: Path) -> None:
    v1 = trained.artifact.name
    with running_server(root, reload_interval=0.1, workers=2) as app:
        stop = threading.Event()
        seen: list[list[str]] = [[] for _ in range(3)]
        failures: list[BaseException] = []

        def load(i: int) -> None:
            with RecommenderClient(app.target) as client:
                while not stop.is_set():
                    try:
                        seen[i].append(client.recommend(f"u0000{i + 1}", k=10).model_version)
                    except grpc.RpcError as err:  # counted, never expected
                        failures.append(err)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(len(seen))]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(s) >= 5 for s in seen), what="traffic on v1")
            artifact_format.set_latest(root, "v2")
            wait_for(lambda: all(s[-1] == "v2" for s in seen if s), what="every client on v2")
            time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)

        assert not failures, failures[:3]
        for versions in seen:
            switch = versions.index("v2")
            assert set(versions[:switch]) == {v1} and set(versions[switch:]) == {"v2"}, "switched exactly once"
        assert sample(app, "recsys_model_reloads_total", result="ok") == 1
        assert sample(app, "recsys_model_info", version="v2", created_at=app.service.recommender.created_at) == 1

        # a corrupted version: refused by the watcher and by Admin.Reload; v2 keeps serving
        shutil.copytree(root / "v2", root / "v3")
        weights = root / "v3" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        artifact_format.set_latest(root, "v3")
        wait_for(lambda: sample(app, "recsys_model_reloads_total", result="failed") == 1, what="refusal")
        with RecommenderClient(app.target) as client:
            assert client.recommend("u00001", k=5).model_version == "v2"
            with pytest.raises(grpc.RpcError) as err:
                client.reload("v3")
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "does not match" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                client.reload("../elsewhere")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert client.info().model_version == "v2"

            # Admin.Reload picks any good version; the watcher leaves it alone until LATEST moves again
            back = client.reload(v1)
            assert (back.model_version, back.changed) == (v1, True)
            again = client.reload(v1)
            assert (again.model_version, again.changed) == (v1, False)
            time.sleep(0.3)
            assert client.recommend("u00001", k=5).model_version == v1


def test_a_loaded_model_leaves_the_cyclic_collectors_scans(trained) -> None:
    """`load_and_warm` freezes the heap, the new model included, so Python's full collections stop
    walking it (they held about one call in a hundred for 100-250 ms at 16 concurrent calls)."""
    gc.unfreeze()
    try:
        model = load_and_warm(trained.artifact)
        owned = model.featurizer.items.tokens  # one of the model's long-lived containers
        assert gc.get_freeze_count() > 0
        assert not any(o is owned for o in gc.get_objects())  # frozen: in no generation the collector scans
        gc.unfreeze()
        assert any(o is owned for o in gc.get_objects())  # the check above can fail
    finally:
        gc.unfreeze()
