"""Structured pruning (lightning_lottery.structured, ``lottery.structure: units``): hand-computed unit scores and
masks on tiny Linear / Conv weights (L1, L2, layerwise, global per weight), the output layer never pruned, the
structured random-mask control, the config, and end to end: the smoke recipe's masks and their compact export."""

from __future__ import annotations

import torch
import pytest

from lightning_lottery import branches, pruning
from lightning_lottery.config import LotteryConfig
from lightning_lottery.structured import is_unit_structured, random_units_like, unit_counts, unit_scores


def prune_units(scores, mask, rate, *, norm="l1", **kw):
    return pruning.prune(scores, mask, rate, structure="units", unit_norm=norm, **kw)


def prune_units_to(scores, mask, target, *, norm="l1", **kw):
    return pruning.prune_to(scores, mask, target, structure="units", unit_norm=norm, **kw)


def ones(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}


# Linear 3 units × fan-in 2, Conv 2 filters × (1, 2, 2) = fan-in 4, output Linear 2 × 3.
LIN = torch.tensor([[3.0, -4.0], [1.0, 1.0], [-2.0, 0.0]])  # L1 7, 2, 2   L2 5, √2, 2
CONV = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[0.0, 0.0], [0.0, 3.0]]]])  # L1 4, 3   L2 2, 3
OUT = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, 0.1]])
W = {"conv.weight": CONV, "fc.weight": LIN, "out.weight": OUT}
M = ones({n: tuple(w.shape) for n, w in W.items()})
S = {n: w.abs() for n, w in W.items()}


def test_unit_scores_l1_l2_and_per_weight():
    l1, l2 = unit_scores(S, M, "l1"), unit_scores(S, M, "l2")
    assert l1["fc.weight"].tolist() == [7.0, 2.0, 2.0] and l1["conv.weight"].tolist() == [4.0, 3.0]
    assert torch.allclose(l2["fc.weight"], torch.tensor([5.0, 2 ** 0.5, 2.0], dtype=torch.float64))
    assert l2["conv.weight"].tolist() == [2.0, 3.0]
    assert unit_scores(S, M, "l1", per_weight=True)["conv.weight"].tolist() == [1.0, 0.75]  # / fan-in 4
    assert unit_scores(S, M, "l2", per_weight=True)["fc.weight"].tolist()[0] == pytest.approx(5 / 2 ** 0.5)
    dead = {**M, "fc.weight": torch.tensor([[True, False], [True, True], [True, True]])}
    assert unit_scores(S, dead, "l1")["fc.weight"].tolist() == [3.0, 2.0, 2.0]  # pruned weights count nothing


def test_layerwise_l1_ties_lower_index_and_output_kept():
    new = prune_units(S, M, 0.34, norm="l1")  # 1 of 3 fc units (tie 2, 2: unit 1 first), 1 of 2 filters
    assert new["fc.weight"].tolist() == [[True, True], [False, False], [True, True]]
    assert new["conv.weight"][1].logical_not().all() and new["conv.weight"][0].all()
    assert new["out.weight"].all()  # its zero row scores lowest, yet the output layer is never unit-pruned
    assert is_unit_structured(new)


def test_layerwise_l2_changes_the_order():
    new = prune_units(S, M, 0.34, norm="l2")  # L2: fc √2 < 2 → unit 1; conv 2 < 3 → filter 0
    assert unit_counts(new) == {"conv.weight": (1, 2), "fc.weight": (2, 3), "out.weight": (2, 2)}
    assert not new["fc.weight"][1].any() and not new["conv.weight"][0].any() and new["conv.weight"][1].all()


def test_global_normalised_per_weight():
    # L1 per weight: conv 1.0, 0.75; fc 3.5, 1.0, 1.0 → the pool of 5 loses round(0.4 × 5) = 2: 0.75, then the
    # tie at 1.0 in mask order (conv filter 0 before fc unit 1)... but conv must keep one unit: the clamp.
    with pytest.warns(UserWarning, match="conv.weight"):
        new = prune_units(S, M, 0.4, scope="global", norm="l1")
    assert unit_counts(new) == {"conv.weight": (1, 2), "fc.weight": (3, 3), "out.weight": (2, 2)}
    new = prune_units(S, M, 0.6, scope="global", norm="l1", rates={"conv.weight": 0.0})
    # pool fc only: round(0.6 × 3) = 2: units 1, 2 (1.0, 1.0)
    assert new["fc.weight"].tolist() == [[True, True], [False, False], [False, False]] and new["conv.weight"].all()
    unnormalised = prune_units({**S, "conv.weight": S["conv.weight"] * 0 + 0.9}, M, 0.2, scope="global")
    # conv per weight 0.9, 0.9 vs fc 3.5, 1.0, 1.0: round(0.2 × 5) = 1 → conv filter 0 (per weight, not the norm 3.6)
    assert unit_counts(unnormalised)["conv.weight"] == (1, 2)


def test_levels_only_remove_alive_units_and_count_alive_units():
    shapes = {"a.weight": (10, 6), "b.weight": (20, 10), "out.weight": (3, 20)}
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=g) for n, s in shapes.items()}
    mask = ones(shapes)
    counts = []
    for _ in range(3):
        new = pruning.prune(scores, mask, 0.2, structure="units", unit_norm="l2")
        assert all(bool((new[n] <= mask[n]).all()) for n in mask)  # never revived
        mask = new
        counts.append(tuple(a for a, _ in unit_counts(mask).values()))
    assert counts == [(8, 16, 3), (6, 13, 3), (5, 10, 3)]  # round(0.2 × alive units) per level
    assert is_unit_structured(mask)
    mask = pruning.prune(scores, mask, 0.5, structure="units", rates={"a.weight": 0.0, "out.weight": 0.9})
    assert unit_counts(mask)["a.weight"] == (5, 10) and unit_counts(mask)["out.weight"] == (3, 3)


def test_at_least_one_unit_stays():
    mask = ones({"a.weight": (2, 3), "out.weight": (1, 2)})
    scores = {n: torch.ones(m.shape) for n, m in mask.items()}
    with pytest.warns(UserWarning, match="a.weight"):
        for _ in range(3):
            mask = prune_units(scores, mask, 0.9)
    assert unit_counts(mask) == {"a.weight": (1, 2), "out.weight": (1, 1)}


def test_structured_random_mask_keeps_unit_counts():
    mask = prune_units(S, M, 0.34)
    for seed in range(5):
        rnd = pruning.random_mask_like(mask, torch.Generator().manual_seed(seed), structure="units")
        assert unit_counts(rnd) == unit_counts(mask) and is_unit_structured(rnd)
        assert {n: int(m.sum()) for n, m in rnd.items()} == {n: int(m.sum()) for n, m in mask.items()}
    big = {"w": torch.zeros(50, 7, dtype=torch.bool)}
    big["w"][:10] = True
    moved = random_units_like(big, torch.Generator().manual_seed(0))
    assert unit_counts(moved) == {"w": (10, 50)} and not torch.equal(moved["w"], big["w"])
    unstructured = pruning.random_mask_like(mask, torch.Generator().manual_seed(0))
    assert {n: int(m.sum()) for n, m in unstructured.items()} == {n: int(m.sum()) for n, m in mask.items()}


def test_oneshot_to_unit_fractions():
    new = prune_units_to(S, M, 1.0, targets={"fc.weight": 1 / 3, "conv.weight": 0.5, "out.weight": 0.5})
    assert unit_counts(new) == {"conv.weight": (1, 2), "fc.weight": (1, 3), "out.weight": (2, 2)}
    assert new["fc.weight"][0].all()


def test_branch_controls_are_structured(monkeypatch):
    mask = prune_units(S, M, 0.34)
    seeds = type("Seeds", (), {"random_mask": lambda self, run: 3, "oneshot_criterion": 0})()
    dense = type("State", (), {"model": W})()
    inputs = branches.Inputs(run=None, seeds=seeds, mask=mask, rewind_point=None, trained=lambda level: dense,
                             fresh_init=None, score=lambda w, generator=None: {n: v.abs() for n, v in w.items()},
                             structure="units")
    for name in ("random_mask", "oneshot"):
        out = branches.get(name).mask(inputs)
        assert unit_counts(out) == unit_counts(mask) and is_unit_structured(out), name


def test_config_defaults_errors_and_identity():
    cfg = LotteryConfig()
    assert (cfg.structure, cfg.unit_norm) == ("unstructured", "l1")
    from lightning_lottery.identity import _lottery  # the settings away from their defaults

    assert "structure" not in _lottery(cfg) and _lottery(LotteryConfig(structure="units"))["structure"] == "units"
    for bad, match in (({"structure": "rows"}, "lottery.structure"), ({"unit_norm": "l3"}, "lottery.unit_norm")):
        with pytest.raises(ValueError, match=match):
            LotteryConfig(**bad)
    with pytest.raises(ValueError, match="structure: units"):
        LotteryConfig(structure="units", rewind="pai", prune_at_init={"remaining": [0.5]}, levels=1)
    with pytest.raises(pruning.PruningError, match="structure"):
        pruning.prune(S, M, 0.2, structure="rows")
    with pytest.raises(pruning.PruningError, match="unit_norm"):
        prune_units(S, M, 0.2, norm="linf")


def test_structured_imports_no_lightning():
    import subprocess
    import sys

    code = "import sys, lightning_lottery.structured; assert 'lightning' not in sys.modules, 'lightning loaded'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_smoke_recipe_structured_end_to_end_and_compact_export(tmp_path):
    from pathlib import Path

    from lightning_lottery.cli import main
    from lightning_lottery.export import compact
    from lightning_lottery.export.commands import load_source
    from lightning_lottery.masks import load_mask

    smoke = str(Path(__file__).resolve().parents[1] / "recipes" / "lenet300_digits_smoke.yaml")
    out = tmp_path / "exp"
    assert main(["find", "--config", smoke, "--lottery.out_dir", str(out), "--lottery.levels", "2",
                 "--lottery.structure", "units", "--lottery.unit_norm", "l2", "--lottery.controls", "[random_mask]",
                 "--trainer.max_steps", "20", "--lottery.val_every_n_steps", "10", "--quiet", "true"]) == 0
    level2 = out / "replicate_0" / "ticket" / "level_02"
    mask = load_mask(level2 / "mask.safetensors")
    # 300 → 240 → 192 and 100 → 80 → 64 hidden units (20% of the alive units per level); fc3's 10 outputs all kept
    assert unit_counts(mask) == {"net.fc1.weight": (192, 300), "net.fc2.weight": (64, 100), "net.fc3.weight": (10, 10)}
    assert is_unit_structured(mask) and bool(mask["net.fc3.weight"].all())
    control = load_mask(out / "replicate_0" / "random_mask" / "level_02" / "mask.safetensors")
    assert unit_counts(control) == unit_counts(mask) and is_unit_structured(control)
    model, ticket_mask, _ = load_source(level2)
    small, report = compact(model, ticket_mask, (64,))
    assert [r["units_kept"] for r in report["layers"]] == [192, 64, 10]
    x = torch.randn(7, 64)
    from lightning_lottery.export.chain import masked_copy

    assert (small(x) - masked_copy(model, ticket_mask)(x)).abs().max().item() <= 1e-5


# ---------------------------------------------------------------------------------------------- 2:4 (mask_type)


def test_project_2_4_keeps_the_two_largest_alive_per_block_and_never_revives():
    from lightning_lottery.structured import is_2_4, project_2_4

    scores = {"w": torch.tensor([[1.0, 4.0, 3.0, 2.0, 9.0, 8.0, 7.0], [5.0, 5.0, 5.0, 5.0, 1.0, 0.0, 2.0]])}
    mask = {"w": torch.ones(2, 7, dtype=torch.bool)}
    mask["w"][0, 1] = False  # pruned: never revived, never counted
    out = project_2_4(mask, scores)["w"]
    assert out.tolist() == [[False, False, True, True, True, True, False],  # 3, 2 (4 is pruned); tail 9, 8
                            [True, True, False, False, True, False, True]]  # ties: lower index; tail 1, 2
    assert is_2_4({"w": out}) and not is_2_4(mask)
    conv = {"c": torch.ones(3, 2, 3, 3, dtype=torch.bool)}  # fan-in 18 = 4 blocks of 4 and one of 2
    projected = project_2_4(conv, {"c": torch.rand(3, 2, 3, 3, generator=torch.Generator().manual_seed(0))})
    assert is_2_4(projected) and int(projected["c"].sum()) == 3 * (4 * 2 + 2)
    assert project_2_4(projected, {"c": torch.rand(3, 2, 3, 3)})["c"].equal(projected["c"])  # a 2:4 mask is kept


def test_prune_with_mask_type_2_4_every_level_and_errors():
    from lightning_lottery.structured import is_2_4

    g = torch.Generator().manual_seed(0)
    shapes = {"a.weight": (16, 12), "out.weight": (4, 16)}
    scores = {n: torch.rand(s, generator=g) for n, s in shapes.items()}
    mask = ones(shapes)
    for _ in range(4):
        new = pruning.prune(scores, mask, 0.2, mask_type="2:4")
        assert is_2_4(new) and all(bool((new[n] <= mask[n]).all()) for n in new)
        mask = new
    assert is_2_4(pruning.prune_to(scores, ones(shapes), 0.3, mask_type="2:4"))
    with pytest.raises(pruning.PruningError, match="mask_type"):
        pruning.prune(scores, mask, 0.2, mask_type="1:4")
    assert LotteryConfig(mask_type="2:4").mask_type == "2:4"
    for bad in ({"mask_type": "4:8"}, {"mask_type": "2:4", "structure": "units"},
                {"mask_type": "2:4", "controls": ["random_mask"]}):
        with pytest.raises(ValueError, match="lottery.mask_type"):
            LotteryConfig(**bad)


def test_smoke_recipe_search_with_2_4_masks_and_the_projected_export(tmp_path):
    from pathlib import Path

    from lightning_lottery.cli import main
    from lightning_lottery.export.chain import masked_copy
    from lightning_lottery.export.commands import load_source
    from lightning_lottery.export.semistructured import cuda_2_4_available, project_model
    from lightning_lottery.masks import load_mask
    from lightning_lottery.structured import is_2_4

    smoke = str(Path(__file__).resolve().parents[1] / "recipes" / "lenet300_digits_smoke.yaml")
    out = tmp_path / "exp"
    assert main(["find", "--config", smoke, "--lottery.out_dir", str(out), "--lottery.levels", "2",
                 "--lottery.mask_type", "2:4", "--trainer.max_steps", "10", "--lottery.val_every_n_steps", "10",
                 "--quiet", "true"]) == 0
    for level in (1, 2):
        mask = load_mask(out / "replicate_0" / "ticket" / f"level_{level:02d}" / "mask.safetensors")
        assert is_2_4(mask)
    model, ticket_mask, _ = load_source(out / "replicate_0" / "ticket" / "level_02")
    projected, new_mask, report = project_model(model, ticket_mask)
    assert report["mask_was_2_4"] and report["alive_before"] == report["alive_after"]
    assert all(new_mask[n].equal(ticket_mask[n]) for n in ticket_mask)
    x = torch.randn(5, 64)
    assert (projected(x) - masked_copy(model, ticket_mask)(x)).abs().max().item() <= 1e-5
    if not cuda_2_4_available()[0]:
        from lightning_lottery.export.commands import export_model
        from lightning_lottery.export.layers import UnsupportedModelError

        with pytest.raises(UnsupportedModelError, match="--format 2:4 needs a GPU"):
            export_model(model, ticket_mask, "2:4", (64,))


def test_2_4_export_runs_semi_structured_on_a_gpu():
    from lightning_lottery.export.semistructured import cuda_2_4_available, project_model, to_semi_structured

    ok, why = cuda_2_4_available()
    if not ok:
        pytest.skip(f"2:4 semi-structured kernels unavailable: {why}")
    from torch import nn

    net = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if n.endswith("weight")}
    projected, _, _ = project_model(net, mask)
    fast, rows = to_semi_structured(projected)
    assert [r["choice"] for r in rows] == ["2:4", "2:4", "dense"]  # 10 rows: not a multiple of 64
    x = torch.randn(64, 128)
    ref = projected.to("cuda", torch.float16)(x.to("cuda", torch.float16))
    with torch.no_grad():
        assert (fast(x.to("cuda", torch.float16)) - ref).abs().max().item() <= 1e-2  # float16 kernels


def test_callback_prune_structure_units_and_2_4():
    from conftest import TinyData, TinyMLP, make_trainer

    from lightning_lottery import LotteryTicket
    from lightning_lottery.export import compact
    from lightning_lottery.export.chain import masked_copy
    from lightning_lottery.structured import is_2_4

    model, data = TinyMLP(), TinyData()
    lottery = LotteryTicket(rewind_to="0it")
    make_trainer([lottery], max_steps=3).fit(model, data)
    mask = lottery.prune(model, rate=0.25, structure="units", unit_norm="l2")
    assert is_unit_structured(mask)  # 16 → 12 units in both hidden layers; the 3 outputs all kept
    assert unit_counts(mask) == {"net.0.weight": (12, 16), "net.2.weight": (12, 16), "net.4.weight": (3, 3)}
    make_trainer([lottery], max_steps=3).fit(model, data)  # rewound, trained under the structured mask
    assert all(bool((p.detach()[~mask[n]] == 0).all()) for n, p in model.named_parameters() if n in mask)
    net_mask = {n[len("net."):]: m for n, m in mask.items()}  # TinyMLP is the user's own module: compact its net
    small, report = compact(model.net, net_mask, (8,))
    assert [r["units_kept"] for r in report["layers"]] == [12, 12, 3]
    x = torch.randn(4, 8)
    assert (small(x) - masked_copy(model.net, net_mask)(x)).abs().max().item() <= 1e-5
    assert is_2_4(lottery.prune(model, rate=0.2, mask_type="2:4"))
    with pytest.raises(pruning.PruningError, match="structure"):
        lottery.prune(model, rate=0.2, structure="rows")
