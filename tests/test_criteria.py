"""Tests of lightning_lottery.criteria: the registry and the built-in criteria."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lightning_lottery import criteria
from lightning_lottery.criteria import available_criteria, get_criterion, register_criterion


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(criteria._REGISTRY)
    yield
    criteria._REGISTRY.clear()
    criteria._REGISTRY.update(saved)


def _weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=g),
        "fc.weight": torch.randn(10, 36, generator=g),
    }


def test_builtins_are_registered() -> None:
    names = available_criteria()
    assert {"magnitude", "random"} <= set(names)
    assert names == sorted(names)
    assert get_criterion("magnitude") is criteria.magnitude_scores
    assert get_criterion("random") is criteria.random_scores


def test_unknown_criterion_names_it_and_lists_available() -> None:
    with pytest.raises(ValueError, match="unknown criterion 'snipp'") as info:
        get_criterion("snipp")
    assert "magnitude" in str(info.value) and "random" in str(info.value)


def test_register_custom_criterion(clean_registry: None) -> None:
    @register_criterion("neg")
    def neg(weights, generator=None):  # type: ignore[no-untyped-def]
        return {n: -w.abs().float() for n, w in weights.items()}

    assert "neg" in available_criteria()
    assert get_criterion("neg") is neg
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("neg")(lambda weights, generator=None: {})
    replacement = register_criterion("neg", overwrite=True)(lambda weights, generator=None: {})
    assert get_criterion("neg") is replacement


def test_register_rejects_bad_names() -> None:
    with pytest.raises(ValueError):
        register_criterion("")
    with pytest.raises(ValueError):
        register_criterion(3)  # type: ignore[arg-type]


def test_magnitude_scores() -> None:
    weights = _weights()
    weights["fc.weight"].requires_grad_(True)
    before = {n: w.detach().clone() for n, w in weights.items()}
    scores = get_criterion("magnitude")(weights)
    assert list(scores) == list(weights)
    for name, w in weights.items():
        s = scores[name]
        assert s.dtype == torch.float32 and s.shape == w.shape and s.device == w.device
        assert not s.requires_grad
        assert torch.equal(s, before[name].abs())
        assert torch.equal(w.detach(), before[name])  # weights untouched


def test_magnitude_of_low_precision_weights_is_float32() -> None:
    w = torch.tensor([-1.5, 0.25, 0.0], dtype=torch.bfloat16)
    s = get_criterion("magnitude")({"w": w})["w"]
    assert s.dtype == torch.float32
    assert s.tolist() == [1.5, 0.25, 0.0]


def test_random_scores_shape_range_dtype() -> None:
    weights = _weights()
    scores = get_criterion("random")(weights, torch.Generator().manual_seed(0))
    for name, w in weights.items():
        s = scores[name]
        assert s.dtype == torch.float32 and s.shape == w.shape and s.device == w.device
        assert float(s.min()) >= 0.0 and float(s.max()) < 1.0


def test_random_reproducible_with_seed() -> None:
    weights = _weights()
    crit = get_criterion("random")
    a = crit(weights, torch.Generator().manual_seed(123))
    b = crit(weights, torch.Generator().manual_seed(123))
    c = crit(weights, torch.Generator().manual_seed(124))
    assert all(torch.equal(a[n], b[n]) for n in weights)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_random_is_drawn_on_cpu_in_mapping_order() -> None:
    weights = _weights()
    scores = get_criterion("random")(weights, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    expected = {n: torch.rand(tuple(w.shape), generator=g) for n, w in weights.items()}
    assert all(torch.equal(scores[n], expected[n]) for n in weights)


def test_random_without_generator_uses_global_rng() -> None:
    weights = _weights()
    torch.manual_seed(9)
    a = get_criterion("random")(weights)
    torch.manual_seed(9)
    b = get_criterion("random")(weights)
    assert all(torch.equal(a[n], b[n]) for n in weights)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_same_scores_on_cuda() -> None:
    weights = _weights()
    cuda = {n: w.cuda() for n, w in weights.items()}
    a = get_criterion("random")(weights, torch.Generator().manual_seed(7))
    b = get_criterion("random")(cuda, torch.Generator().manual_seed(7))
    for n in weights:
        assert b[n].device.type == "cuda"
        assert torch.equal(a[n], b[n].cpu())
    with pytest.raises(ValueError, match="CPU"):
        get_criterion("random")(cuda, torch.Generator(device="cuda").manual_seed(7))
