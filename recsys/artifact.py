"""The versioned, self-describing artifact: the only thing training hands to serving.

One directory per version under an artifact root, and a `LATEST` file naming the live one:

    ROOT/LATEST                       the live version's directory name (replaced atomically)
    ROOT/<version>/manifest.json      format version, model config, created_at, training-data summary,
                                      validation metrics, index kind, serving depth, sha256 of every
                                      other file
    ROOT/<version>/model.safetensors  weights and the item side-feature tables (no pickle)
    ROOT/<version>/features.json      vocabularies and the feature schema
    ROOT/<version>/item_vectors.safetensors  the retrieval item vectors, (n_items, d) float32
    ROOT/<version>/index.faiss        FAISS index over those vectors (FAISS's own format)
    ROOT/<version>/popular.json       the fallback ranking for cold-start users
    ROOT/<version>/seed.parquet       users' recent histories and profiles, to seed a memory:// store

A version is written into a temporary directory and renamed into place, so a reader never sees a
half-written one. Loading checks the format version and every checksum before reading anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file

from recsys.batch import Featurizer
from recsys.config import from_dict, to_dict
from recsys.errors import ArtifactError
from recsys.index import FaissRetriever, IndexConfig
from recsys.model import BST, ModelConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LATEST = "LATEST"
HISTORY = "HISTORY.jsonl"  # one JSON line per move of LATEST: at, version, previous
FILES = (
    "model.safetensors",
    "features.json",
    "item_vectors.safetensors",
    "index.faiss",
    "popular.json",
    "seed.parquet",
)


@dataclass
class Artifact:
    path: Path
    manifest: dict[str, Any]
    model: BST
    featurizer: Featurizer
    item_vectors: np.ndarray
    index: FaissRetriever
    popular: list[tuple[int, float]]  # (item index, score), best first

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def retrieval_depth(self) -> int | None:
        """The serving depth chosen on validation at export (`serving.retrieval_depth`), if any."""
        depth = self.manifest.get("serving", {}).get("retrieval_depth")
        return int(depth) if depth else None

    @property
    def retrieval_blend(self) -> float:
        """The weight of retrieval's opinion in the served order, chosen on validation at export
        (`serving.retrieval_blend`; `recsys.recommender.blend_order`); 0, the ranker alone, if none."""
        return float(self.manifest.get("serving", {}).get("retrieval_blend", 0.0))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_version(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("v%Y%m%dT%H%M%S%fZ")


def save(
    root: str | Path,
    model: BST,
    featurizer: Featurizer,
    popular: list[tuple[int, float]],
    seed: pa.Table,
    data_summary: dict[str, Any],
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
    version: str | None = None,
    make_latest: bool = True,
    index_config: IndexConfig | None = None,
    queries: np.ndarray | None = None,
) -> Path:
    """Write a new version under `root` (atomically) and, by default, point LATEST at it.

    `index_config` picks the FAISS index (default: by catalogue size); `queries` (users' vectors)
    drive its build-time recall check, whose result the manifest's "index" entry records."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    version = version or new_version()
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    try:
        model = model.eval()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "features.json").write_text(json.dumps(featurizer.to_json()))
        with torch.no_grad():
            vectors = model.item_vectors().float().cpu().numpy()
        save_numpy({"item_vectors": vectors}, str(tmp / "item_vectors.safetensors"))
        index = FaissRetriever.build(vectors, index_config, queries)
        index.save(tmp / "index.faiss")
        (tmp / "popular.json").write_text(json.dumps([[int(i), float(s)] for i, s in popular]))
        pq.write_table(seed, tmp / "seed.parquet")
        manifest = {
            "format_version": FORMAT_VERSION,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_config": to_dict(model.cfg),
            "catalog_size": len(featurizer.items) - 2,
            "index": index.info,
            "data": data_summary,
            "metrics": metrics,
            **(extra or {}),
            "files": {name: sha256(tmp / name) for name in FILES},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        final = root / version
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if make_latest:
        set_latest(root, version)
    log.info("wrote artifact %s", final)
    return final


def update_manifest(path: Path, fields: dict[str, Any]) -> None:
    """Add or replace top-level entries of a version's manifest (what a step after the export decided:
    the serving depth, a promotion gate's verdict). Written to a temp file and renamed, so a reader sees
    the old manifest or the new one; the manifest carries the other files' checksums, not its own."""
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(fields)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, path / MANIFEST)


def set_latest(root: Path, version: str) -> None:
    """Point LATEST at `version`: write a temp file and rename it over the pointer; then append the move
    to HISTORY.jsonl (what `registry rollback` walks back). A crash between the two leaves the pointer
    moved and the history one entry short, never a pointer to a missing version."""
    if not (root / version / MANIFEST).exists():
        raise ArtifactError(f"{root / version}: not a complete artifact version; fix: pass an existing version")
    previous = (root / LATEST).read_text().strip() if (root / LATEST).exists() else None
    fd, tmp = tempfile.mkstemp(prefix=".LATEST.", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(version + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / LATEST)
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "version": version, "previous": previous}
    with open(root / HISTORY, "a") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(root: Path) -> list[dict[str, Any]]:
    """The LATEST moves recorded under `root`, oldest first (unreadable lines are skipped)."""
    path = root / HISTORY
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            log.warning("%s: skipping an unreadable line", path)
    return out


def resolve(path: str | Path) -> Path:
    """A version directory, or a root whose LATEST names one."""
    p = Path(path)
    if (p / MANIFEST).exists():
        return p
    if (p / LATEST).exists():
        version = (p / LATEST).read_text().strip()
        if not (p / version / MANIFEST).exists():
            raise ArtifactError(
                f"{p / LATEST} names {version!r}, which has no manifest; fix: retrain or repoint LATEST"
            )
        return p / version
    raise ArtifactError(
        f"{p}: no {MANIFEST} and no {LATEST} pointer; fix: pass an artifact version directory or a root written by "
        "`python -m training fit --out ROOT`"
    )


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path / MANIFEST}: unreadable ({err}); fix: re-export the artifact") from err
    fmt = manifest.get("format_version")
    if fmt != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {fmt!r} is not supported (this build reads {FORMAT_VERSION}); "
            "fix: re-export the artifact with this version of recsys"
        )
    return manifest


def verify(path: Path, manifest: dict[str, Any]) -> None:
    files = manifest.get("files", {})
    for name in FILES:
        if name not in files:
            raise ArtifactError(f"{path}: manifest lists no checksum for {name}; fix: re-export the artifact")
        f = path / name
        if not f.exists():
            raise ArtifactError(f"{f}: missing; fix: re-export the artifact")
        digest = sha256(f)
        if digest != files[name]:
            raise ArtifactError(
                f"{f}: sha256 {digest[:12]}... does not match the manifest's {files[name][:12]}... "
                "(corrupted or modified); fix: re-export or re-copy the artifact"
            )


def load(path: str | Path) -> Artifact:
    """Load and verify an artifact; any problem raises `ArtifactError` naming the file and the fix."""
    p = resolve(path)
    manifest = read_manifest(p)
    verify(p, manifest)
    try:
        cfg = from_dict(ModelConfig, manifest["model_config"], where=f"{p / MANIFEST}: model_config")
        model = BST(cfg)
        state = load_file(str(p / "model.safetensors"))
        model.load_state_dict(state, strict=True)
        model.eval()
        side = [state[f"items.side_table_{j}"].numpy() for j in range(len(cfg.side_sizes))]
        featurizer = Featurizer.from_json(json.loads((p / "features.json").read_text()), side)
        vectors = load_numpy(str(p / "item_vectors.safetensors"))["item_vectors"]
        index = FaissRetriever.load(p / "index.faiss", len(featurizer.items))
        popular = [(int(i), float(s)) for i, s in json.loads((p / "popular.json").read_text())]
    except ArtifactError:
        raise
    except Exception as err:  # a checksummed file that still does not load: wrong writer
        raise ArtifactError(
            f"{p}: cannot be loaded ({type(err).__name__}: {err}); fix: re-export the artifact"
        ) from err
    return Artifact(p, manifest, model, featurizer, vectors, index, popular)


def read_seed(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(resolve(path) / "seed.parquet")
