"""Blockwise segmentation against the whole-volume one, resuming, and failures."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from tokenunify.blockwise.runner import BlockFailedError, work_dir_for
from tokenunify.blockwise.segment import BlockwiseOptions, segment_blockwise
from tokenunify.data.synthetic_affinities import NEAREST_OFFSETS, SyntheticAffinities
from tokenunify.errors import InputError, OutputError
from tokenunify.evaluate.metrics import evaluate_segmentation
from tokenunify.io import parse_spec, write_volume
from tokenunify.postprocess.run import segment_volume
from tokenunify.postprocess.settings import SegmentSettings

# a shape no block below divides: partial blocks on every far face
SHAPE = (30, 100, 90)
SETTINGS = SegmentSettings(fragments="2d", min_seed_distance=4, thresholds=[0.2, 0.4, 0.5, 0.6])
BLOCK = (16, 48, 48)
CONTEXT = (4, 16, 16)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """Synthetic affinities and their labels in one zarr store; returns (folder, labels)."""
    folder = tmp_path_factory.mktemp("blockwise")
    syn = SyntheticAffinities(SHAPE, seed=2)
    write_volume(f"{folder}/v.zarr:affs", syn.affinities(), (40, 8, 8), attrs={"offsets": NEAREST_OFFSETS})
    labels = syn.labels()
    write_volume(f"{folder}/v.zarr:gt", labels, (40, 8, 8))
    return folder, labels


@pytest.fixture(scope="module")
def whole(volume):
    """The whole-volume (in-memory) segmentation and its best row."""
    folder, _ = volume
    result = segment_volume(f"{folder}/v.zarr:affs", f"{folder}/v.zarr:whole", SETTINGS, f"{folder}/v.zarr:gt",
                            progress=False)
    return result["segmentation"], result["best"]


def _run(folder, name, options, settings=SETTINGS, gt=True, **kw):
    result = segment_blockwise(f"{folder}/v.zarr:affs", f"{folder}/v.zarr:{name}", settings, options,
                               f"{folder}/v.zarr:gt" if gt else None, progress=False, **kw)
    return result, zarr.open_array(store=f"{folder}/v.zarr/{name}", mode="r")[:]


def test_one_block_is_the_whole_volume_result(volume, whole):
    folder, _ = volume
    result, seg = _run(folder, "one", BlockwiseOptions(block=SHAPE, multiprocessing=False))
    whole_seg, whole_best = whole
    # the same fragments and the same merges: the same partition, the same scores
    assert evaluate_segmentation(seg, whole_seg)["voi"] == 0.0
    assert result["best"]["threshold"] == whole_best["threshold"]
    for key in ("voi_split", "voi_merge", "arand", "n_seg_ids"):
        assert result["best"][key] == pytest.approx(whole_best[key], abs=1e-12)


def test_blocks_stay_close_to_the_whole_volume(volume, whole):
    folder, labels = volume
    result, seg = _run(folder, "blocks", BlockwiseOptions(block=BLOCK, context=CONTEXT, multiprocessing=False))
    whole_seg, whole_best = whole
    grid = [int(np.ceil(s / b)) for s, b in zip(SHAPE, BLOCK)]
    assert result["blocks"]["fragments"]["completed"] == int(np.prod(grid)) == 12
    # partial blocks on the far faces were processed: every voxel has a segment
    assert seg.shape == SHAPE and (seg > 0).all()
    scores = evaluate_segmentation(seg, labels)
    assert abs(scores["voi"] - whole_best["voi"]) < 0.05
    assert abs(scores["arand"] - whole_best["arand"]) < 0.02
    assert evaluate_segmentation(seg, whole_seg)["voi"] < 0.1


def test_scores_from_block_counts_equal_the_written_output(volume):
    folder, labels = volume
    result, seg = _run(folder, "scored", BlockwiseOptions(block=BLOCK, context=CONTEXT, multiprocessing=False))
    direct = evaluate_segmentation(seg, labels)
    for key in ("voi_split", "voi_merge", "voi", "arand", "n_seg_ids", "n_gt_ids", "n_voxels"):
        assert result["best"][key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12)
    # the sweep is scored at every threshold, and the best one is kept
    assert [r["threshold"] for r in result["rows"]] == SETTINGS.thresholds
    assert result["best"]["voi"] == min(r["voi"] for r in result["rows"])
    attrs = zarr.open_array(store=f"{folder}/v.zarr/scored", mode="r").attrs
    assert attrs["threshold"] == result["best"]["threshold"] and attrs["voxel_size"] == [40, 8, 8]


def test_two_workers_write_the_same_bytes_as_one_process(volume):
    folder, _ = volume
    _, serial = _run(folder, "serial", BlockwiseOptions(block=BLOCK, context=CONTEXT, multiprocessing=False))
    result, parallel = _run(folder, "parallel", BlockwiseOptions(block=BLOCK, context=CONTEXT, workers=2))
    assert result["blocks"]["edges"]["completed"] == 12
    np.testing.assert_array_equal(parallel, serial)


def test_mutex_watershed_on_the_graph(volume):
    folder, labels = volume
    settings = SegmentSettings(method="mws", fragments="2d", min_seed_distance=4, mws_bias=-0.5)
    result, seg = _run(folder, "mws", BlockwiseOptions(block=BLOCK, context=CONTEXT, multiprocessing=False), settings)
    assert result["rows"][0]["threshold"] == -0.5
    # mutex watershed on fragments: far better than keeping the fragments or merging all
    fragments = zarr.open_array(store=f"{result['work_dir']}/fragments.zarr/fragments", mode="r")[:]
    assert evaluate_segmentation(seg, labels)["voi"] < 0.5 * evaluate_segmentation(fragments, labels)["voi"]
    assert 20 < result["n_segments"] < result["n_fragments"]


def test_without_ground_truth_one_threshold(volume):
    folder, _ = volume
    result, seg = _run(folder, "nogt", BlockwiseOptions(block=BLOCK, context=CONTEXT, multiprocessing=False),
                       gt=False, threshold=0.4)
    assert result["rows"] == [{"threshold": 0.4}] and result["best"]["n_seg_ids"] == len(np.unique(seg))


def test_a_failing_block_stops_the_run_and_the_rest_resumes(volume, tmp_path):
    folder, _ = volume
    syn = SyntheticAffinities(SHAPE, seed=2)
    affs = syn.affinities()
    broken = affs.copy()
    # in block (1, 1, 1) of the 2 x 3 x 2 grid (index 1*3*2 + 1*2 + 1 = 9), outside every other block's context
    broken[:, 25, 70, 75] = np.nan
    write_volume(f"{tmp_path}/b.zarr:affs", broken, (40, 8, 8), attrs={"offsets": NEAREST_OFFSETS})
    spec = f"{tmp_path}/b.zarr:affs"
    options = BlockwiseOptions(block=BLOCK, context=CONTEXT, workers=2, retries=1)
    with pytest.raises(BlockFailedError, match=r"fragments: 1 block\(s\) failed.*block 9 .*NaN"):
        segment_blockwise(spec, f"{tmp_path}/b.zarr:seg", SETTINGS, options, progress=False, threshold=0.4)
    assert not (tmp_path / "b.zarr" / "seg").exists()  # no partial output
    work = work_dir_for(parse_spec(f"{tmp_path}/b.zarr:seg"))
    done = zarr.open_array(store=str(work / "tracking" / "fragments" / "done"), mode="r")[:]
    assert int(done.sum()) == 11
    # repaired input, same config: only the failed block is computed again
    write_volume(spec, affs, (40, 8, 8), attrs={"offsets": NEAREST_OFFSETS}, overwrite=True)
    result = segment_blockwise(spec, f"{tmp_path}/b.zarr:seg", SETTINGS, options, progress=False, threshold=0.4)
    assert result["blocks"]["fragments"]["skipped"] == 11 and result["blocks"]["fragments"]["computed"] == 1
    _run(folder, "clean", BlockwiseOptions(block=BLOCK, context=CONTEXT, multiprocessing=False),
                    gt=False, threshold=0.4)
    np.testing.assert_array_equal(zarr.open_array(store=f"{tmp_path}/b.zarr/seg", mode="r")[:],
                                  zarr.open_array(store=f"{folder}/v.zarr/clean", mode="r")[:])


def test_a_changed_config_is_refused(volume, tmp_path):
    folder, _ = volume
    spec = f"{folder}/v.zarr:affs"
    options = BlockwiseOptions(block=BLOCK, context=CONTEXT, multiprocessing=False)
    out = f"{tmp_path}/c.zarr:seg"
    work = work_dir_for(parse_spec(out))
    # an interrupted run left its work folder; the output was never committed
    segment_blockwise(spec, out, SETTINGS, options, progress=False, threshold=0.4)
    import shutil

    shutil.rmtree(tmp_path / "c.zarr" / "seg")
    with pytest.raises(InputError, match=r"different config \(block changed\)"):
        segment_blockwise(spec, out, SETTINGS, BlockwiseOptions(block=(16, 32, 32), context=CONTEXT,
                                                                 multiprocessing=False), progress=False, threshold=0.4)
    with pytest.raises(InputError, match="thresholds"):
        segment_blockwise(spec, out, SETTINGS, options, progress=False, threshold=0.5)
    assert work.exists()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"options": BlockwiseOptions(block=BLOCK, context=(30, 4, 4))}, InputError, "context .* not smaller"),
        ({"options": BlockwiseOptions(block=(0, 8, 8))}, InputError, "block shape must be three positive"),
        ({"output": "seg.h5:seg"}, InputError, "written to zarr"),
        ({"gt": "gt_small"}, InputError, "shape .* differs"),
        ({"gt": "gt_voxel"}, InputError, "voxel size"),
        ({"output": "v.zarr:gt"}, OutputError, "already exists"),
    ],
)
def test_bad_input_is_refused_before_any_work(volume, kwargs, error, message):
    folder, labels = volume
    write_volume(f"{folder}/v.zarr:gt_small", labels[:, :50], (40, 8, 8), overwrite=True)
    write_volume(f"{folder}/v.zarr:gt_voxel", labels, (30, 8, 8), overwrite=True)
    output = kwargs.get("output", "v.zarr:bad")
    gt = kwargs.get("gt")
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(error, match=message):
        segment_blockwise(f"{folder}/v.zarr:affs", f"{folder}/{output}", SETTINGS,
                          kwargs.get("options", BlockwiseOptions(block=BLOCK, multiprocessing=False)),
                          f"{folder}/v.zarr:{gt}" if gt else None, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == before  # no work folder, no output


def test_an_unwritable_work_folder_is_refused(volume, tmp_path):
    folder, _ = volume
    (tmp_path / "o.zarr.seg.work").write_text("a file where the work folder goes")
    with pytest.raises(OutputError, match="cannot create the work folder"):
        segment_blockwise(f"{folder}/v.zarr:affs", f"{tmp_path}/o.zarr:seg", SETTINGS,
                          BlockwiseOptions(block=BLOCK, multiprocessing=False), progress=False)


def test_uint8_affinities_mean_the_same_in_both_paths(volume, whole):
    folder, _ = volume
    affs = SyntheticAffinities(SHAPE, seed=2).affinities()
    write_volume(f"{folder}/v.zarr:affs8", np.round(affs * 255).astype(np.uint8), (40, 8, 8),
                 attrs={"offsets": NEAREST_OFFSETS}, overwrite=True)
    in_memory = segment_volume(f"{folder}/v.zarr:affs8", f"{folder}/v.zarr:whole8", SETTINGS, f"{folder}/v.zarr:gt",
                               progress=False)
    result = segment_blockwise(f"{folder}/v.zarr:affs8", f"{folder}/v.zarr:one8", SETTINGS,
                               BlockwiseOptions(block=SHAPE, multiprocessing=False), f"{folder}/v.zarr:gt",
                               progress=False)
    seg = zarr.open_array(store=f"{folder}/v.zarr/one8", mode="r")[:]
    assert evaluate_segmentation(seg, in_memory["segmentation"])["voi"] == 0.0
    # 0..255 is read as 0..1: the same threshold wins as on the float affinities, at nearly the same score
    assert in_memory["best"]["threshold"] == result["best"]["threshold"] == whole[1]["threshold"]
    assert abs(in_memory["best"]["voi"] - whole[1]["voi"]) < 0.05
