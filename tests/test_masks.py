"""Tests of lightning_lottery.masks: selection, application, statistics, checksums and files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_lottery.masks import (
    MaskError,
    apply_mask_,
    check_fits,
    checksum,
    count_alive,
    count_total,
    load_mask,
    ones_mask,
    prunable_parameters,
    read_safetensors,
    remaining,
    remaining_per_layer,
    save_mask,
    to_device,
)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.conv1d = nn.Conv1d(4, 6, 3)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 3, bias=False))
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 5)
        self.head = nn.Linear(5, 2, bias=False)


DEFAULT = ["conv1d.weight", "features.0.weight", "features.3.weight", "fc.weight", "head.weight"]


def _mask(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "a.weight": torch.rand(4, 3, generator=g) < 0.5,
        "b.weight": torch.rand(2, 3, 3, generator=g) < 0.7,
    }


# ---------------------------------------------------------------------------------------- selection


def test_default_selection_is_linear_and_conv_weights() -> None:
    net = Net()
    params = prunable_parameters(net)
    assert list(params) == DEFAULT  # named_parameters() order; no bias, BatchNorm, LayerNorm or Embedding
    named = dict(net.named_parameters())
    assert all(params[n] is named[n] for n in params)


def test_default_selection_of_a_bare_layer() -> None:
    assert list(prunable_parameters(nn.Linear(3, 2))) == ["weight"]


def test_include_replaces_the_default_selection() -> None:
    net = Net()
    assert list(prunable_parameters(net, include=["features.1.*"])) == ["features.1.weight", "features.1.bias"]
    chosen = prunable_parameters(net, include=["*.weight"])
    assert "features.1.weight" in chosen and "embed.weight" in chosen and "norm.weight" in chosen
    assert not any(n.endswith("bias") for n in chosen)


def test_exclude_removes_from_the_selection() -> None:
    net = Net()
    assert list(prunable_parameters(net, exclude=["head.*", "conv1d.weight"])) == [
        "features.0.weight",
        "features.3.weight",
        "fc.weight",
    ]
    assert list(prunable_parameters(net, include=["fc.*"], exclude=["fc.bias"])) == ["fc.weight"]


def test_include_pattern_matching_nothing_is_named() -> None:
    with pytest.raises(MaskError, match=r"include pattern 'classifier\.\*'"):
        prunable_parameters(Net(), include=["fc.*", "classifier.*"])


def test_exclude_pattern_matching_nothing_is_named() -> None:
    with pytest.raises(MaskError, match=r"exclude pattern 'fc\.bias'"):
        prunable_parameters(Net(), exclude=["fc.bias"])  # a parameter, but not a selected one


# ---------------------------------------------------------------------------------------- apply, stats


def test_ones_mask() -> None:
    params = prunable_parameters(Net())
    mask = ones_mask(params)
    assert list(mask) == list(params)
    assert all(m.dtype == torch.bool and m.shape == params[n].shape and bool(m.all()) for n, m in mask.items())


def test_apply_mask_gives_exact_zeros_in_place() -> None:
    torch.manual_seed(0)
    net = Net()
    params = prunable_parameters(net)
    before = {n: p.detach().clone() for n, p in params.items()}
    mask = {n: torch.rand(p.shape) < 0.5 for n, p in params.items()}
    ptrs = {n: p.data_ptr() for n, p in params.items()}
    apply_mask_(params, mask)
    for n, p in params.items():
        assert p.data_ptr() == ptrs[n] and p.requires_grad
        assert bool((p[~mask[n]] == 0.0).all())
        assert torch.equal(p[mask[n]], before[n][mask[n]])


def test_apply_mask_to_gradients_and_mixed_dtypes() -> None:
    tensors = {"a": torch.randn(5, 4), "b": torch.randn(7, dtype=torch.float64), "c": torch.randn(3)}
    mask = {"a": torch.rand(5, 4) < 0.5, "b": torch.rand(7) < 0.5}  # "c" is not masked
    c_before = tensors["c"].clone()
    apply_mask_(tensors, mask)
    assert bool((tensors["a"][~mask["a"]] == 0).all()) and bool((tensors["b"][~mask["b"]] == 0).all())
    assert torch.equal(tensors["c"], c_before)
    apply_mask_({}, mask)  # nothing to do


def test_counts_and_remaining() -> None:
    mask = {"a": torch.tensor([True, False, True, False]), "b": torch.tensor([[True, True], [True, False]])}
    assert count_alive(mask) == 5 and count_total(mask) == 8
    assert remaining(mask) == 5 / 8
    assert remaining_per_layer(mask) == {"a": 0.5, "b": 0.75}
    assert remaining({}) == 1.0
    assert remaining(ones_mask({"w": torch.empty(3, 3)})) == 1.0


def test_to_device_copies_nothing_on_the_same_device() -> None:
    mask = _mask()
    moved = to_device(mask, "cpu")
    assert all(moved[n] is mask[n] for n in mask)


# ---------------------------------------------------------------------------------------- checksum


def test_checksum_equal_for_equal_masks() -> None:
    a = _mask(1)
    b = {n: m.clone() for n, m in reversed(list(a.items()))}  # other objects, other insertion order
    assert checksum(a) == checksum(b)
    assert len(checksum(a)) == 64


def test_checksum_differs_on_any_change() -> None:
    a = _mask(1)
    flipped = {n: m.clone() for n, m in a.items()}
    flipped["b.weight"][1, 2, 2] = ~flipped["b.weight"][1, 2, 2]
    renamed = {("c.weight" if n == "a.weight" else n): m for n, m in a.items()}
    reshaped = {n: (m.reshape(3, 4) if n == "a.weight" else m) for n, m in a.items()}
    sums = {checksum(a), checksum(flipped), checksum(renamed), checksum(reshaped), checksum(_mask(2))}
    assert len(sums) == 5


# ---------------------------------------------------------------------------------------- check_fits


def test_check_fits_accepts_a_fitting_mask() -> None:
    params = prunable_parameters(Net())
    check_fits(ones_mask(params), params)


def test_check_fits_wrong_shape_is_named() -> None:
    params = prunable_parameters(Net())
    mask = ones_mask(params)
    mask["fc.weight"] = torch.ones(8, 5, dtype=torch.bool)
    with pytest.raises(MaskError, match=r"'fc\.weight'.*\(8, 5\).*\(5, 8\)"):
        check_fits(mask, params)


def test_check_fits_missing_name_is_named() -> None:
    params = prunable_parameters(Net())
    mask = ones_mask(params)
    del mask["head.weight"]
    with pytest.raises(MaskError, match=r"lacks .*'head\.weight'"):
        check_fits(mask, params)


def test_check_fits_extra_name_is_named() -> None:
    params = prunable_parameters(Net())
    mask = {**ones_mask(params), "fc.bias": torch.ones(5, dtype=torch.bool)}
    with pytest.raises(MaskError, match=r"'fc\.bias'"):
        check_fits(mask, params)


def test_check_fits_wrong_dtype_is_named() -> None:
    params = prunable_parameters(Net())
    mask = ones_mask(params)
    mask["conv1d.weight"] = mask["conv1d.weight"].float()
    with pytest.raises(MaskError, match=r"'conv1d\.weight'.*dtype"):
        check_fits(mask, params)


# ---------------------------------------------------------------------------------------- files


def test_save_load_round_trip_with_metadata(tmp_path: Path) -> None:
    mask = _mask(3)
    path = tmp_path / "sub" / "mask.safetensors"
    save_mask(mask, path, metadata={"level": "3", "criterion": "magnitude"})
    loaded = load_mask(path)
    assert set(loaded) == set(mask)
    assert all(loaded[n].dtype == torch.bool and torch.equal(loaded[n], mask[n]) for n in mask)
    assert checksum(loaded) == checksum(mask)
    tensors, meta = read_safetensors(path)
    assert meta == {"format": "lightning-lottery-mask", "level": "3", "criterion": "magnitude"}
    assert set(tensors) == set(mask)
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no temporary file left


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "mask.safetensors"
    save_mask(_mask(1), path)
    save_mask(_mask(2), path)
    assert checksum(load_mask(path)) == checksum(_mask(2))


def test_load_mask_of_a_ticket_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    mask = _mask(4)
    tensors = {f"mask/{n}": m for n, m in mask.items()}
    tensors.update({f"weights/{n}": torch.randn(m.shape) for n, m in mask.items()})
    save_file(tensors, str(tmp_path / "ticket.safetensors"))
    loaded = load_mask(tmp_path / "ticket.safetensors")
    assert checksum(loaded) == checksum(mask)


def test_load_mask_rejects_non_bool_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.ones(2, 2)}, str(tmp_path / "float.safetensors"))
    with pytest.raises(MaskError, match=r"float\.safetensors.*'fc\.weight'"):
        load_mask(tmp_path / "float.safetensors")


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(MaskError, match="nope.safetensors"):
        load_mask(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "header-only"])
def test_corrupted_file_is_named(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "mask.safetensors"
    save_mask({"w": torch.rand(1000) < 0.5, "v": torch.rand(30, 30) < 0.5}, path)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) - 100])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(data[:20])
    with pytest.raises(MaskError, match="mask.safetensors"):
        load_mask(path)
