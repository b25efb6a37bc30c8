"""Does a study run's held-out score depend on the held-out volume's contrast?

The held-out volume of the FIB study (gala_fib_train.h5) is brighter and has
about 1.7x the intensity spread of the medulla cube the runs train on, and
the networks see raw intensities scaled by a fixed 1/255 (on purpose: see
`predict.inference.to_unit_float`). For every finished run of a study
folder this scores the held-out volume twice at the threshold the run's
validation chose, with the study's scorer and jitter (`score_holdout`, as
the study does): as it is, and linearly mapped to the mean and standard
deviation of the reference volume (default: the run's own training raw,
its `data.raw` over `data.train_z`). A large gap says the run's held-out
figure measures its sensitivity to contrast more than its segmentation.

    python benchmarks/heldout_contrast.py runs/study/finetune [--shard 0/2] [--json out.json]
    python benchmarks/heldout_contrast.py --merge a.json b.json   # the per-arm table of shards
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_settings import finished_runs  # noqa: E402

from tokenunify.config import from_dict, load_yaml  # noqa: E402
from tokenunify.finetune.holdout import open_holdout, score_holdout  # noqa: E402
from tokenunify.finetune.settings import TrainSettings  # noqa: E402
from tokenunify.io import open_volume  # noqa: E402
from tokenunify.predict.run import load_model  # noqa: E402


def match_moments(raw: np.ndarray, mean: float, std: float) -> np.ndarray:
    """`raw` mapped linearly to the given mean and standard deviation, clipped to its dtype's range.

    Integer input keeps its dtype, so the network sees it through the same
    fixed scaling as any other volume.
    """
    x = raw.astype(np.float64)
    spread = x.std()
    if spread == 0:
        raise ValueError("the volume has one intensity; there is no contrast to match")
    out = (x - x.mean()) / spread * std + mean
    if np.issubdtype(raw.dtype, np.integer):
        info = np.iinfo(raw.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(raw.dtype)
    return out.astype(raw.dtype)


def summary(rows: list[dict[str, Any]]) -> str:
    """Per arm: runs, mean ± std held-out VOI and mean ARAND, as is and matched."""
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        arms.setdefault(r["run"].split("/")[0], []).append(r)
    lines = ["| arm | runs | held-out VOI as is | matched | held-out ARAND as is | matched |", "|---|---:|---:|---:|---:|---:|"]
    for arm, group in sorted(arms.items()):
        cell = lambda kind, metric: np.array([r[kind][metric] for r in group])
        spread = lambda v: f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"
        lines.append(f"| {arm} | {len(group)} | {spread(cell('as_is', 'voi'))} | {spread(cell('matched', 'voi'))} | "
                     f"{cell('as_is', 'arand').mean():.3f} | {cell('matched', 'arand').mean():.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", help="a study's finetune/ folder")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th run from the i-th")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--merge", type=Path, nargs="+", help="print the table of these --json files; run nothing")
    args = parser.parse_args()
    if args.merge:
        print(summary([r for p in args.merge for r in json.loads(p.read_text())]))
        return
    if args.folder is None:
        raise SystemExit("give a study's finetune/ folder, or --merge")
    index, count = (int(x) for x in args.shard.split("/"))
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for run in finished_runs(args.folder)[index::count]:
        settings = from_dict(TrainSettings, load_yaml(run / "config.yaml"))
        held = open_holdout(settings)
        if held is None:
            raise SystemExit(f"{run}: no held-out volume in its config (data.test_raw)")
        raw, gt = held
        z = settings.data.train_z
        reference = np.asarray(open_volume(settings.data.raw)[slice(*z) if z else slice(None)], dtype=np.float64)
        threshold = float(json.loads((run / "result.json").read_text())["final"]["threshold"])
        model, _ = load_model(run / "checkpoints" / "last.pt", "cpu")
        figures = {}
        for name, volume in (("as_is", raw), ("matched", match_moments(raw, reference.mean(), reference.std()))):
            row = score_holdout(model, volume, gt, settings, threshold)
            figures[name] = {"voi": float(row["voi"]), "arand": float(row["arand"])}
        rows.append({"run": str(run.relative_to(args.folder)), "threshold": threshold,
                     "held_out": {"mean": float(raw.mean()), "std": float(raw.std())},
                     "reference": {"mean": float(reference.mean()), "std": float(reference.std())}, **figures})
        a, m = figures["as_is"], figures["matched"]
        print(f"{rows[-1]['run']} threshold {threshold}: held-out as is VOI {a['voi']:.3f} ARAND {a['arand']:.3f}; "
              f"matched to the training raw (mean {reference.mean():.1f}, std {reference.std():.1f}; held-out "
              f"{raw.mean():.1f}, {raw.std():.1f}) VOI {m['voi']:.3f} ARAND {m['arand']:.3f}", flush=True)
    print(summary(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
