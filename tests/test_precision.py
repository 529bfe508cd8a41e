"""One precision rule for running a generator, and the CPU's bf16 detection."""

from __future__ import annotations

import pytest

from pix2pix.errors import ConfigError
from pix2pix.model import precision


@pytest.fixture
def cpu_bf16(monkeypatch):
    def set_native(native: bool) -> None:
        monkeypatch.setenv("PIX2PIX_CPU_BF16", "1" if native else "0")
        precision.cpu_has_native_bf16.cache_clear()

    yield set_native
    precision.cpu_has_native_bf16.cache_clear()


def test_the_override_beats_the_detection(cpu_bf16):
    cpu_bf16(True)
    assert precision.cpu_has_native_bf16() and precision.default_precision("cpu") == "bf16"
    cpu_bf16(False)
    assert not precision.cpu_has_native_bf16() and precision.default_precision("cpu") == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_auto_runs_a_model_at_its_training_precision_where_native(cpu_bf16, native):
    cpu_bf16(native)
    best = "bf16" if native else "fp32"
    assert precision.inference_precision("auto", "cpu", trained="fp32") == "fp32"  # as validated
    assert precision.inference_precision("auto", "cpu", trained="bf16") == best  # emulated bf16: fp32
    assert precision.inference_precision("auto", "cpu", trained="fp16") == best  # a GPU model on a CPU
    assert precision.inference_precision("auto", "cpu", trained=None) == best  # an old export
    assert precision.inference_precision("fp32", "cpu", trained="bf16") == "fp32"  # asked for
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        precision.inference_precision("fp16", "cpu", trained=None)


@pytest.mark.parametrize("emulated_only,expected", [(True, "fp16"), (False, "bf16")])
def test_gpus_that_only_emulate_bf16_get_fp16(monkeypatch, emulated_only, expected):
    # T4 / V100: torch.cuda.is_bf16_supported() says yes by default, counting emulation
    def is_bf16_supported(including_emulation=True):
        return including_emulation or not emulated_only

    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert precision.default_precision("cuda") == expected
    assert precision.native_precisions("cuda") == {"fp32", "fp16", expected}
