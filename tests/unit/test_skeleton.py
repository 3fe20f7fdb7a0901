"""The ImageNet skeleton: NASNet's stride-2 stem and two reduction cells before the stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from kubenas.nn import ModelConfig, build_model, count_parameters, multiply_adds
from kubenas.nn.networks import smallest_input
from kubenas.spec import TrainingSpec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "genotypes"
NASNET_A = json.loads((EXAMPLES / "nasnet-a.json").read_text())


def test_nasnet_a_mobile_4_at_1056_has_the_papers_parameters_and_multiply_adds():
    # Zoph et al. 2018, table 2: NASNet-A (4 @ 1056) on 224x224 ImageNet, 5.3 M parameters and
    # 564 M multiply-adds. 1056 penultimate filters = 6 concatenated states x 176 = 6 x 4F: F = 44.
    model = build_model(NASNET_A, ModelConfig(channels=44, cells_per_stage=4, num_classes=1000, skeleton="imagenet"))
    assert model.classifier.in_features == 1056
    assert abs(count_parameters(model) - 5.3e6) <= 0.02 * 5.3e6
    assert abs(multiply_adds(model, (3, 224, 224)) - 564e6) <= 0.02 * 564e6


def test_the_imagenet_skeleton_reduces_224_pixels_to_7_and_trains_a_step():
    model = build_model(NASNET_A, ModelConfig(channels=4, cells_per_stage=1, num_classes=3, skeleton="imagenet",
                                              auxiliary=True))
    assert len(model.stem_cells) == 2 and all(cell.reduction for cell in model.stem_cells)
    assert model.stem[0].stride == (2, 2)
    features = []
    model.cells[-1].register_forward_hook(lambda module, inputs, output: features.append(output.shape))
    logits, aux = model(torch.randn(2, 3, 224, 224))
    assert features == [torch.Size([2, 6 * 16, 7, 7])]
    (logits.sum() + aux.sum()).backward()
    assert logits.shape == (2, 3) and aux.shape == (2, 3)


def test_the_cifar_skeleton_is_unchanged_by_the_option():
    default = build_model(NASNET_A, ModelConfig(channels=32, cells_per_stage=6))
    named = build_model(NASNET_A, ModelConfig(channels=32, cells_per_stage=6, skeleton="cifar"))
    assert count_parameters(default) == count_parameters(named) == 3_328_234
    assert len(default.stem_cells) == 0 and default.stem[0].stride == (1, 1)


def test_a_skeleton_other_than_cifar_is_refused_for_nasbench201_and_unknown_names_are_refused():
    cell = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    with pytest.raises(ValueError, match="training.skeleton"):
        build_model({"space": "nasbench201", "cell": cell}, ModelConfig(skeleton="imagenet"))
    with pytest.raises(ValueError, match="training.skeleton: 'resnet'"):
        build_model(NASNET_A, ModelConfig(skeleton="resnet"))


def test_an_input_too_small_for_the_skeleton_is_refused_in_the_spec_naming_the_field():
    assert smallest_input("cifar") == 4 and smallest_input("imagenet") == 32
    with pytest.raises(ValidationError, match="training.dataset.resolution: 16-pixel images .* at least 32"):
        TrainingSpec.model_validate({"skeleton": "imagenet", "dataset": {"name": "imagefolder", "root": "/d",
                                                                         "resolution": 16}})
    with pytest.raises(ValidationError, match="training.skeleton: 8-pixel images of digits"):
        TrainingSpec.model_validate({"skeleton": "imagenet"})
    ok = TrainingSpec.model_validate({"skeleton": "imagenet", "dataset": {"name": "imagefolder", "root": "/d",
                                                                          "resolution": 64}})
    assert ok.dataset.image_size == 64


def test_a_trial_trains_on_the_imagenet_skeleton_when_the_training_spec_asks():
    from kubenas.training import Splits, TrainConfig, train_proxy

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32, generator=gen), torch.arange(24) % 3
    data = Splits("random", x[:16], y[:16], x[16:], y[16:], num_classes=3, mirror_ok=False)
    costs = {}
    for skeleton in ("cifar", "imagenet"):
        cfg = TrainConfig(epochs=1, channels=4, cells_per_stage=1, batch_size=8, device="cpu", skeleton=skeleton)
        outcome = train_proxy(NASNET_A, data, cfg)
        assert outcome.status == "succeeded"
        costs[skeleton] = outcome.multiply_adds
    # The stride-2 stem and the two stem reduction cells leave the stages 1/8 of the pixels.
    assert costs["imagenet"] < costs["cifar"] / 4
