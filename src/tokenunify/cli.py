"""The `tokenunify` command line: train, predict, segment, evaluate, view, demo, convert-checkpoint.

Every volume is named `PATH:DATASET`. A user error (bad input, an existing
output, a bad config) prints one line naming the file and the problem and
exits with status 2; nothing partial is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from tokenunify.errors import TokenUnifyError
from tokenunify.runtime import tune_runtime

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Self-supervised pretraining and neuron segmentation of 3D EM volumes.")

CONFIG_HELP = "YAML config; later KEY=VALUE arguments override it (e.g. train.steps=500)."
DEVICE_HELP = "auto (CUDA where present), cpu, cuda or cuda:N. Under torchrun each rank takes its local GPU."


@app.command(epilog="Example: tokenunify train --config configs/fib_medulla.yaml train.steps=2000 out_dir=runs/fib")
def train(
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE config overrides."),
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    resume: bool = typer.Option(False, help="Continue the run in out_dir from its last checkpoint."),
    overwrite: bool = typer.Option(False, help="Start again even if out_dir holds a run."),
    init: Path | None = typer.Option(None, help="Initialise the network from this checkpoint (fine-tuning)."),
    allow_mismatch: bool = typer.Option(False, help="With --init: keep tensors outside the task head that are missing from the checkpoint or differ in shape at their fresh initialisation instead of failing."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Train an affinity network on labelled EM (checkpoints, validation VOI/ARAND, loss PNG)."""
    from tokenunify.config import apply_overrides, from_dict, load_yaml
    from tokenunify.finetune.settings import TrainSettings
    from tokenunify.finetune.train import train as run_train

    raw = apply_overrides(load_yaml(config), list(overrides or []))
    if init is not None:
        raw["init"] = str(init)
    if allow_mismatch:
        raw["init_allow_mismatch"] = True
    settings = from_dict(TrainSettings, raw, str(config))
    summary = run_train(settings, resume=resume, overwrite=overwrite, progress=progress, device=device)
    # the init report was printed before the first step; every rank but 0 stays quiet
    if _is_main_rank():
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "init"}, indent=2, default=str))


@app.command(epilog="Example: tokenunify study -c configs/study_fib.yaml (add --quick for the 10-minute smoke run)")
def study(
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE config overrides (e.g. seeds=[0,1,2])."),
    config: Path = typer.Option(Path("configs/study_fib.yaml"), "--config", "-c", help=CONFIG_HELP),
    quick: bool = typer.Option(False, help="Apply the config's `quick` overrides: every stage, tiny budgets."),
    report_only: bool = typer.Option(False, help="Rebuild the report from finished stages; run nothing."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Scratch vs MAE vs autoregressive vs TokenUnify: pretrain, fine-tune, segment, score, report (resumable)."""
    from tokenunify.study.run_study import study as run_study

    report = run_study(config, list(overrides or []), quick=quick, report_only=report_only, progress=progress, device=device)
    meta = report["meta"]
    typer.echo(f"{meta['stages_finished']}/{meta['stages_planned']} stages finished; "
               f"report: {Path(meta['config']['report_dir']) / 'results.md'}")
    for check in report["target"]:
        typer.echo(f"target ({check['budget']}): {'holds' if check['holds'] else 'does not hold'}")


@app.command(epilog="Example: tokenunify pretrain --config configs/pretrain_fib.yaml schedule.kind=staged train.steps=600")
def pretrain(
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE config overrides."),
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    resume: bool = typer.Option(False, help="Continue the run in out_dir from its last checkpoint."),
    overwrite: bool = typer.Option(False, help="Start again even if out_dir holds a run."),
    progress: bool = typer.Option(True, help="Show a progress bar (loss, tokens/s)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
) -> None:
    """Token-prediction pretraining (random / next / next-all / TokenUnify) on unlabelled EM."""
    from tokenunify.config import apply_overrides, from_dict, load_yaml
    from tokenunify.pretrain.loop import pretrain as run_pretrain
    from tokenunify.pretrain.settings import PretrainSettings

    settings = from_dict(PretrainSettings, apply_overrides(load_yaml(config), list(overrides or [])), str(config))
    summary = run_pretrain(settings, resume=resume, overwrite=overwrite, progress=progress, device=device)
    if _is_main_rank():
        typer.echo(json.dumps(summary, indent=2, default=str))


@app.command(epilog="Example: tokenunify models")
def models() -> None:
    """List the TokenUnify size presets with their parameter counts (fine-tuning configuration)."""
    from tokenunify.models.tokenunify_net import list_presets
    from tokenunify.models.unet import build_unet, count_parameters

    typer.echo(f"{'preset':8s} {'mixer':6s} {'parameters':>14s}")
    for row in list_presets():
        typer.echo(f"{row['name']:8s} {row['mixer']:6s} {row['parameters']:>14,d}")
    typer.echo(f"{'unet':8s} {'conv':6s} {count_parameters(build_unet()):>14,d}  (baseline U-Net, default width)")


@app.command(epilog="Example: tokenunify predict --model runs/fib/checkpoints/best.pt --input data.h5:raw --output out.zarr:affs "
                    "--blockwise --workers 2 predict.bf16=false")
def predict(
    overrides: list[str] = typer.Argument(None, help="predict.KEY=VALUE (over the checkpoint's) or blockwise_predict.KEY=VALUE."),
    model: Path = typer.Option(..., help="Checkpoint written by `tokenunify train`."),
    input: str = typer.Option(..., "--input", "-i", help="Raw EM volume, PATH:DATASET."),
    output: str = typer.Option(..., "--output", "-o", help="Affinities to write, PATH:DATASET (zarr recommended)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; its predict: and blockwise_predict: sections are read."),
    block: tuple[int, int, int] | None = typer.Option(None, help="Network input block z y x (default: the checkpoint's predict.block)."),
    overlap: tuple[int, int, int] | None = typer.Option(None, help="Overlap between network blocks z y x."),
    bf16: bool | None = typer.Option(None, "--bf16/--fp32", help="bf16 autocast (on the chosen device)."),
    blockwise: bool = typer.Option(False, help="On daisy workers, one model each: resumable, output to zarr."),
    workers: int | None = typer.Option(None, help="With --blockwise: worker processes."),
    region: tuple[int, int, int] | None = typer.Option(None, help="With --blockwise: voxels z y x each daisy block writes."),
    context: tuple[int, int, int] | None = typer.Option(None, help="With --blockwise: voxels z y x read around each region."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    device: str = typer.Option("auto", help="auto (CUDA where present), cpu, cuda or cuda:N."),
) -> None:
    """Predict affinities blockwise over a volume of any size (Gaussian-blended overlaps, output to zarr)."""
    from tokenunify.config import from_dict

    sections = _sections(config, overrides, ("predict", "blockwise_predict"))
    settings = {**sections["predict"], "block": block, "overlap": overlap, "bf16": bf16}
    if blockwise:
        from tokenunify.blockwise.predict import PredictOptions, predict_blockwise_daisy

        bw = sections["blockwise_predict"]
        for key, value in (("workers", workers), ("region", region), ("context", context)):
            if value is not None:
                bw[key] = list(value) if isinstance(value, tuple) else value
        options = from_dict(PredictOptions, bw, str(config) if config else "predict options")
        result = predict_blockwise_daisy(model, input, output, options, overrides=settings, device=device,
                                         overwrite=overwrite, progress=progress)
        counts = result["blocks"]
        typer.echo(f"predict: {counts['computed']} of {counts['blocks']} blocks computed, {counts['skipped']} already "
                   f"done; work folder {result['work_dir']}")
    else:
        if workers is not None or region or context:
            raise typer.BadParameter("--workers, --region and --context need --blockwise")
        from tokenunify.predict.run import predict_volume

        result = predict_volume(model, input, output, overwrite=overwrite, progress=progress, device=device,
                                overrides=settings)
    typer.echo(f"wrote {output} {tuple(result['shape'])} in {result['seconds']:.1f} s ({result['voxels_per_second']:.0f} voxels/s)")


def _sections(config: Path | None, overrides: list[str] | None, names: tuple[str, ...]) -> dict[str, dict]:
    """The config sections `names` of a YAML file (any other section is ignored) with KEY=VALUE overrides applied."""
    from tokenunify.config import apply_overrides, load_yaml
    from tokenunify.errors import ConfigError

    overrides = list(overrides or [])
    for item in overrides:
        if item.split("=", 1)[0].split(".")[0] not in names:
            raise ConfigError(f"override '{item}': this command reads only the {', '.join(names)} section(s)")
    raw = apply_overrides(load_yaml(config) if config else {}, overrides)
    return {name: dict(raw.get(name) or {}) for name in names}


@app.command(epilog="Example: tokenunify segment --affs out.zarr:affs --output out.zarr:seg --gt data.h5:labels "
                    "--blockwise --workers 2 segment.min_seed_distance=6")
def segment(
    overrides: list[str] = typer.Argument(None, help="segment.KEY=VALUE or blockwise.KEY=VALUE overrides."),
    affs: str = typer.Option(..., help="Affinities, PATH:DATASET (C,z,y,x)."),
    output: str = typer.Option(..., "--output", "-o", help="Segmentation to write, PATH:DATASET (zarr with --blockwise)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config; its segment: and blockwise: sections are read."),
    method: str | None = typer.Option(None, help="waterz (fragments + agglomeration) or mws (mutex watershed)."),
    fragments: str | None = typer.Option(None, help="Watershed fragments: 2d per section (anisotropic ssTEM) or 3d (isotropic)."),
    threshold: float | None = typer.Option(None, help="One agglomeration threshold (mws: the bias)."),
    thresholds: list[float] | None = typer.Option(None, help="Thresholds to sweep (with --gt)."),
    gt: str | None = typer.Option(None, help="Ground truth, PATH:DATASET: sweep, score and keep the best threshold."),
    blockwise: bool = typer.Option(False, help="Block by block on daisy workers: volumes of any size, resumable."),
    workers: int | None = typer.Option(None, help="With --blockwise: worker processes."),
    block: tuple[int, int, int] | None = typer.Option(None, help="With --blockwise: block shape z y x (voxels)."),
    context: tuple[int, int, int] | None = typer.Option(None, help="With --blockwise: context z y x read around each block."),
    raw: str | None = typer.Option(None, help="Raw EM for the preview PNG."),
    preview: Path | None = typer.Option(None, help="Write a PNG preview (raw, affinities, segmentation)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output (and, blockwise, its work folder)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Turn affinities into a neuron segmentation (watershed + waterz, or mutex watershed)."""
    from tokenunify.config import from_dict
    from tokenunify.evaluate.sweep import format_markdown_table
    from tokenunify.postprocess.settings import SegmentSettings

    sections = _sections(config, overrides, ("segment", "blockwise"))
    cfg = sections["segment"]
    for key, value in (("method", method), ("fragments", fragments), ("thresholds", thresholds or None)):
        if value is not None:
            cfg[key] = list(value) if isinstance(value, list) else value
    if cfg.get("method") == "mws" and threshold is not None:
        cfg["mws_bias"] = threshold
    where = str(config) if config else "segment options"
    settings = from_dict(SegmentSettings, cfg, where)
    chosen = None if settings.method == "mws" else threshold
    if blockwise:
        from tokenunify.blockwise.segment import BlockwiseOptions, segment_blockwise

        bw = sections["blockwise"]
        for key, value in (("workers", workers), ("block", block), ("context", context)):
            if value is not None:
                bw[key] = list(value) if isinstance(value, tuple) else value
        options = from_dict(BlockwiseOptions, bw, where)
        result = segment_blockwise(affs, output, settings, options, gt, chosen, overwrite, progress)
        for name, counts in result["blocks"].items():
            typer.echo(f"{name}: {counts['computed']} of {counts['blocks']} blocks computed, "
                       f"{counts['skipped']} already done, {result['seconds'][name]:.1f} s")
        typer.echo(f"agglomerate: {result['n_fragments']} fragments, {result['n_edges']} edges, "
                   f"{result['seconds']['agglomerate']:.1f} s; work folder {result['work_dir']}")
    else:
        if workers is not None or block or context:
            raise typer.BadParameter("--workers, --block and --context need --blockwise")
        from tokenunify.postprocess.run import segment_volume

        result = segment_volume(affs, output, settings, gt, chosen, overwrite, progress)
    if gt is not None:
        typer.echo(format_markdown_table(result["rows"], result["best"]))
    typer.echo(f"wrote {output}: {result['best']['n_seg_ids']} segments at threshold {result['best']['threshold']}")
    if preview is not None:
        _segment_preview(preview, raw, affs, output, gt)


def _segment_preview(path: Path, raw_spec: str | None, affs_spec: str, seg_spec: str, gt_spec: str | None) -> None:
    """A PNG of the middle section, read from the files (one section only: the volumes may not fit in memory)."""
    import numpy as np

    from tokenunify.io import open_volume
    from tokenunify.offsets import unit_affinities
    from tokenunify.report.plots import preview_png

    affs_vol = open_volume(affs_spec)
    mid = affs_vol.shape[1] // 2
    section = (slice(mid, mid + 1),)
    affs = unit_affinities(affs_vol[(slice(0, 3), *section)])
    raw = np.asarray(open_volume(raw_spec)[section]) if raw_spec else affs.mean(axis=0)
    gt = np.asarray(open_volume(gt_spec)[section]) if gt_spec else None
    seg = np.asarray(open_volume(seg_spec)[section])
    preview_png(path, raw, affs, seg, gt, z=0, title="segment", z_label=mid)
    typer.echo(f"preview: {path}")


@app.command(epilog="Example: tokenunify evaluate --seg out.zarr:seg --gt data.h5:labels --json")
def evaluate(
    seg: str = typer.Option(..., help="Segmentation, PATH:DATASET."),
    gt: str = typer.Option(..., help="Ground truth, PATH:DATASET (label 0 is ignored)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Score a segmentation: VOI split/merge (bits), ARAND and CREMI score."""
    from tokenunify.evaluate.run_evaluate import evaluate_volumes

    scores = evaluate_volumes(seg, gt)
    if as_json:
        typer.echo(json.dumps(scores))
        return
    for key in ("voi_split", "voi_merge", "voi", "arand", "cremi_score", "n_seg_ids", "n_gt_ids"):
        value = scores[key]
        typer.echo(f"{key:12s} {value:.4f}" if isinstance(value, float) else f"{key:12s} {value}")


@app.command("convert-checkpoint", epilog="Example: tokenunify convert-checkpoint old/best.pt best_safe.pt")
def convert_checkpoint(
    old: Path = typer.Argument(..., metavar="OLD", help="Checkpoint to convert; it is unpickled in full, so only a file you trust."),
    new: Path = typer.Argument(..., metavar="NEW", help="Where to write the converted checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace an existing NEW."),
) -> None:
    """Rewrite a TRUSTED old checkpoint so it loads weights-only (tensors and plain data; no code).

    Checkpoints are loaded weights-only because unpickling anything else can run
    code. This command loads OLD with the full unpickler, which runs whatever code
    the file carries: running it is your statement that you trust OLD.
    """
    from tokenunify.io.convert import convert_checkpoint as run_convert

    result = run_convert(old, new, overwrite=overwrite)
    changed = ", ".join(f"{n} {kind}" for kind, n in sorted(result["conversions"].items())) or "nothing changed"
    typer.echo(f"wrote {result['path']} ({changed})")


@app.command(epilog="Example: tokenunify demo --out demo_out   (or --unet for the plain U-Net pipeline)")
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Folder for the demo's data, run and pictures."),
    unet: bool = typer.Option(False, help="The plain pipeline instead: U-Net training, blockwise predict, segment."),
    steps: int = typer.Option(400, help="Training steps of the --unet demo."),
    overwrite: bool = typer.Option(False, help="Replace an earlier demo in the same folder."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    override: list[str] = typer.Argument(None, help="KEY=VALUE overrides of the TokenUnify demo's study config."),
) -> None:
    """Synthetic EM -> TokenUnify pretraining -> fine-tuning on a few sections -> segmentation, against scratch."""
    from tokenunify.demo import run_demo, run_tokenunify_demo

    if unet:
        run_demo(out, steps=steps, overwrite=overwrite, progress=progress)
    else:
        run_tokenunify_demo(out, overwrite=overwrite, progress=progress, overrides=override or [])


@app.command(epilog="Example: tokenunify view --raw data.h5:raw --affs out.zarr:affs --seg out.zarr:seg --gt data.h5:labels")
def view(
    raw: str | None = typer.Option(None, help="Raw EM, PATH:DATASET."),
    affs: str | None = typer.Option(None, help="Affinities (C,z,y,x), shown as RGB."),
    fragments: str | None = typer.Option(None, help="Fragments, e.g. a blockwise run's out.zarr.seg.work/fragments.zarr:fragments."),
    seg: str | None = typer.Option(None, help="Segmentation, PATH:DATASET."),
    gt: str | None = typer.Option(None, help="Ground truth labels, PATH:DATASET."),
    bind: str = typer.Option("127.0.0.1", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(0, help="Port (0: a free one)."),
    timeout: float | None = typer.Option(None, help="Stop after this many seconds (default: at Ctrl-C)."),
) -> None:
    """Browse volumes in a local neuroglancer viewer (lazily read: any size); prints the URL."""
    from tokenunify.view import serve

    layers = {kind: spec for kind, spec in (("raw", raw), ("affs", affs), ("fragments", fragments),
                                            ("segmentation", seg), ("gt", gt)) if spec}
    serve(layers, bind=bind, port=port, timeout=timeout, echo=lambda line: typer.echo(line, nl=True) or sys.stdout.flush())


def _is_main_rank() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    tune_runtime()
    try:
        app(standalone_mode=False)
    except TokenUnifyError as err:
        import os

        # under torchrun every rank may fail the same way; say which one spoke
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        typer.echo(f"error: {rank}{err}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.exceptions.TyperException as err:  # usage errors carry their own exit code
        show = getattr(err, "show", None)  # typer's bundled click exceptions print their usage line
        if callable(show):
            show()
        else:
            typer.echo(f"error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
