"""Tests of lightning_lottery.pruning: counts, scopes, overrides, ties, clamping, one-shot and errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from lightning_lottery import selection
from lightning_lottery.criteria import get_criterion
from lightning_lottery.masks import apply_mask_, count_alive, count_total, ones_mask, prunable_parameters
from lightning_lottery.pruning import PruningError, prune, prune_to, pruning_count, resolve_rates

# ----------------------------------------------------------------------------------------------- helpers


def _random_scores(shapes: dict[str, tuple[int, ...]], seed: int = 0, ints: int = 0) -> dict[str, torch.Tensor]:
    """Random float scores per name (or random integers in [0, ints) as floats, to make many ties)."""
    g = torch.Generator().manual_seed(seed)
    if ints:
        return {n: torch.randint(ints, s, generator=g).float() for n, s in shapes.items()}
    return {n: torch.rand(s, generator=g) * (i + 1) for i, (n, s) in enumerate(shapes.items())}


def _reference(
    scores: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], names: list[str], k: int
) -> dict[str, torch.Tensor]:
    """Brute force: a stable sort of the alive scores of ``names`` concatenated in order; the first k go."""
    flat_s = torch.cat([scores[n].reshape(-1) for n in names])
    flat_m = torch.cat([mask[n].reshape(-1) for n in names])
    alive_idx = flat_m.nonzero().squeeze(1)
    order = torch.sort(flat_s[alive_idx], stable=True).indices
    new = flat_m.clone()
    new[alive_idx[order[:k]]] = False
    out, offset = {}, 0
    for n in names:
        out[n] = new[offset : offset + mask[n].numel()].reshape(mask[n].shape)
        offset += mask[n].numel()
    return out


def _alive(mask: dict[str, torch.Tensor]) -> dict[str, int]:
    return {n: int(m.sum()) for n, m in mask.items()}


SHAPES = {"conv.weight": (8, 3, 3, 3), "fc1.weight": (50, 72), "fc2.weight": (10, 50)}


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the sampled-bracket path and the chunked tie search on small tensors."""
    monkeypatch.setattr(selection, "_DIRECT_LIMIT", 64)
    monkeypatch.setattr(selection, "_SAMPLE_SIZE", 1024)
    monkeypatch.setattr(selection, "_CHUNK", 16)


# ---------------------------------------------------------------------------------------- pruning_count


@pytest.mark.parametrize(
    ("alive", "rate", "expected"),
    [
        (1000, 0.2, 200),
        (5, 0.5, 3),  # 2.5 rounds up
        (3, 0.5, 2),  # 1.5 rounds up
        (10, 0.25, 3),  # 2.5 rounds up
        (7, 0.2, 1),  # 1.4 rounds down
        (150528, 0.2, 30106),  # 30105.6
        (1, 0.4, 0),
        (0, 0.2, 0),
        (100, 0.0, 0),
        (100, 1.0, 100),
        (10**9, 0.35, 350_000_000),
    ],
)
def test_pruning_count(alive: int, rate: float, expected: int) -> None:
    assert pruning_count(alive, rate) == expected


def test_pruning_count_is_exact_for_decimal_rates() -> None:
    # 0.15 * 10 is 1.4999999999999998 in binary floating point; the decimal rate means exactly 1.5
    assert pruning_count(10, 0.15) == 2
    for alive in range(0, 2000, 7):
        assert pruning_count(alive, 0.5) == (alive + 1) // 2


@pytest.mark.parametrize(("alive", "rate"), [(-1, 0.2), (1.5, 0.2), (10, -0.1), (10, 1.1), (10, math.nan)])
def test_pruning_count_errors(alive: object, rate: float) -> None:
    with pytest.raises(PruningError):
        pruning_count(alive, rate)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- resolve_rates

NAMES = ["features.0.weight", "features.3.weight", "classifier.0.weight", "classifier.2.weight"]


def test_resolve_rates_default_only() -> None:
    assert resolve_rates(NAMES, 0.2, {}) == dict.fromkeys(NAMES, 0.2)


def test_resolve_rates_last_match_wins() -> None:
    rates = resolve_rates(NAMES, 0.2, {"features.*": 0.15, "*.weight": 0.3, "classifier.2.weight": 0.1})
    assert rates == {
        "features.0.weight": 0.3,
        "features.3.weight": 0.3,
        "classifier.0.weight": 0.3,
        "classifier.2.weight": 0.1,
    }
    rates = resolve_rates(NAMES, 0.2, {"classifier.2.weight": 0.1, "classifier.*": 0.25})
    assert rates["classifier.2.weight"] == 0.25 and rates["features.0.weight"] == 0.2


def test_resolve_rates_zero_means_untouched() -> None:
    assert resolve_rates(NAMES, 0.2, {"features.0.weight": 0.0})["features.0.weight"] == 0.0


def test_resolve_rates_unmatched_pattern_is_named() -> None:
    with pytest.raises(PruningError, match=r"'fc3\.weight'"):
        resolve_rates(NAMES, 0.2, {"features.*": 0.1, "fc3.weight": 0.1})


@pytest.mark.parametrize("rate", [0.0, 1.0, 1.5, -0.2, math.nan, math.inf, "0.2", True])
def test_resolve_rates_bad_default_rate_is_named(rate: object) -> None:
    with pytest.raises(PruningError, match=r"rate must be a number in \(0, 1\), got " + repr(rate).replace(".", r"\.")):
        resolve_rates(NAMES, rate, {})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1.0, -0.1, 2, math.nan])
def test_resolve_rates_bad_override_is_named(value: float) -> None:
    with pytest.raises(PruningError, match=r"'features\.\*'.*\[0, 1\).*got " + repr(value).replace(".", r"\.")):
        resolve_rates(NAMES, 0.2, {"features.*": value})


# ---------------------------------------------------------------------------------------- layerwise


def test_layerwise_exact_counts_per_level() -> None:
    mask = ones_mask(_random_scores(SHAPES))
    expected = {n: int(torch.Size(s).numel()) for n, s in SHAPES.items()}
    for level in range(5):
        new = prune(_random_scores(SHAPES, seed=level), mask, 0.2)
        expected = {n: a - pruning_count(a, 0.2) for n, a in expected.items()}
        assert _alive(new) == expected
        mask = new


def test_layerwise_matches_brute_force_with_ties() -> None:
    mask = ones_mask(_random_scores(SHAPES))
    for level in range(4):
        scores = _random_scores(SHAPES, seed=10 + level, ints=7)
        new = prune(scores, mask, 0.3)
        for name in SHAPES:
            ref = _reference(scores, mask, [name], pruning_count(int(mask[name].sum()), 0.3))
            assert torch.equal(new[name], ref[name]), name
        mask = new


def test_layerwise_sampled_path_matches_brute_force(small_limits: None) -> None:
    shapes = {"a": (40, 50), "b": (3000,), "c": (17,)}
    mask = ones_mask(_random_scores(shapes))
    for level in range(4):
        for ints in (0, 5, 1000):
            scores = _random_scores(shapes, seed=level, ints=ints)
            new = prune(scores, mask, 0.35, min_alive=0)
            for name in shapes:
                ref = _reference(scores, mask, [name], pruning_count(int(mask[name].sum()), 0.35))
                assert torch.equal(new[name], ref[name]), (name, ints)
        mask = new


def test_lenet_300_100_layerwise_three_levels() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10)
    )
    params = prunable_parameters(net)
    assert {n: p.numel() for n, p in params.items()} == {"1.weight": 235200, "3.weight": 30000, "5.weight": 1000}
    magnitude = get_criterion("magnitude")
    mask = ones_mask(params)
    for _ in range(3):
        with torch.no_grad():  # "training": move the surviving weights, then prune by magnitude
            for p in params.values():
                p.add_(torch.randn_like(p) * 0.01)
        apply_mask_(params, mask)
        new = prune(magnitude(params), mask, 0.2, rates={"5.weight": 0.1})
        assert not any(bool((n & ~o).any()) for n, o in zip(new.values(), mask.values()))
        mask = new
    apply_mask_(params, mask)
    assert _alive(mask) == {"1.weight": 120422, "3.weight": 15360, "5.weight": 729}
    assert count_alive(mask) == 136511 and count_total(mask) == 266200
    assert round(100 * count_alive(mask) / count_total(mask), 2) == 51.28
    assert all(bool((p[~mask[n]] == 0).all()) for n, p in params.items())


# ---------------------------------------------------------------------------------------- global


def test_global_exact_counts_per_level() -> None:
    mask = ones_mask(_random_scores(SHAPES))
    expected_total = count_total(mask)
    for level in range(5):
        scores = _random_scores(SHAPES, seed=level)
        new = prune(scores, mask, 0.2, scope="global")
        expected_total -= pruning_count(expected_total, 0.2)
        assert count_alive(new) == expected_total
        ref = _reference(scores, mask, list(SHAPES), count_alive(mask) - expected_total)
        assert all(torch.equal(new[n], ref[n]) for n in SHAPES)
        mask = new


def test_global_uses_one_threshold_across_layers() -> None:
    scores = _random_scores(SHAPES, seed=3)  # layers on different scales: global pruning is uneven
    mask = ones_mask(scores)
    new = prune(scores, mask, 0.5, scope="global")
    pruned = torch.cat([scores[n][mask[n] & ~new[n]] for n in SHAPES])
    kept = torch.cat([scores[n][new[n]] for n in SHAPES])
    assert pruned.numel() == pruning_count(count_total(mask), 0.5)
    assert float(pruned.max()) <= float(kept.min())
    per_layer = {n: float(new[n].float().mean()) for n in SHAPES}
    assert per_layer["conv.weight"] < per_layer["fc1.weight"] < per_layer["fc2.weight"]


@pytest.mark.parametrize("ints", [0, 3, 50])
def test_global_matches_brute_force(ints: int) -> None:
    mask = ones_mask(_random_scores(SHAPES))
    for level in range(4):
        scores = _random_scores(SHAPES, seed=20 + level, ints=ints)
        new = prune(scores, mask, 0.3, scope="global", min_alive=0)
        ref = _reference(scores, mask, list(SHAPES), pruning_count(count_alive(mask), 0.3))
        assert all(torch.equal(new[n], ref[n]) for n in SHAPES)
        mask = new


@pytest.mark.parametrize("ints", [0, 2, 40, 100_000])
def test_global_sampled_path_matches_brute_force(small_limits: None, ints: int) -> None:
    shapes = {"a": (60, 50), "b": (2000,), "c": (5, 7), "d": (900,)}
    mask = ones_mask(_random_scores(shapes))
    for level in range(5):
        scores = _random_scores(shapes, seed=level, ints=ints)
        for n in shapes:  # large scores on dead weights must not matter
            scores[n][~mask[n]] = 1e9
        new = prune(scores, mask, 0.25, scope="global", min_alive=0)
        ref = _reference(scores, mask, list(shapes), pruning_count(count_alive(mask), 0.25))
        assert all(torch.equal(new[n], ref[n]) for n in shapes), (level, ints)
        mask = new


def test_global_with_overrides_prunes_those_layerwise() -> None:
    scores = _random_scores(SHAPES, seed=4)
    mask = ones_mask(scores)
    new = prune(scores, mask, 0.4, scope="global", rates={"fc2.weight": 0.1, "conv.*": 0.0})
    assert torch.equal(new["conv.weight"], mask["conv.weight"])
    assert int(new["fc2.weight"].sum()) == 500 - 50
    assert torch.equal(new["fc2.weight"], _reference(scores, mask, ["fc2.weight"], 50)["fc2.weight"])
    # fc1 is the whole pool: 40% of it
    assert int(new["fc1.weight"].sum()) == 3600 - pruning_count(3600, 0.4)


def test_global_pool_of_several_with_override() -> None:
    scores = _random_scores(SHAPES, seed=5)
    mask = ones_mask(scores)
    new = prune(scores, mask, 0.3, scope="global", rates={"fc2.weight": 0.15})
    pool = ["conv.weight", "fc1.weight"]
    ref = _reference(scores, mask, pool, pruning_count(216 + 3600, 0.3))
    assert all(torch.equal(new[n], ref[n]) for n in pool)
    assert int(new["fc2.weight"].sum()) == 500 - 75


# ---------------------------------------------------------------------------------------- ties, revival


def test_ties_layerwise_lowest_index_first() -> None:
    scores = {"w": torch.ones(2, 5)}
    mask = ones_mask(scores)
    new = prune(scores, mask, 0.3)  # 3 of 10
    assert new["w"].tolist() == [[False, False, False, True, True], [True] * 5]
    newer = prune(scores, new, 0.5)  # 4 of the 7 alive (3.5 rounds up), from the lowest alive index
    assert newer["w"].tolist() == [[False] * 5, [False, False, True, True, True]]


def test_ties_global_exact_mask_with_clamp() -> None:
    scores = {"b": torch.full((4,), 2.0), "a": torch.full((6,), 2.0)}
    mask = {"b": torch.tensor([True, False, True, True]), "a": torch.ones(6, dtype=torch.bool)}
    with pytest.warns(UserWarning, match="'b'"):
        new = prune(scores, mask, 0.4, scope="global")  # 4 of 9: b's three alive would empty b
    assert new["b"].tolist() == [False, False, False, True]
    assert new["a"].tolist() == [False, True, True, True, True, True]


def test_ties_global_exact_mask_without_clamp() -> None:
    scores = {"b": torch.full((4,), 2.0), "a": torch.full((6,), 2.0)}
    mask = {"b": torch.tensor([True, False, True, True]), "a": torch.ones(6, dtype=torch.bool)}
    new = prune(scores, mask, 0.4, scope="global", min_alive=0)  # 9 alive -> 4 (3.6): b's three, then a[0]
    assert new["b"].tolist() == [False, False, False, False]
    assert new["a"].tolist() == [False, True, True, True, True, True]
    assert list(new) == ["b", "a"]


def test_pruned_weights_never_revived_nor_counted() -> None:
    g = torch.Generator().manual_seed(0)
    scores = {"w": torch.rand(1000, generator=g)}
    mask = {"w": torch.rand(1000, generator=g) < 0.5}
    scores["w"][~mask["w"]] = -1.0  # dead weights look least important: still not candidates
    alive = int(mask["w"].sum())
    for scope in ("layerwise", "global"):
        new = prune(scores, mask, 0.2, scope=scope)  # type: ignore[arg-type]
        assert not bool((new["w"] & ~mask["w"]).any())
        assert int(new["w"].sum()) == alive - pruning_count(alive, 0.2)
    scores["w"][~mask["w"]] = 100.0  # dead weights look most important: still not revived
    new = prune_to(scores, mask, 0.9)
    assert torch.equal(new["w"], mask["w"])


def test_input_mask_untouched_and_outputs_are_new_bool_tensors() -> None:
    scores = _random_scores(SHAPES)
    mask = ones_mask(scores)
    copy = {n: m.clone() for n, m in mask.items()}
    for scope in ("layerwise", "global"):
        new = prune(scores, mask, 0.5, scope=scope, rates={"fc2.weight": 0.0})  # type: ignore[arg-type]
        assert all(torch.equal(mask[n], copy[n]) for n in mask)
        for n in mask:
            assert new[n].dtype == torch.bool and new[n].shape == mask[n].shape and new[n].device == mask[n].device
            assert new[n].data_ptr() != mask[n].data_ptr()
        new["fc2.weight"][0, 0] = False
        assert bool(mask["fc2.weight"][0, 0])


def test_non_contiguous_inputs() -> None:
    scores = {"w": torch.rand(6, 8).t()}
    mask = {"w": torch.ones(8, 6, dtype=torch.bool)}
    new = prune(scores, mask, 0.25)
    assert torch.equal(new["w"], _reference(scores, mask, ["w"], 12)["w"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64])
def test_score_dtypes(dtype: torch.dtype) -> None:
    scores = {n: s.mul(100).to(dtype) for n, s in _random_scores(SHAPES, seed=8).items()}
    mask = ones_mask(scores)
    for scope in ("layerwise", "global"):
        new = prune(scores, mask, 0.2, scope=scope)  # type: ignore[arg-type]
        names = list(SHAPES) if scope == "global" else None
        ref_scores = {n: s.double() for n, s in scores.items()}
        if names:
            ref = _reference(ref_scores, mask, names, pruning_count(count_total(mask), 0.2))
        else:
            ref = {n: _reference(ref_scores, mask, [n], pruning_count(mask[n].numel(), 0.2))[n] for n in SHAPES}
        assert all(torch.equal(new[n], ref[n]) for n in SHAPES)


def test_mixed_score_dtypes_global() -> None:
    scores = {
        "a": torch.tensor([0.1, 0.30000001], dtype=torch.float64),
        "b": torch.tensor([0.3, 0.2], dtype=torch.float32),
    }
    mask = ones_mask(scores)
    new = prune(scores, mask, 0.5, scope="global")
    ref = _reference({n: s.double() for n, s in scores.items()}, mask, ["a", "b"], 2)
    assert all(torch.equal(new[n], ref[n]) for n in scores)


# ---------------------------------------------------------------------------------------- min_alive


def test_min_alive_clamp_layerwise_warns_naming_parameter() -> None:
    scores = {"big": torch.rand(100), "tiny": torch.tensor([0.3, 0.1, 0.2])}
    mask = ones_mask(scores)
    with pytest.warns(UserWarning, match="'tiny'"):
        new = prune(scores, mask, 0.9)
    assert new["tiny"].tolist() == [True, False, False]
    assert int(new["big"].sum()) == 10
    with pytest.warns(UserWarning, match="'tiny'"):
        new = prune(scores, mask, 0.9, min_alive=2)
    assert new["tiny"].tolist() == [True, False, True]


def test_min_alive_clamp_global_keeps_the_layers_best() -> None:
    scores = {"low": torch.tensor([0.01, 0.04, 0.02, 0.03]), "high": torch.arange(1.0, 11.0)}
    mask = ones_mask(scores)
    with pytest.warns(UserWarning, match="'low'"):
        new = prune(scores, mask, 0.5, scope="global", min_alive=2)  # 7 to go: low's 4 + high's 3
    assert new["low"].tolist() == [False, True, False, True]
    assert new["high"].tolist() == [False] * 3 + [True] * 7  # not redistributed


def test_no_warning_without_clamp_and_min_alive_zero_empties() -> None:
    scores = {"tiny": torch.tensor([0.3, 0.1])}
    mask = ones_mask(scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = prune(scores, mask, 0.9, min_alive=0)
        assert new["tiny"].tolist() == [False, False]
        prune(_random_scores(SHAPES), ones_mask(_random_scores(SHAPES)), 0.2, scope="global")


def test_already_below_min_alive_prunes_nothing() -> None:
    scores = {"w": torch.rand(10)}
    mask = {"w": torch.zeros(10, dtype=torch.bool)}
    mask["w"][3] = True
    with pytest.warns(UserWarning, match="'w'"):
        new = prune(scores, mask, 0.9)  # 1 would go (0.9 rounds to 1): clamped to 0
    assert torch.equal(new["w"], mask["w"])


# ---------------------------------------------------------------------------------------- prune_to


def test_prune_to_layerwise_counts() -> None:
    scores = _random_scores(SHAPES, seed=6)
    mask = ones_mask(scores)
    new = prune_to(scores, mask, 0.1)
    assert _alive(new) == {"conv.weight": 22, "fc1.weight": 360, "fc2.weight": 50}  # 21.6 -> 22
    new = prune_to(scores, mask, 0.05, targets={"fc2.weight": 0.5, "conv.*": 1.0})
    assert _alive(new) == {"conv.weight": 216, "fc1.weight": 180, "fc2.weight": 250}


def test_prune_to_global_counts_and_threshold() -> None:
    scores = _random_scores(SHAPES, seed=7)
    mask = ones_mask(scores)
    new = prune_to(scores, mask, 0.2, scope="global", min_alive=0)
    total = count_total(mask)
    assert count_alive(new) == math.floor(0.2 * total + 0.5)
    ref = _reference(scores, mask, list(SHAPES), total - count_alive(new))
    assert all(torch.equal(new[n], ref[n]) for n in SHAPES)
    new = prune_to(scores, mask, 0.2, scope="global", targets={"fc2.weight": 0.5}, min_alive=0)
    assert int(new["fc2.weight"].sum()) == 250
    assert int(new["conv.weight"].sum()) + int(new["fc1.weight"].sum()) == round(0.2 * 3816)


def test_prune_to_counts_from_the_total_and_revives_nothing() -> None:
    scores = _random_scores(SHAPES, seed=9)
    mask = prune(scores, ones_mask(scores), 0.5)  # half alive
    new = prune_to(scores, mask, 0.25)
    assert _alive(new) == {"conv.weight": 54, "fc1.weight": 900, "fc2.weight": 125}
    assert not any(bool((new[n] & ~mask[n]).any()) for n in SHAPES)
    same = prune_to(scores, mask, 0.8)  # fewer than the target are alive already
    assert all(torch.equal(same[n], mask[n]) for n in SHAPES)
    same = prune_to(scores, mask, 1.0, scope="global")
    assert all(torch.equal(same[n], mask[n]) for n in SHAPES)


@pytest.mark.parametrize("target", [0.0, 1.5, -0.5, math.nan])
def test_prune_to_bad_target(target: float) -> None:
    scores = _random_scores(SHAPES)
    with pytest.raises(PruningError, match="target"):
        prune_to(scores, ones_mask(scores), target)


def test_prune_to_bad_override() -> None:
    scores = _random_scores(SHAPES)
    with pytest.raises(PruningError, match=r"'nope\.\*'"):
        prune_to(scores, ones_mask(scores), 0.5, targets={"nope.*": 0.5})
    with pytest.raises(PruningError, match=r"'fc1\.weight'.*got 0\.0"):
        prune_to(scores, ones_mask(scores), 0.5, targets={"fc1.weight": 0.0})


# ---------------------------------------------------------------------------------------- errors


def test_nan_scores_are_named() -> None:
    scores = _random_scores(SHAPES)
    mask = ones_mask(scores)
    scores["fc1.weight"][3, 4] = math.nan
    for scope in ("layerwise", "global"):
        with pytest.raises(PruningError, match=r"'fc1\.weight'.*NaN"):
            prune(scores, mask, 0.2, scope=scope)  # type: ignore[arg-type]
    mask["fc1.weight"][3, 4] = False  # NaN on a pruned weight is irrelevant
    assert int(prune(scores, mask, 0.2)["fc1.weight"].sum()) == 3599 - pruning_count(3599, 0.2)


def test_names_that_disagree_are_named() -> None:
    scores = _random_scores(SHAPES)
    mask = ones_mask(scores)
    extra = {**scores, "fc9.weight": torch.rand(3)}
    with pytest.raises(PruningError, match=r"'fc9\.weight'"):
        prune(extra, mask, 0.2)
    missing = {n: s for n, s in scores.items() if n != "fc2.weight"}
    with pytest.raises(PruningError, match=r"'fc2\.weight'"):
        prune(missing, mask, 0.2)


def test_shapes_that_disagree_are_named() -> None:
    scores = _random_scores(SHAPES)
    mask = ones_mask(scores)
    scores["fc2.weight"] = scores["fc2.weight"].t()
    with pytest.raises(PruningError, match=r"'fc2\.weight'.*\(50, 10\).*\(10, 50\)"):
        prune(scores, mask, 0.2, scope="global")


def test_non_bool_mask_and_bad_arguments() -> None:
    scores = _random_scores(SHAPES)
    mask = ones_mask(scores)
    with pytest.raises(PruningError, match=r"'conv\.weight'.*dtype"):
        prune(scores, {**mask, "conv.weight": mask["conv.weight"].float()}, 0.2)
    with pytest.raises(PruningError, match="scope"):
        prune(scores, mask, 0.2, scope="per-layer")  # type: ignore[arg-type]
    with pytest.raises(PruningError, match="min_alive"):
        prune(scores, mask, 0.2, min_alive=-1)
    with pytest.raises(PruningError, match=r"got 1\.0"):
        prune(scores, mask, 1.0)
    with pytest.raises(PruningError, match=r"'fc3\.weight'"):
        prune(scores, mask, 0.2, scope="global", rates={"fc3.weight": 0.1})


def test_empty_mask() -> None:
    assert prune({}, {}, 0.2) == {}
    assert prune_to({}, {}, 0.2, scope="global") == {}


def test_random_criterion_gives_reproducible_masks() -> None:
    shapes = {"a": (30, 20), "b": (100,)}
    weights = {n: torch.empty(s) for n, s in shapes.items()}
    crit = get_criterion("random")
    masks = [
        prune(crit(weights, torch.Generator().manual_seed(s)), ones_mask(weights), 0.5, scope="global")
        for s in (11, 11, 12)
    ]
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in shapes)
    assert not all(torch.equal(masks[0][n], masks[2][n]) for n in shapes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_masks_stay_on_cuda_and_match_cpu() -> None:
    scores = _random_scores(SHAPES, seed=2, ints=9)
    mask = ones_mask(scores)
    cuda_scores = {n: s.cuda() for n, s in scores.items()}
    cuda_mask = {n: m.cuda() for n, m in mask.items()}
    for scope in ("layerwise", "global"):
        a = prune(scores, mask, 0.3, scope=scope)  # type: ignore[arg-type]
        b = prune(cuda_scores, cuda_mask, 0.3, scope=scope)  # type: ignore[arg-type]
        assert all(b[n].device.type == "cuda" and torch.equal(a[n], b[n].cpu()) for n in SHAPES)


#: The pure-torch modules, and the package modules they may import (themselves pure, checked below too).
_TENSOR_MODULES = ["masks", "criteria", "pruning", "selection", "structured"]
_PURE_INTERNAL = {"lightning_lottery.masks", "lightning_lottery.selection", "lightning_lottery.atomic",
                  "lightning_lottery.structured"}


@pytest.mark.parametrize("module", _TENSOR_MODULES)
def test_tensor_modules_import_no_lightning(module: str) -> None:
    import ast
    import importlib

    path = importlib.import_module(f"lightning_lottery.{module}").__file__
    assert path is not None
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "torch" in imported
    assert not [m for m in imported if m.split(".")[0] in {"lightning", "pytorch_lightning", "torchmetrics"}]
    internal = {m for m in imported if m.startswith("lightning_lottery")}
    assert internal <= _PURE_INTERNAL


def test_tensor_modules_do_not_load_lightning_transitively() -> None:
    import subprocess
    import sys

    modules = sorted({f"lightning_lottery.{m}" for m in _TENSOR_MODULES} | _PURE_INTERNAL)
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "heavy = {'lightning', 'pytorch_lightning', 'torchmetrics'}\n"
        + "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {modules} loads {out.strip()}"
