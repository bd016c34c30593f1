"""`python -m training registry`: list, show, diff, promote (checksums first), rollback through the
LATEST history, and prune (never the live version or the rollback target), on real artifacts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def registry(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", "registry", "--root", str(root), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def make_root(trained, tmp_path: Path, names: list[str]) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    for n, name in enumerate(names):
        shutil.copytree(trained.artifact, root / name)
        manifest = json.loads((root / name / "manifest.json").read_text())
        manifest["metrics"]["valid_ndcg@10"] = 0.1 * (n + 1)  # the manifest is not checksummed: a label here
        manifest["version"] = name
        (root / name / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_promote_rollback_and_prune(trained, tmp_path: Path) -> None:
    root = make_root(trained, tmp_path, ["v1", "v2", "v3", "v4"])
    assert registry(root, "promote", "v1").returncode == 0
    done = registry(root, "promote", "v3")
    assert done.returncode == 0 and "v1 -> v3" in done.stdout
    assert (root / "LATEST").read_text().strip() == "v3"

    listed = registry(root, "list").stdout
    live_rows = [line.split() for line in listed.splitlines() if line.startswith("*")]
    assert len(live_rows) == 1 and live_rows[0][1] == "v3" and "0.3000" in live_rows[0]
    assert sum(line.split()[0] in {"v1", "v2", "v4"} for line in listed.splitlines()) == 3

    diff = registry(root, "diff", "v1", "v3")
    assert diff.returncode == 0 and "+0.2000" in diff.stdout
    shown = json.loads(registry(root, "show", "v2").stdout)
    assert shown["version"] == "v2"

    back = registry(root, "rollback")
    assert back.returncode == 0 and "v3 -> v1" in back.stdout
    assert (root / "LATEST").read_text().strip() == "v1"

    # prune keeps the newest one plus the live version (v1) and the rollback target (v3)
    pruned = registry(root, "prune", "--keep", "1")
    assert pruned.returncode == 0, pruned.stderr
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["v1", "v3", "v4"]
    history = [json.loads(line) for line in (root / "HISTORY.jsonl").read_text().splitlines()]
    assert [(h["previous"], h["version"]) for h in history] == [(None, "v1"), ("v1", "v3"), ("v3", "v1")]


def test_a_corrupted_or_unknown_version_is_refused_and_latest_stays(trained, tmp_path: Path) -> None:
    root = make_root(trained, tmp_path, ["v1", "v2"])
    assert registry(root, "promote", "v1").returncode == 0
    weights = root / "v2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    for args, words in ((("promote", "v2"), "sha256"), (("promote", "v9"), "v9"), (("rollback",), "no earlier")):
        done = registry(root, *args)
        assert done.returncode != 0 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert (root / "LATEST").read_text().strip() == "v1"
