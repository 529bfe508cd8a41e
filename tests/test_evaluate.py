"""jobs/evaluate.py and pix2pix.evaluation: metrics by hand, raw and prepared input, paper mode,
the JSON line and grid, one-line errors, and the real Recife val split."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pix2pix import checkpoint, cli, storage
from pix2pix.demo import write_pairs
from pix2pix.evaluation import (
    EvaluateOptions,
    evaluate,
    evaluate_records,
    open_split,
)
from pix2pix.model.export import ExportInfo
from pix2pix.model.metrics import MetricAccumulator
from pix2pix.model.networks import GeneratorConfig, UNetGenerator
from pix2pix.model.palette import RECIFE_PALETTE
from pix2pix.model.ranges import to_model_range
from tests.conftest import REPO, S3_SECRET_KEY, load_job

TINY = GeneratorConfig(ngf=8, depth=6)  # 64 px; depth 6 has one dropout block
WATER = (0, 127, 255)


def identity(sources: torch.Tensor, keys: list[str]) -> torch.Tensor:
    """A 'generator' that returns its input: the metrics then compare source with target."""
    return to_model_range(sources)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def flat(colour, size: int = 64) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    directory = str(tmp_path_factory.mktemp("checkpoint"))
    checkpoint.export_generator(UNetGenerator(TINY), ExportInfo(TINY, image_size=64),
                                storage.resolve(directory))
    return directory


@pytest.fixture(scope="module")
def raw_pairs(tmp_path_factory) -> Path:
    """Demo-style pairs: val/sat/*.jpg + val/map/*.png, 64 px."""
    root = tmp_path_factory.mktemp("raw")
    write_pairs(str(root / "val"), count=5, size=64)
    return root


def run_job_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    job = load_job("evaluate")
    with pytest.raises(SystemExit) as exited:
        cli.run(lambda: job.main(argv))
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_metrics_by_hand_through_the_raw_reader(tmp_path):
    # Target: all water. Source (returned as is): left half 3 off in blue (< 5: correct),
    # right half 10 off in red (wrong); both still nearest to water.
    source = flat(WATER)
    source[:, :32] = (0, 127, 252)
    source[:, 32:] = (10, 127, 255)
    save(tmp_path / "val" / "sat" / "a.png", source)
    save(tmp_path / "val" / "map" / "a.png", flat(WATER))
    split = open_split(str(tmp_path), "val")
    assert (split.kind, split.keys) == ("raw", ["a"])
    result = evaluate_records(split.records(), identity, 64, palette=RECIFE_PALETTE)
    metrics = result.metrics
    squared = (9 + 100) / 2 / 3  # mean over pixels and channels, 0..255 scale
    assert metrics["pixel_accuracy"] == 0.5
    assert metrics["RMSE"] == pytest.approx(math.sqrt(squared))
    assert metrics["L1"] == pytest.approx((3 + 10) / 2 / 3 / 127.5, abs=1e-6)
    assert metrics["PSNR"] == pytest.approx(10 * math.log10(255**2 / squared), abs=1e-3)
    assert metrics["IoU/water"] == 1.0 and metrics["mIoU"] == 1.0
    assert "IoU/road" not in metrics  # absent from both: left out, not NaN
    assert result.target_off_palette == 0.0 and result.pairs == 1


def test_target_against_itself_and_off_palette_share(tmp_path):
    target = flat(WATER)
    target[:16] = (255, 0, 255)  # the Recife maps' magenta: not in the palette
    save(tmp_path / "val" / "sat" / "a.png", target)
    save(tmp_path / "val" / "map" / "a.png", target)
    result = evaluate_records(open_split(str(tmp_path)).records(), identity, 64, palette=RECIFE_PALETTE)
    assert result.metrics["pixel_accuracy"] == 1.0 and result.metrics["L1"] == 0.0
    assert result.metrics["mIoU"] == 1.0
    assert result.target_off_palette == 0.25


def test_side_by_side_raw_pairs(tmp_path):
    target = flat(WATER)
    target[:16] = (255, 0, 0)
    save(tmp_path / "val" / "0001.png", np.concatenate([flat(WATER), target], axis=1))
    split = open_split(str(tmp_path))
    result = evaluate_records(split.records(), identity, 64)
    assert split.keys == ["0001"] and result.metrics["pixel_accuracy"] == 0.75


def test_prepared_shards_give_the_same_numbers_as_raw_pairs(raw_pairs, tiny_checkpoint, tmp_path):
    rows = [{"key": path.stem, "layout": "paired", "image": None, "source_side": None,
             "source": path.read_bytes(), "target": (raw_pairs / "val" / "map" / f"{path.stem}.png").read_bytes()}
            for path in sorted((raw_pairs / "val" / "sat").glob("*.jpg"))]
    (tmp_path / "val").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[3:]), tmp_path / "val" / "b.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "val" / "a.parquet")
    options = dict(checkpoint=tiny_checkpoint, palette="recife", batch_size=2)
    prepared = evaluate(EvaluateOptions(data=str(tmp_path), **options))
    raw = evaluate(EvaluateOptions(data=str(raw_pairs), **options))
    assert (prepared["source"], raw["source"], prepared["pairs"]) == ("prepared", "raw", 5)
    assert {k: v for k, v in prepared.items() if k not in ("data", "source", "seconds")} == \
        {k: v for k, v in raw.items() if k not in ("data", "source", "seconds")}
    limited = evaluate(EvaluateOptions(data=str(tmp_path), limit=2, **options))
    assert limited["pairs"] == 2


@pytest.mark.parametrize("precision", ["auto", "fp32"])  # auto: bf16 on CPUs that have it
def test_same_numbers_as_the_validation_during_training(raw_pairs, tmp_path, precision):
    from pix2pix.training.augmentation import paired_transform, preprocess_records
    from pix2pix.training.step import Pix2Pix, TrainConfig

    model = Pix2Pix(TrainConfig(image_size=64, ngf=8, ndf=8, precision=precision))
    checkpoint.export_generator(model.generator, model.export_info(), storage.resolve(str(tmp_path)))
    batch = preprocess_records(list(open_split(str(raw_pairs)).records()), paired_transform(64, train=False))
    expected = model.evaluate([(torch.from_numpy(batch["source"]), torch.from_numpy(batch["target"]))]).totals()
    expected = MetricAccumulator.summarize(expected)
    summary = evaluate(EvaluateOptions(data=str(raw_pairs), checkpoint=str(tmp_path)))
    for name, metric in (("l1", "L1"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("rmse", "RMSE"),
                         ("pixel_accuracy", "pixel_accuracy")):
        assert summary[name] == pytest.approx(expected[metric], rel=1e-4, abs=1e-5), name


def test_unreadable_pairs_are_skipped_and_listed(raw_pairs, tmp_path):
    for name in ("sat/0000.jpg", "map/0000.png", "sat/0001.jpg", "map/0001.png"):
        save(tmp_path / "val" / name, np.asarray(Image.open(raw_pairs / "val" / name)))
    (tmp_path / "val" / "map" / "0001.png").write_bytes(b"broken")
    (tmp_path / "val" / "sat" / "0002.jpg").write_bytes(b"no map for this one")
    split = open_split(str(tmp_path))
    result = evaluate_records(split.records(), identity, 64)
    assert result.pairs == 1 and result.skipped == ["0001: not a recognised image format"]
    assert split.skipped == ["val/sat/0002.jpg: no matching file in map/ for '0002'"]


def test_s3_data_checkpoint_and_grid(s3_bucket, raw_pairs, tiny_checkpoint):
    root = f"s3://{s3_bucket}"
    target = storage.resolve(root)
    for path in sorted((raw_pairs / "val").rglob("*.*")):
        storage.write_bytes(target.filesystem, f"{target.path}/raw/{path.relative_to(raw_pairs)}", path.read_bytes())
    for path in Path(tiny_checkpoint).iterdir():
        storage.write_bytes(target.filesystem, f"{target.path}/model/{path.name}", path.read_bytes())
    summary = evaluate(EvaluateOptions(data=f"{root}/raw", checkpoint=f"{root}/model",
                                       grid=f"{root}/eval/grid.png", grid_count=1))
    assert summary["pairs"] == 5 and summary["grid"] == f"{root}/eval/grid.png"
    grid = storage.read_bytes(target.filesystem, f"{target.path}/eval/grid.png")
    assert Image.open(io.BytesIO(grid)).size == (3 * 64 + 8, 64)
    assert S3_SECRET_KEY not in json.dumps(summary)


def test_paper_mode_is_deterministic_and_differs_from_eval(raw_pairs, tiny_checkpoint):
    def run(**options):
        return evaluate(EvaluateOptions(data=str(raw_pairs), checkpoint=tiny_checkpoint, **options))

    paper, again, plain = run(paper_mode=True), run(paper_mode=True, batch_size=3), run()
    assert paper["mode"] == "paper" and paper["batch_size"] == 1 and plain["mode"] == "eval"
    assert paper["l1"] == again["l1"] and paper["ssim"] == again["ssim"]
    assert paper["l1"] != plain["l1"]  # dropout on
    assert run(paper_mode=True, seed=1)["l1"] != paper["l1"]


def test_job_prints_one_json_line_and_writes_the_grid(raw_pairs, tiny_checkpoint, tmp_path):
    grid = tmp_path / "out" / "grid.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "evaluate.py"), "--data", str(raw_pairs), "--checkpoint", tiny_checkpoint,
         "--palette", "recife", "--grid", str(grid), "--grid-count", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    for name in ("pairs", "l1", "psnr", "ssim", "rmse", "pixel_accuracy", "per_class_iou", "miou", "seconds",
                 "mode", "grid"):
        assert name in summary
    assert summary["pairs"] == 5 and summary["split"] == "val" and summary["grid"] == str(grid)
    assert set(summary["per_class_iou"]) <= set(RECIFE_PALETTE)
    assert 0 <= summary["pixel_accuracy"] <= 1 and 0 <= summary["miou"] <= 1
    for target_class, row in summary["confusion"].items():  # each target class's pixels, all of them
        assert sum(row.values()) == pytest.approx(1, abs=1e-3)
        assert row[target_class] == summary["class_recall"][target_class]
    # The precision the model ran at, not overwritten by the classes' precision (it was before).
    assert summary["precision"] in ("bf16", "fp32") and set(summary["class_precision"]) <= set(RECIFE_PALETTE)
    assert sum(summary["predicted_share"].values()) == pytest.approx(1, abs=1e-3)
    assert Image.open(grid).size == (3 * 64 + 2 * 4, 2 * 64 + 4)  # source | generated | target, 2 rows


def test_evaluation_does_not_import_ray():
    code = "import sys, pix2pix.evaluation; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


def test_bad_inputs_end_with_one_line(raw_pairs, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty" / "val").mkdir(parents=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "generator.safetensors").write_bytes(b"not weights")
    (tmp_path / "junk" / "generator.json").write_text(ExportInfo(TINY, image_size=64).to_json())
    (tmp_path / "palette.json").write_text('{"sea": "blue"}')
    data, model = ["--data", str(raw_pairs)], ["--checkpoint", tiny_checkpoint]
    cases = {
        "data not found": ["--data", str(tmp_path / "nowhere"), *model],
        "no test/": [*data, *model, "--split", "test"],
        "no image pairs": ["--data", str(tmp_path / "empty"), *model],
        "checkpoint not found": [*data, "--checkpoint", str(tmp_path / "nothing")],
        "cannot read generator.safetensors": [*data, "--checkpoint", str(tmp_path / "junk")],
        "must be [r, g, b]": [*data, *model, "--palette", str(tmp_path / "palette.json")],
    }
    for message, argv in cases.items():
        code, out, err = run_job_in_process([*argv, "--grid-count", "0"], capsys)
        assert (code, out) == (1, ""), message
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    code, _, err = run_job_in_process([*data, *model, "--paper-mode", "--batch-size", "4"], capsys)
    assert code == 2 and err.count("\n") == 1
    code, _, err = run_job_in_process(["--data", str(raw_pairs)], capsys)
    assert code == 2 and "both --data and --checkpoint" in err


def test_real_recife_val(recife, tiny_checkpoint, tmp_path):
    summary = evaluate(EvaluateOptions(data=str(recife), checkpoint=tiny_checkpoint, palette="recife", limit=8,
                                       grid=str(tmp_path / "grid.png"), grid_count=3))
    assert (summary["pairs"], summary["skipped"], summary["source"]) == (8, 0, "raw")
    assert Image.open(tmp_path / "grid.png").size == (3 * 64 + 8, 3 * 64 + 8)  # 256 px pairs resized to 64
    assert 0 < summary["target_off_palette"] < 1  # the maps' extra colours (e.g. (0, 0, 255))
    assert 0 <= summary["miou"] <= 1 and summary["ssim"] is not None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_shards_from_the_prepare_job(ray_session, raw_pairs, tiny_checkpoint, tmp_path):
    from pix2pix.distributed.prepare import prepare

    prepare(str(raw_pairs), str(tmp_path / "data"))
    options = dict(checkpoint=tiny_checkpoint, palette="recife")
    prepared = evaluate(EvaluateOptions(data=str(tmp_path / "data"), **options))
    raw = evaluate(EvaluateOptions(data=str(raw_pairs), **options))
    assert prepared["source"] == "prepared" and prepared["pairs"] == raw["pairs"] == 5
    assert prepared["l1"] == raw["l1"] and prepared["per_class_iou"] == raw["per_class_iou"]


def _validate_on_rank(rank: int, world_size: int, port: int, config, model_config, results: str) -> None:
    import torch.distributed as dist

    from pix2pix.distributed.train_worker import ValidationPairs, validate
    from pix2pix.training.step import Pix2Pix

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        metrics = validate(Pix2Pix(model_config), config, ValidationPairs(config, rank, world_size))  # same weights
        Path(results, f"{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_distributed_validation_equals_evaluate_on_the_same_pairs(raw_pairs, tmp_path):
    """Each of 2 ranks validates the val pairs it owns (owner_rank) and the sums are all-reduced:
    the result is what evaluate() gives on the whole split in one process. No Ray: gloo."""
    from pix2pix.distributed.train import JobConfig
    from pix2pix.training.shards import SHARD_SCHEMA, find_shards, owner_rank
    from pix2pix.training.step import Pix2Pix, TrainConfig
    from tests.conftest import free_port

    rows = [{"key": path.stem, "layout": "paired", "image": None, "source_side": None, "source": path.read_bytes(),
             "target": (raw_pairs / "val" / "map" / f"{path.stem}.png").read_bytes()}
            for path in sorted((raw_pairs / "val" / "sat").glob("*.jpg"))]
    for split in ("train", "val"):
        (tmp_path / "data" / split).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), tmp_path / "data" / split / "0.parquet")
    assert {owner_rank(row["key"], 2) for row in rows} == {0, 1}  # both ranks have pairs to validate
    model_config = TrainConfig(image_size=64, ngf=8, ndf=8, precision="fp32")
    data = str(tmp_path / "data")
    _, val = find_shards(data)
    config = JobConfig(train=model_config, data_uri=data, val_shards=val, palette=RECIFE_PALETTE)
    (tmp_path / "results").mkdir()
    torch.multiprocessing.spawn(_validate_on_rank, args=(2, free_port(), config, model_config,
                                                         str(tmp_path / "results")), nprocs=2)
    first, second = (json.loads((tmp_path / "results" / f"{rank}.json").read_text()) for rank in (0, 1))
    assert first == second  # every rank ends with the all-reduced metrics

    model = Pix2Pix(model_config)
    checkpoint.export_generator(model.generator, model.export_info(), storage.resolve(str(tmp_path / "export")))
    summary = evaluate(EvaluateOptions(data=data, checkpoint=str(tmp_path / "export"), palette="recife",
                                       precision="fp32"))
    assert summary["pairs"] == len(rows) == 5
    for name, metric in (("l1", "L1"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("miou", "mIoU")):
        assert summary[name] == pytest.approx(first[metric], rel=1e-5, abs=1e-6), name
    assert summary["per_class_iou"] == pytest.approx({name[4:]: value for name, value in first.items()
                                                      if name.startswith("IoU/")}, rel=1e-5, abs=1e-6)
