"""`tokenunify demo`: the method and the pipeline on synthetic EM the demo makes itself.

The default (`run_tokenunify_demo`) shows the method: unlabelled synthetic
volumes -> TokenUnify pretraining (random, next, next-all token prediction)
-> fine-tuning on a few labelled sections -> segmentation of held-back
sections, against the same network fine-tuned from scratch for the same
steps. It runs as a small `tokenunify study` (packaged config
`demo_study.yaml`), so it writes the study's report, curves and previews.

`run_demo` (`tokenunify demo --unet`) is the plain pipeline: U-Net training
-> blockwise prediction to zarr -> watershed + waterz sweep -> VOI / ARAND
table, sweep plot and PNG previews. No download, no real data.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tokenunify.config import apply_overrides, from_dict
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


def _fresh_folder(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(out, "already holds files; pass --overwrite to replace the demo")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out


#: Labelled synthetic volume of the TokenUnify demo: z 0-7 are the few labelled
#: training sections, z 16-47 are held back for validation (cross-fitted halves).
TOKENUNIFY_LABELLED = (48, 160, 160)
TOKENUNIFY_TRAIN_Z = (0, 8)
TOKENUNIFY_VAL_Z = (16, 48)


def run_tokenunify_demo(out: Path, overwrite: bool = False, progress: bool = True,
                        overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Pretrain, fine-tune and segment with and without pretraining on synthetic EM; returns the study report."""
    from tokenunify.study.run_study import study
    from tokenunify.study.settings import StudySettings

    out = Path(out)
    data = out / "data.h5"
    raw = yaml.safe_load(resources.files("tokenunify.configs").joinpath("demo_study.yaml").read_text())
    raw["pretrain"]["data"] = {"volumes": [f"{data}:unlabelled_a/raw", f"{data}:unlabelled_b/raw"]}
    raw["finetune"]["data"] = {"raw": f"{data}:labelled/raw", "labels": f"{data}:labelled/labels",
                               "val_z": list(TOKENUNIFY_VAL_Z)}
    raw["budgets"][0]["train_z"] = list(TOKENUNIFY_TRAIN_Z)
    raw.update(out_dir=str(out / "study"), report_dir=str(out / "report"), pretrain_cache="")
    # a bad override fails here, before the folder is touched or any data is made
    from_dict(StudySettings, apply_overrides(raw, list(overrides)), "demo overrides")
    out = _fresh_folder(out, overwrite)
    print(f"1/4 synthetic EM at {DEMO_VOXEL} nm: two unlabelled volumes {DEMO_SHAPE}, one labelled "
          f"{TOKENUNIFY_LABELLED} (training on z {TOKENUNIFY_TRAIN_Z[0]}-{TOKENUNIFY_TRAIN_Z[1] - 1} only)")
    for name, seed in (("unlabelled_a", 11), ("unlabelled_b", 12)):
        vol = make_synthetic_volume(DEMO_SHAPE, DEMO_VOXEL, seed=seed, missing_section_prob=0.03, misalignment_prob=0.03)
        write_volume(f"{data}:{name}/raw", vol.raw, vol.voxel_size)
    vol = make_synthetic_volume(TOKENUNIFY_LABELLED, DEMO_VOXEL, seed=13, missing_section_prob=0.03,
                                misalignment_prob=0.03)
    write_volume(f"{data}:labelled/raw", vol.raw, vol.voxel_size)
    write_volume(f"{data}:labelled/labels", vol.labels, vol.voxel_size)
    config = out / "demo_study.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    print(f"2/4 pretraining the TokenUnify network ({raw['pretrain']['model']['preset']}, "
          f"{raw['pretrain']['model']['mixer']}) for {raw['pretrain']['train']['steps']} steps, "
          f"then 3/4 fine-tuning it and the same network from scratch for {raw['finetune']['train']['steps']} steps")
    report = study(config, list(overrides), progress=progress)
    print("4/4 validation on z 16-47 (threshold chosen on one half, scored on the other; VOI in bits)")
    for e in report["summary"]:
        print(f"    {e['arm']:10s} VOI {e['cf_voi_mean']:.3f} (split {e['cf_voi_split_mean']:.3f}, "
              f"merge {e['cf_voi_merge_mean']:.3f}), ARAND {e['cf_arand_mean']:.3f}")
    tu = next(e for e in report["summary"] if e["arm"] == "tokenunify")
    print(f"    TokenUnify pretraining changes the VOI by {tu['voi_vs_scratch_pct']:+.1f}% against scratch "
          "(one seed on synthetic data: a demonstration, not a measurement)")
    print(f"report: {out / 'report' / 'results.md'}; previews: {out / 'study' / 'finetune'}/*/*/*/s0/val_preview.png, "
          f"{out / 'study' / 'pretrain'}/tokenunify/*/s0/*.png")
    return report


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
    """Run the U-Net pipeline demo into `out`; returns the best validation scores."""
    out = _fresh_folder(out, overwrite)
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
