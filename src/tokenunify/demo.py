"""`tokenunify demo`: the whole pipeline on synthetic EM it makes itself.

Synthetic labelled volumes (train and a separate validation volume) ->
affinity training -> blockwise prediction to zarr -> watershed + waterz sweep
-> VOI / ARAND table, sweep plot and PNG previews. No download, no real data.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tokenunify.config import from_dict
from tokenunify.data.synthetic import make_synthetic_volume
from tokenunify.errors import OutputError
from tokenunify.evaluate.sweep import format_markdown_table
from tokenunify.finetune.settings import TrainSettings
from tokenunify.finetune.train import train
from tokenunify.io import open_volume, write_volume
from tokenunify.postprocess.run import segment_volume
from tokenunify.predict.run import predict_volume
from tokenunify.report.plots import plot_sweep, preview_png

DEMO_SHAPE = (32, 192, 192)
DEMO_VOXEL = (40, 8, 8)


def demo_settings(out: Path, steps: int) -> TrainSettings:
    """The packaged demo config, pointed at the demo's own data."""
    raw = yaml.safe_load(resources.files("tokenunify.configs").joinpath("demo.yaml").read_text())
    data = out / "data.h5"
    raw["data"] = {"raw": f"{data}:train/raw", "labels": f"{data}:train/labels",
                   "val_raw": f"{data}:val/raw", "val_labels": f"{data}:val/labels"}
    raw["train"]["steps"] = steps
    raw["train"]["val_every"] = max(1, steps // 2)
    raw["out_dir"] = str(out / "run")
    return from_dict(TrainSettings, raw, "demo.yaml")


def run_demo(out: Path, steps: int = 400, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the demo into `out`; returns the best validation scores."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(out, "already holds files; pass --overwrite to replace the demo")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"1/5 synthetic EM: train and validation volumes {DEMO_SHAPE} at {DEMO_VOXEL} nm")
    data = out / "data.h5"
    for name, seed in (("train", 1), ("val", 2)):
        vol = make_synthetic_volume(DEMO_SHAPE, DEMO_VOXEL, seed=seed, missing_section_prob=0.03, misalignment_prob=0.03)
        write_volume(f"{data}:{name}/raw", vol.raw, vol.voxel_size)
        write_volume(f"{data}:{name}/labels", vol.labels, vol.voxel_size)
    settings = demo_settings(out, steps)
    print(f"2/5 training a U-Net for {steps} steps")
    summary = train(settings, progress=progress)
    print(f"3/5 blockwise prediction of the validation volume -> {out / 'val.zarr'}:affs")
    pred = predict_volume(summary["checkpoint"], f"{data}:val/raw", f"{out / 'val.zarr'}:affs", progress=progress)
    print(f"    {pred['voxels_per_second']:.0f} voxels/s")
    print("4/5 watershed fragments + waterz threshold sweep")
    result = segment_volume(f"{out / 'val.zarr'}:affs", f"{out / 'val.zarr'}:seg", settings.segment, gt_spec=f"{data}:val/labels", progress=progress)
    print("5/5 evaluation on the validation volume (VOI in bits; label 0 ignored)")
    table = format_markdown_table(result["rows"], result["best"])
    print(table)
    best = result["best"]
    plot_sweep(result["rows"], out / "sweep.png", title="demo: validation threshold sweep")
    raw = open_volume(f"{data}:val/raw").read()
    gt = open_volume(f"{data}:val/labels").read()
    preview_png(out / "preview.png", raw, result["affinities"], result["segmentation"], gt, title="demo validation")
    (out / "results.md").write_text(f"# demo results\n\n{table}\n")
    (out / "results.json").write_text(json.dumps({"best": best, "rows": result["rows"], "train": {k: v for k, v in summary.items() if k != "init"}}, indent=2, default=str))
    print(f"best threshold {best['threshold']}: VOI {best['voi']:.3f} (split {best['voi_split']:.3f}, merge {best['voi_merge']:.3f}), ARAND {best['arand']:.3f}")
    print(f"pictures: {out / 'preview.png'}, {out / 'sweep.png'}, {out / 'run' / 'loss.png'}")
    return best
