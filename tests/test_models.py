"""Architectures and transfer learning."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from trainkit import checkpoint
from trainkit.errors import UserError
from trainkit.experiment import build_model, run
from trainkit.models import inference_copy

from .conftest import compose_config, small_overrides


def model_of(*overrides: str, shape: tuple = (1, 28, 28), classes: int = 10) -> nn.Module:
    return build_model(compose_config(list(overrides)).model, shape, classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet_and_its_plain_twin_differ_only_by_the_skip_connections() -> None:
    torch.manual_seed(0)
    residual = model_of("model=resnet", "model.residual=true")
    plain = model_of("model=resnet", "model.residual=false")
    assert n_params(residual) == n_params(plain)
    assert [n for n, _ in residual.named_parameters()] == [n for n, _ in plain.named_parameters()]
    plain.load_state_dict(residual.state_dict())  # the very same weights...
    x = torch.randn(4, 1, 28, 28)
    residual.eval(), plain.eval()
    assert not torch.allclose(residual(x), plain(x))  # ...and different outputs
    depth = sum(isinstance(m, nn.Conv2d | nn.Linear) for m in residual.modules())
    assert depth == 2 + 2 * 2 * 3  # stem + 2 convs x 2 blocks x 3 stages + head = ResNet-14


def test_resnet_downsamples_per_stage_and_works_on_cifar_shapes() -> None:
    model = model_of("model=resnet", "model.widths=[8,16,32]", shape=(3, 32, 32))
    features = model.stages(model.stem(torch.randn(2, 3, 32, 32)))
    assert features.shape == (2, 32, 8, 8)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mlp_knobs_build_the_layers_they_name() -> None:
    model = model_of(
        "model=mlp", "model.hidden=[64,32,16]", "model.batch_norm=true", "model.dropout=0.2",
        "model.input_dropout=0.1", "model.activation=tanh",
    )  # fmt: skip
    names = [name for name, _ in model.net.named_children()]
    assert names == ["flatten", "input_drop", "fc1", "bn1", "act1", "drop1", "fc2", "bn2", "act2",
                     "drop2", "fc3", "bn3", "act3", "drop3", "head"]  # fmt: skip
    assert isinstance(model.net.act2, nn.Tanh) and model.net.drop1.p == 0.2
    assert model.net.input_drop.p == 0.1 and model.net.fc1.bias is None  # BN re-centres


def test_cnn_knobs_build_the_layers_they_name() -> None:
    model = model_of("model=cnn", "model.channels=[4,8,16]", "model.batch_norm=false",
                     "model.dropout=0.1", "model.activation=gelu")  # fmt: skip
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16] and convs[0].bias is not None
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 4
    assert model.classifier.fc.in_features == 16 * 3 * 3  # 28 -> 14 -> 7 -> 3


def test_torchvision_resnet18_is_sized_for_our_images_and_classes() -> None:
    model = model_of("model=torchvision", shape=(1, 28, 28), classes=7)
    assert model.net.conv1.in_channels == 1 and model.net.fc.out_features == 7
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_pretrained_weights_unavailable_offline_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as e:
        model_of("model=torchvision", "model.pretrained=true")
    message = str(e.value)
    assert message.startswith("model.pretrained=true needs torchvision's resnet18 weights")
    assert message.endswith(f"put resnet18-f37072fd.pth in {tmp_path}/checkpoints, or set "
                            "model.pretrained=false")  # fmt: skip
    assert "\n" not in message


def test_fine_tuning_a_frozen_backbone_on_other_classes(fmnist_slice: Path, tmp_path: Path) -> None:
    base = [*small_overrides(fmnist_slice), "model.hidden=[64,32]", "model.batch_norm=true"]
    run(compose_config([*base, "data.classes=[0,1,2,3,4]", "epochs=2"]), tmp_path / "source")
    source = checkpoint.load(tmp_path / "source" / "checkpoints" / "last.pt")["model"]

    overrides = [*base, "data.classes=[5,7,9]", "epochs=3", "lr=3e-3",
                 f"model.from_checkpoint={tmp_path / 'source'}",
                 "model.freeze=[net.fc1,net.bn1]"]  # fmt: skip
    summary = run(compose_config(overrides), tmp_path / "target")
    tuned = checkpoint.load(tmp_path / "target" / "checkpoints" / "last.pt")["model"]

    for name in ("net.fc1.weight", "net.bn1.weight", "net.bn1.bias",
                 "net.bn1.running_mean", "net.bn1.running_var"):  # fmt: skip
        assert torch.equal(tuned[name], source[name]), name  # frozen: bit-identical
    assert not torch.equal(tuned["net.fc2.weight"], source["net.fc2.weight"])  # trained on
    assert tuned["net.head.weight"].shape == (3, 32)  # new head for 3 classes
    assert summary.best["val_acc"] > 0.5  # 3 classes: chance is 1/3


def test_a_checkpoint_of_another_architecture_is_refused(
    fmnist_slice: Path, tmp_path: Path
) -> None:
    run(compose_config([*small_overrides(fmnist_slice), "epochs=1"]), tmp_path / "mlp")
    with pytest.raises(UserError, match=r"holds a trainkit.models.MLP whose layers differ"):
        cnn = model_of("model=cnn", f"model.from_checkpoint={tmp_path / 'mlp'}")
        from trainkit.transfer import apply

        apply(cnn, compose_config(["model=cnn", f"model.from_checkpoint={tmp_path / 'mlp'}"]).model)


def test_a_checkpoint_trained_with_another_pool_order_loads_with_a_warning(
    fmnist_slice: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pool_first changes what the weights compute, not their shapes: the weights load, and the
    run says which setting differs and how to match it."""
    base = [*small_overrides(fmnist_slice, "cnn"), "epochs=1", "trainer.max_steps_per_epoch=2"]
    run(compose_config([*base, "model.pool_first=true"]), tmp_path / "source")
    capsys.readouterr()
    from trainkit.experiment import build

    _, t = build(compose_config([*base, f"model.from_checkpoint={tmp_path / 'source'}"]))
    out = " ".join(capsys.readouterr().out.split())
    assert (f"warning: {tmp_path}/source/checkpoints/best.pt was trained with "
            "model.pool_first=true and this model has model.pool_first=false: the loaded weights "
            "compute another function; set model.pool_first=true") in out  # fmt: skip
    source = checkpoint.load(tmp_path / "source" / "checkpoints" / "best.pt")["model"]
    loaded = t.model.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in source.items())
    _, same = build(compose_config([*base, "model.pool_first=true",
                                    f"model.from_checkpoint={tmp_path / 'source'}"]))  # fmt: skip
    assert "warning" not in capsys.readouterr().out


def test_freezing_a_name_that_does_not_exist_lists_the_names() -> None:
    from trainkit.transfer import freeze

    with pytest.raises(UserError, match=r"model.freeze: net.fc9 names no parameter; names start "
                                        r"with net"):  # fmt: skip
        freeze(model_of("model=mlp"), ["net.fc9"])


@pytest.mark.parametrize(
    "overrides",
    [["model=cnn"], ["model=cnn", "model.activation=gelu"], ["model=mlp", "model.batch_norm=true"]],
)
def test_the_inference_copy_folds_batch_norm_and_computes_the_same_function(
    overrides: list[str],
) -> None:
    torch.manual_seed(0)
    model = model_of(*overrides)
    model.train()
    for _ in range(3):  # running statistics away from their initial 0 and 1
        model(torch.randn(64, 1, 28, 28) * 2 + 0.5)
    seen = []
    model.register_forward_hook(lambda *args: seen.append(1))
    folded = inference_copy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()
    )
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
        seen.clear()
        got = folded(x)
    assert not seen  # the copy runs without the original's hooks
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_max_pool_runs_before_an_activation_it_commutes_with() -> None:
    order = [name for name, _ in model_of("model=cnn").features.named_children()]
    assert order[:4] == ["conv1", "bn1", "pool1", "act1"]
    order = [
        name for name, _ in model_of("model=cnn", "model.activation=gelu").features.named_children()
    ]
    assert order[:4] == ["conv1", "bn1", "act1", "pool1"]  # gelu(max) != max(gelu)
    x = torch.randn(8, 4, 6, 6)
    for act in (nn.ReLU(), nn.LeakyReLU(), nn.Tanh(), nn.Sigmoid()):
        assert torch.equal(nn.MaxPool2d(2)(act(x)), act(nn.MaxPool2d(2)(x)))


def test_pool_first_normalizes_the_pooled_values_and_is_never_folded_across_the_pool() -> None:
    torch.manual_seed(0)
    model = model_of("model=cnn", "model.channels=[4,8]", "model.pool_first=true")
    order = [name for name, _ in model.features.named_children()]
    assert order == ["conv1", "pool1", "bn1", "act1", "conv2", "pool2", "bn2", "act2"]
    model.train()
    x = torch.randn(16, 1, 28, 28)
    model(x)  # batch norm's statistics: of the pooled 14x14 maps, not of the 28x28 conv output
    pooled = nn.MaxPool2d(2)(model.features.conv1(x))
    assert torch.allclose(model.features.bn1.running_mean, 0.1 * pooled.mean(dim=(0, 2, 3)),
                          atol=1e-6)  # fmt: skip
    # No conv directly before a batch norm: nothing folded (max(affine(a), affine(b)) is not
    # affine(max(a, b)) for a negative scale)
    assert inference_copy(model) is model
