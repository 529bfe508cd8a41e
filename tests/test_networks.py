import pytest
import torch
from torch import nn

from pix2pix.model.networks import (
    DiscriminatorConfig,
    GeneratorConfig,
    PatchDiscriminator,
    UNetGenerator,
    check_image_size,
    init_weights,
    norm_layer,
)

CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def unet256_batch():
    torch.manual_seed(0)
    return UNetGenerator(GeneratorConfig(ngf=64, depth=8, norm="batch"))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def convs(model):
    return [m for m in model.modules() if isinstance(m, CONV_TYPES)]


def count_dropouts(model):
    return sum(isinstance(m, nn.Dropout) for m in model.modules())


def test_generator_parameter_count_matches_reference(unet256_batch):
    assert n_params(unet256_batch) == 54_413_955


def test_discriminator_parameter_count_matches_reference():
    assert n_params(PatchDiscriminator(DiscriminatorConfig(norm="batch"))) == 2_768_705


def test_generator_256_forward_keeps_size_and_range(unet256_batch):
    unet256_batch.eval()
    with torch.no_grad():
        out = unet256_batch(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 3, 256, 256)
    assert out.abs().max() <= 1.0


@pytest.mark.parametrize("depth,size", [(7, 128), (6, 64), (5, 64)])
def test_shallower_generators_keep_size(depth, size):
    model = UNetGenerator(GeneratorConfig(ngf=8, depth=depth, out_channels=2)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 2, size, size)
    assert out.abs().max() <= 1.0


def test_discriminator_256_gives_30x30_logits():
    model = PatchDiscriminator(DiscriminatorConfig(ndf=8))
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 256, 256), torch.randn(2, 3, 256, 256))
    assert logits.shape == (2, 1, 30, 30)


def test_batch_norm_generator_has_bias_only_on_last_conv(unet256_batch):
    with_bias = [m for m in convs(unet256_batch) if m.bias is not None]
    assert with_bias == [unet256_batch.ups[-1][1]]
    assert with_bias[0].out_channels == 3


def test_instance_norm_convs_have_biases():
    gen = UNetGenerator(GeneratorConfig(ngf=8, depth=5, norm="instance"))
    disc = PatchDiscriminator(DiscriminatorConfig(ndf=8, norm="instance"))
    assert all(m.bias is not None for m in convs(gen) + convs(disc))


def test_batch_norm_discriminator_bias_only_without_following_norm():
    layers = convs(PatchDiscriminator(DiscriminatorConfig(ndf=8, norm="batch")))
    assert [m.bias is not None for m in layers] == [True, False, False, False, True]


def test_norm_layers_follow_reference():
    inorm = norm_layer("instance", 4)
    assert isinstance(inorm, nn.InstanceNorm2d)
    assert not inorm.affine and not inorm.track_running_stats
    assert isinstance(norm_layer("batch", 4), nn.BatchNorm2d)


@pytest.mark.parametrize("depth,expected", [(8, 3), (7, 2), (6, 1), (5, 0), (10, 3)])
def test_dropout_block_count(depth, expected):
    assert count_dropouts(UNetGenerator(GeneratorConfig(ngf=2, depth=depth))) == expected


def test_depth8_dropout_sits_right_after_innermost(unet256_batch):
    has_dropout = [any(isinstance(m, nn.Dropout) for m in up) for up in unet256_batch.ups]
    assert has_dropout == [False, True, True, True, False, False, False, False]
    assert count_dropouts(UNetGenerator(GeneratorConfig(ngf=2, depth=8, dropout=0.0))) == 0


def test_dropout_is_stochastic_in_train_and_off_in_eval():
    model = UNetGenerator(GeneratorConfig(ngf=8, depth=7))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))


def test_instance_norm_generator_is_batch_independent_in_eval():
    model = UNetGenerator(GeneratorConfig(ngf=8, depth=6, norm="instance")).eval()
    batch = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        together = model(batch)
        alone = torch.cat([model(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height,width,bad", [(100, 64, 100), (64, 80, 80)])
def test_wrong_image_size_is_a_clear_error(height, width, bad):
    model = UNetGenerator(GeneratorConfig(ngf=2, depth=5))
    with pytest.raises(ValueError, match=rf"image size {bad} is not a multiple of 2\^5 = 32"):
        model(torch.randn(1, 3, height, width))


def test_check_image_size():
    check_image_size(256, 8)
    check_image_size(512, 8)
    for size in (0, -256, 128, 100):
        with pytest.raises(ValueError, match=str(size)):
            check_image_size(size, 8)


def test_bad_config_values_are_rejected():
    with pytest.raises(ValueError, match="instance"):
        norm_layer("group", 4)
    with pytest.raises(ValueError, match="norm"):
        GeneratorConfig(norm="layer")
    with pytest.raises(ValueError, match="norm"):
        DiscriminatorConfig(norm="spectral")
    for depth in (1, 11):
        with pytest.raises(ValueError, match="depth"):
            GeneratorConfig(depth=depth)
    with pytest.raises(ValueError, match="dropout"):
        GeneratorConfig(dropout=1.0)
    with pytest.raises(ValueError, match="ngf"):
        GeneratorConfig(ngf=0)


def test_config_dict_round_trip_and_unknown_keys():
    gen = GeneratorConfig(ngf=32, depth=7, norm="batch", dropout=0.3)
    disc = DiscriminatorConfig(ndf=32, n_layers=2)
    assert GeneratorConfig.from_dict(gen.to_dict()) == gen
    assert DiscriminatorConfig.from_dict(disc.to_dict()) == disc
    with pytest.raises(ValueError, match="ngff"):
        GeneratorConfig.from_dict({"ngff": 64})
    with pytest.raises(ValueError, match="unknown"):
        DiscriminatorConfig.from_dict({"ndf": 64, "extra": 1})


def test_init_weights_statistics():
    conv = nn.Conv2d(512, 512, 4, bias=True)
    bn = nn.BatchNorm2d(4096)
    init_weights(nn.Sequential(conv, bn))
    assert abs(conv.weight.mean().item()) < 1e-3
    assert conv.weight.std().item() == pytest.approx(0.02, rel=0.01)
    assert torch.count_nonzero(conv.bias) == 0
    assert bn.weight.mean().item() == pytest.approx(1.0, abs=2e-3)
    assert bn.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.count_nonzero(bn.bias) == 0


def input_gradient_box(model, row, col):
    """Bounding box (top, left, height, width) of input pixels that affect logit (row, col)."""
    source = torch.randn(1, 3, 256, 256, requires_grad=True)
    target = torch.randn(1, 3, 256, 256, requires_grad=True)
    model(source, target)[0, 0, row, col].backward()
    touched = (source.grad.abs() + target.grad.abs()).sum(dim=(0, 1)) != 0
    rows = touched.any(dim=1).nonzero().flatten()
    cols = touched.any(dim=0).nonzero().flatten()
    top, left = rows.min().item(), cols.min().item()
    return top, left, rows.max().item() - top + 1, cols.max().item() - left + 1


def test_patch_discriminator_receptive_field_is_70x70():
    # Eval-mode batch norm is a fixed per-channel affine map, so only the convolutions
    # decide which input pixels reach a logit.
    model = PatchDiscriminator(DiscriminatorConfig(ndf=8, norm="batch")).eval()
    top, left, height, width = input_gradient_box(model, 15, 12)
    assert (height, width) == (70, 70)
    # Cumulative stride 8; the four padded layers shift the window by 1+2+4+8+8 = 23.
    assert (top, left) == (15 * 8 - 23, 12 * 8 - 23)


def test_instance_norm_spreads_gradient_beyond_the_patch():
    # Instance-norm statistics come from the whole image, so every pixel reaches every logit.
    model = PatchDiscriminator(DiscriminatorConfig(ndf=8, norm="instance")).eval()
    _, _, height, width = input_gradient_box(model, 15, 12)
    assert height > 70 and width > 70


def test_resize_convolution_decoder_has_no_transposed_convolutions():
    config = GeneratorConfig(ngf=8, depth=6, upsample="resize")
    generator = UNetGenerator(config)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in generator.modules())
    assert sum(isinstance(m, torch.nn.Upsample) for m in generator.modules()) == 6
    out = generator(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    # an export written before the field existed is a transposed-convolution generator
    old = {key: value for key, value in GeneratorConfig(ngf=8, depth=6).to_dict().items() if key != "upsample"}
    assert GeneratorConfig.from_dict(old).upsample == "transposed"
    with pytest.raises(ValueError, match="unknown upsample"):
        GeneratorConfig(upsample="bilinear-ish")


def test_exports_from_before_palette_output_was_retired_load_and_palette_generators_are_refused():
    """Every export written before the retirement records ``"palette": []`` in its generator config."""
    assert GeneratorConfig.from_dict({**GeneratorConfig(ngf=8, depth=5).to_dict(), "palette": []}) == \
        GeneratorConfig(ngf=8, depth=5)
    with pytest.raises(ValueError, match=r"outputs palette classes \(--palette-output\), which was retired"):
        GeneratorConfig.from_dict({**GeneratorConfig().to_dict(), "palette": [[255, 0, 0], [0, 0, 255]]})
