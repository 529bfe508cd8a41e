import pytest
import torch

from pix2pix.model.inference import memory_format, run_generator
from pix2pix.model.networks import GeneratorConfig, UNetGenerator
from pix2pix.model.ranges import to_model_range

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return UNetGenerator(GeneratorConfig(ngf=8, depth=6))  # one dropout block


def images(n=3, seed=0):
    return torch.randint(0, 256, (n, 3, 64, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_uint8_and_model_range_inputs_give_the_same_float_output(generator):
    sources = images()
    with torch.inference_mode():
        from_uint8 = run_generator(generator.eval(), sources, CPU, "fp32")
        from_float = run_generator(generator.eval(), to_model_range(sources), CPU, "fp32")
    assert from_uint8.dtype == torch.float32 and from_uint8.shape == (3, 3, 64, 64)
    assert torch.equal(from_uint8, from_float) and from_uint8.abs().max() <= 1


def test_seeded_images_do_not_depend_on_their_batch_mates_or_what_ran_before(generator):
    generator.train()  # dropout on, as in --stochastic and paper mode
    sources = images(4)
    with torch.inference_mode():
        together = run_generator(generator, sources, CPU, "fp32", seeds=[1, 2, 3, 4])
        torch.rand(100)  # the global generator moves; seeded outputs must not
        alone = run_generator(generator, sources[2:3], CPU, "fp32", seeds=[3])
        other_seed = run_generator(generator, sources[2:3], CPU, "fp32", seeds=[5])
    assert torch.equal(together[2:3], alone) and not torch.equal(alone, other_seed)
    with pytest.raises(ValueError, match="2 seeds for 4 images"):
        run_generator(generator, sources, CPU, "fp32", seeds=[1, 2])


def test_both_layouts_compute_the_same_function(generator):
    sources = images()
    with torch.inference_mode():
        last = run_generator(generator.eval(), sources, CPU, "fp32", memory_format(True))
        first = run_generator(generator.eval(), sources, CPU, "fp32", memory_format(False))
    assert torch.allclose(last, first, atol=1e-5)


def test_the_layout_follows_device_and_precision_unless_chosen():
    assert memory_format(None, "cpu", "fp32") == torch.contiguous_format  # measured faster there
    assert memory_format(None, "cpu", "bf16") == torch.channels_last
    assert memory_format(None, "cuda", "fp32") == torch.channels_last
    assert memory_format(True, "cpu", "fp32") == torch.channels_last
    assert memory_format(False, "cuda", "bf16") == torch.contiguous_format
