"""`python -m training registry --root ROOT {list,show,diff,promote,rollback,prune}`: the model versions
under an artifacts root, read from their manifests.

The live version is the one `ROOT/LATEST` names (servers started on ROOT follow it). `promote` checks
the version's files against its manifest's checksums before it moves the pointer (temp file + rename:
a reader never sees a half-written pointer). Every move of LATEST, by `fit` or here, is appended to
`ROOT/HISTORY.jsonl` (`recsys.artifact.set_latest`), which is what `rollback` walks back: it re-promotes
the version that was live before the current one. `prune --keep N` deletes all but the newest N
versions, never the live one nor the rollback target.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from recsys import artifact
from recsys.errors import ArtifactError, InvalidArgument

METRIC_KEYS = ("valid_ndcg@10", "valid_hr@10", "valid_auc")


def versions(root: Path) -> list[str]:
    """Complete versions under `root` (a directory with a manifest), oldest first by name (= time)."""
    if not root.is_dir():
        raise InvalidArgument(f"--root {root}: not a directory; fix: pass the --out of `python -m training fit`")
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / artifact.MANIFEST).exists()
    )


def live(root: Path) -> str | None:
    pointer = root / artifact.LATEST
    return pointer.read_text().strip() if pointer.exists() else None


def manifest(root: Path, version: str) -> dict[str, Any]:
    if version not in versions(root):
        raise InvalidArgument(f"version {version!r} is not under {root}; fix: pick one from `registry list`")
    return artifact.read_manifest(root / version)


def list_table(root: Path) -> str:
    current = live(root)
    lines = [f"{'':2}{'version':<28} {'created_at':<26} " + " ".join(f"{k:>14}" for k in METRIC_KEYS)]
    for v in versions(root):
        m = artifact.read_manifest(root / v)
        metrics = m.get("metrics", {})
        cells = " ".join(
            f"{metrics[k]:>14.4f}" if isinstance(metrics.get(k), int | float) else f"{'-':>14}" for k in METRIC_KEYS
        )
        lines.append(f"{'*' if v == current else ' ':2}{v:<28} {str(m.get('created_at', '')):<26} {cells}")
    return "\n".join(lines) + ("\n(* = live: ROOT/LATEST)" if current else "\n(no LATEST: nothing is live)")


def diff(root: Path, a: str, b: str) -> str:
    ma, mb = manifest(root, a), manifest(root, b)
    lines = [f"{'metric':<20} {a:>28} {b:>28} {'b - a':>10}"]
    metrics_a, metrics_b = ma.get("metrics", {}), mb.get("metrics", {})
    for k in sorted(set(metrics_a) | set(metrics_b)):
        va, vb = metrics_a.get(k), metrics_b.get(k)
        delta = f"{vb - va:+.4f}" if isinstance(va, int | float) and isinstance(vb, int | float) else ""
        lines.append(f"{k:<20} {_fmt(va):>28} {_fmt(vb):>28} {delta:>10}")
    for section in ("model_config", "train_config", "data", "index"):
        sa, sb = ma.get(section, {}) or {}, mb.get(section, {}) or {}
        for k in sorted(set(sa) | set(sb)):
            if sa.get(k) != sb.get(k):
                lines.append(f"{section}.{k}: {json.dumps(sa.get(k))} -> {json.dumps(sb.get(k))}")
    return "\n".join(lines)


def promote(root: Path, version: str) -> str:
    path = root / version
    artifact.verify(path, manifest(root, version))  # refuse a corrupted version before anything moves
    before = live(root)
    artifact.set_latest(root, version)
    return f"LATEST: {before or '(none)'} -> {version}"


def rollback(root: Path) -> str:
    """Re-promote the version that was live before the current one (per HISTORY.jsonl)."""
    current = live(root)
    if current is None:
        raise ArtifactError(f"{root}: no LATEST, nothing to roll back; fix: promote a version first")
    target = rollback_target(root)
    if target is None:
        raise ArtifactError(f"{root}: no earlier live version on record; fix: promote a version by name")
    return promote(root, target)


def rollback_target(root: Path) -> str | None:
    current = live(root)
    present = set(versions(root))
    for entry in reversed(artifact.read_history(root)):
        previous = entry.get("previous")
        if entry.get("version") == current and previous and previous != current and previous in present:
            return str(previous)
    return None


def prune(root: Path, keep: int) -> str:
    if keep < 1:
        raise InvalidArgument(f"--keep {keep}: must be >= 1; fix: keep at least the newest version")
    protected = {live(root), rollback_target(root)}
    all_versions = versions(root)
    doomed = [v for v in all_versions[:-keep] if v not in protected]
    for v in doomed:
        shutil.rmtree(root / v)
    kept = len(all_versions) - len(doomed)
    return f"deleted {len(doomed)} version(s){': ' + ', '.join(doomed) if doomed else ''}; kept {kept}"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else ("-" if value is None else str(value))


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("registry", help="list, inspect, promote, roll back and prune model versions")
    p.add_argument("--root", required=True, type=Path, help="artifacts root (fit --out)")
    cmd = p.add_subparsers(dest="action", required=True)
    cmd.add_parser("list", help="every version, its validation metrics, and which is live")
    show = cmd.add_parser("show", help="a version's manifest")
    show.add_argument("version")
    d = cmd.add_parser("diff", help="metrics and config differences between two versions")
    d.add_argument("a")
    d.add_argument("b")
    pr = cmd.add_parser("promote", help="verify a version's files, then point LATEST at it")
    pr.add_argument("version")
    cmd.add_parser("rollback", help="point LATEST back at the version live before the current one")
    pn = cmd.add_parser("prune", help="delete old versions (never the live one or the rollback target)")
    pn.add_argument("--keep", type=int, required=True, help="newest versions to keep")
    p.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    root: Path = args.root
    if args.action == "list":
        print(list_table(root))
    elif args.action == "show":
        print(json.dumps(manifest(root, args.version), indent=2, sort_keys=True))
    elif args.action == "diff":
        print(diff(root, args.a, args.b))
    elif args.action == "promote":
        print(promote(root, args.version))
    elif args.action == "rollback":
        print(rollback(root))
    else:
        print(prune(root, args.keep))
    return 0
