import json
import pickle
import subprocess
import sys

import pytest
import torch

from pix2pix import checkpoint, storage
from pix2pix.model.export import TRAINING_STATE_FILE, CheckpointError, ExportInfo
from pix2pix.model.networks import GeneratorConfig, UNetGenerator

SMALL = GeneratorConfig(ngf=8, depth=5)


def export_small(directory, config=SMALL, step=7):
    torch.manual_seed(0)
    generator = UNetGenerator(config).eval()
    info = ExportInfo(generator=config, image_size=64, direction="AtoB", step=step, epoch=1)
    checkpoint.export_generator(generator, info, storage.resolve(str(directory)))
    return generator


def test_export_round_trip_reproduces_outputs(tmp_path):
    generator = export_small(tmp_path)
    loaded, info = checkpoint.load_generator(str(tmp_path))
    assert info.generator == SMALL and info.step == 7 and info.image_size == 64
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(generator(x), loaded(x))
    assert json.loads((tmp_path / "generator.json").read_text())["architecture"] == "unet"


def test_loading_an_export_starts_no_compiler(tmp_path):
    """Every translation actor and the driver load the generator at their start: building the
    declared network on the meta device must not import torch._dynamo (~1 s of CPU each)."""
    export_small(tmp_path)
    program = ("import sys; from pix2pix import checkpoint; checkpoint.load_generator(sys.argv[1]); "
               "print('torch._dynamo' in sys.modules)")
    loaded = subprocess.run([sys.executable, "-c", program, str(tmp_path)], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def test_every_accepted_spelling_finds_the_export(tmp_path):
    run = tmp_path / "run"
    export_small(run / "checkpoint_2026-01-01_00-00-00.000000", step=1)
    export_small(run / "checkpoint_2026-01-02_00-00-00.000000", step=2)
    (run / "checkpoint_2026-01-03_00-00-00.000000").mkdir()  # left incomplete by a crash
    latest = run / "checkpoint_2026-01-02_00-00-00.000000"
    assert checkpoint.load_generator(str(latest))[1].step == 2
    assert checkpoint.load_generator(str(latest / "generator.safetensors"))[1].step == 2
    assert checkpoint.load_generator(f"file://{latest}")[1].step == 2
    assert checkpoint.load_generator(str(run))[1].step == 2
    with pytest.raises(CheckpointError, match="no generator export"):
        checkpoint.load_generator(str(run / "checkpoint_2026-01-03_00-00-00.000000"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.find_export(str(tmp_path / "nope"))


def test_architecture_mismatch_is_refused_naming_the_field(tmp_path):
    export_small(tmp_path)
    with pytest.raises(CheckpointError, match="depth is 5, expected 6"):
        checkpoint.load_generator(str(tmp_path), expect=GeneratorConfig(ngf=8, depth=6))
    with pytest.raises(CheckpointError, match="norm is 'instance', expected 'batch'"):
        checkpoint.load_generator(str(tmp_path), expect=GeneratorConfig(ngf=8, depth=5, norm="batch"))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    export_small(tmp_path)
    config = json.loads((tmp_path / "generator.json").read_text())
    config["generator"]["depth"] = 6  # a lie about the architecture
    (tmp_path / "generator.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit the declared architecture"):
        checkpoint.load_generator(str(tmp_path))


def test_truncated_or_tampered_weights_give_a_clear_error(tmp_path):
    export_small(tmp_path)
    weights = tmp_path / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read generator.safetensors"):
        checkpoint.load_generator(str(tmp_path))


class Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle executed code')",))


def test_training_state_never_unpickles_code(tmp_path):
    location = storage.resolve(str(tmp_path))
    assert checkpoint.read_training_config(location) is None  # as in checkpoints older than the file
    checkpoint.save_training_state({"step": 3, "weights": torch.ones(2), "config": {"ndf": 16}}, location)
    assert checkpoint.load_training_state(location)["step"] == 3
    assert checkpoint.read_training_config(location) == {"ndf": 16}  # readable without loading the state
    (tmp_path / TRAINING_STATE_FILE).write_bytes(pickle.dumps({"evil": Boom()}))
    with pytest.raises(CheckpointError, match="cannot read training_state.pt"):
        checkpoint.load_training_state(location)


def test_export_on_s3(s3_bucket):
    uri = f"s3://{s3_bucket}/runs/x/checkpoint_2026-01-01_00-00-00.000000"
    generator = UNetGenerator(SMALL).eval()
    checkpoint.export_generator(generator, ExportInfo(SMALL, 64), storage.resolve(uri))
    loaded, _ = checkpoint.load_generator(f"s3://{s3_bucket}/runs/x")
    x = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(generator(x), loaded(x))
