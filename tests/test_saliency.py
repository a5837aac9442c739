"""Pruning-at-initialization scores against hand-computed values on tiny networks (lightning_lottery.saliency)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_lottery import saliency
from lightning_lottery.criteria import criterion_info, get_criterion
from lightning_lottery.pruning import PruningError


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def two_logits(w1: float = 1.0, w2: float = 0.5) -> nn.Module:
    """logits = [w1 x, w2 x]: with x = 1 and label 0, L = softplus(d), d = (w2 - w1) / T."""
    net = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[w1], [w2]]))
    return net


ONE = torch.ones(1, 1)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_snip_is_abs_of_theta_times_the_summed_gradient():
    net = two_logits()
    scores = saliency.snip_scores(net, {"weight": net.weight}, [(ONE, torch.tensor([0]))])
    s = sigmoid(-0.5)  # dL/dw = sigma(d) * [-1, 1], d = -0.5
    assert scores["weight"].flatten().tolist() == pytest.approx([s * 1.0, s * 0.5], rel=1e-6)
    # two batches: the gradients are summed, then the absolute value taken (Synaptic-Flow), not |.| summed
    scores = saliency.snip_scores(net, {"weight": net.weight},
                                  [(ONE, torch.tensor([0])), (ONE, torch.tensor([1]))])
    g = sigmoid(0.5) - sigmoid(-0.5)  # [-s(d) + s(-d), s(d) - s(-d)]
    assert scores["weight"].flatten().tolist() == pytest.approx([g * 1.0, g * 0.5], rel=1e-6)


def test_snip_scores_in_eval_mode_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.9), nn.Linear(8, 3))
    net.train()
    net[0].weight.grad = torch.full_like(net[0].weight, 7.0)
    net[2].bias.requires_grad_(False)
    before = state(net)
    batches = [(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))]
    weights = {"0.weight": net[0].weight, "2.weight": net[2].weight}
    a = saliency.snip_scores(net, weights, batches)
    b = saliency.snip_scores(net, weights, batches)  # dropout off: deterministic
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert net.training and net[1].training
    assert torch.equal(net[0].weight.grad, torch.full_like(net[0].weight, 7.0)) and net[2].weight.grad is None
    assert not net[2].bias.requires_grad


@pytest.mark.parametrize("temperature", [1.0, saliency.GRASP_TEMPERATURE])
def test_grasp_is_signed_theta_times_hg(temperature):
    net = two_logits(1.0, 0.5)
    scores = saliency.grasp_scores(net, {"weight": net.weight}, [(ONE, torch.tensor([0]))], temperature)
    # L = softplus((w2 - w1)/T): g = s(d)/T [-1, 1], H = s(d)(1 - s(d))/T^2 [[1, -1], [-1, 1]], Hg = 2 s s' / T^3 [-1, 1]
    d = -0.5 / temperature
    s = sigmoid(d)
    hg = 2 * s * s * (1 - s) / temperature ** 3
    assert scores["weight"].flatten().tolist() == pytest.approx([-1.0 * hg, 0.5 * hg], rel=1e-4)
    # the sign decides: the larger weight scores negative and goes first; magnitude would keep it
    mask = saliency.prune_at_init(net, ["weight"], lambda w: saliency.grasp_scores(
        net, w, [(ONE, torch.tensor([0]))], temperature), 0.5)
    assert mask["weight"].flatten().tolist() == [False, True]


def test_grasp_matches_the_full_hessian_on_a_tiny_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    batches = [(torch.randn(6, 3), torch.randint(0, 3, (6,))) for _ in range(2)]
    names = ["0.weight", "2.weight"]
    params = dict(net.named_parameters())
    scores = saliency.grasp_scores(net, {n: params[n] for n in names}, batches, temperature=2.0)
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().flatten() for n in names])

    def loss(flat, x, y):
        w1, w2 = flat[:12].view(shapes[0]), flat[12:].view(shapes[1])
        h = torch.tanh(x @ w1.T + net[0].bias.detach())
        return nn.functional.cross_entropy((h @ w2.T + net[2].bias.detach()) / 2.0, y)

    g = sum(torch.autograd.functional.jacobian(lambda f: loss(f, x, y), flat0) for x, y in batches)
    h = sum(torch.autograd.functional.hessian(lambda f: loss(f, x, y), flat0) for x, y in batches)
    expected = flat0 * (h @ g)
    got = torch.cat([scores[n].flatten() for n in names])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert (got < 0).any() and (got > 0).any()  # signed


def test_synflow_makes_weights_and_buffers_positive_on_an_all_ones_input():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(-2.0)
        net[1].weight.fill_(-0.5)
        net[1].bias.fill_(-1.0)
        net[1].running_mean.fill_(-3.0)
        net[1].running_var.fill_(4.0)
        net[2].weight.fill_(-1.5)
    net.train()
    before = state(net)
    weights = {"0.weight": net[0].weight, "2.weight": net[2].weight}
    # the data's values do not matter, only the shape: R = 1.5 * ((2*1 - 3) / sqrt(4 + eps) * 0.5 + 1)
    scores = saliency.synflow_scores(net, weights, [(torch.randn(7, 1) * 100, None)])
    sd = math.sqrt(4.0 + 1e-5)
    bn = (2.0 - 3.0) / sd * 0.5 + 1.0
    assert float(scores["2.weight"]) == pytest.approx(1.5 * bn, rel=1e-6)  # |v| * dR/dv
    assert float(scores["0.weight"]) == pytest.approx(2.0 * 1.5 * 0.5 / sd, rel=1e-6)  # |w| * dR/dw
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # signs and buffers restored
    assert net.training


def test_synflow_hand_values_and_a_masked_network():
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[4.0, -1.0], [2.0, -2.0]]))
        net[2].weight.copy_(torch.tensor([[-1.0, 3.0]]))
    w = {"0.weight": net[0].weight, "2.weight": net[2].weight}
    s = saliency.synflow_scores(net, w, [(torch.zeros(1, 2), None)])
    # W1[i, j] -> |W1[i, j]| |W2[i]|; W2[i] -> |W2[i]| * sum_j |W1[i, j]|
    assert s["0.weight"].tolist() == [[4.0, 1.0], [6.0, 6.0]] and s["2.weight"].tolist() == [[5.0, 12.0]]
    with torch.no_grad():
        net[2].weight[0, 1] = 0.0  # pruned: the whole second hidden unit carries no flow any more
    s = saliency.synflow_scores(net, w, [(torch.zeros(1, 2), None)])
    assert s["0.weight"].tolist() == [[4.0, 1.0], [0.0, 0.0]] and s["2.weight"].tolist() == [[5.0, 0.0]]


def test_density_schedule_is_exponential():
    sched = saliency.density_schedule(0.01, 100)
    assert len(sched) == 100 and sched[-1] == 0.01
    assert sched[0] == pytest.approx(0.01 ** 0.01) and sched[49] == pytest.approx(0.1)
    assert saliency.density_schedule(0.3, 1) == [0.3]
    with pytest.raises(PruningError):
        saliency.density_schedule(0.3, 0)


def test_rounds_rescore_the_masked_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    before = state(net)
    seen: list[dict[str, torch.Tensor]] = []

    def score(weights):
        seen.append({n: w.detach().clone() for n, w in weights.items()})
        return {n: w.detach().abs() for n, w in weights.items()}

    mask = saliency.prune_at_init(net, ["0.weight", "2.weight"], score, 0.125, rounds=3)
    assert len(seen) == 3
    alive = [sum(int(torch.count_nonzero(w)) for w in round_.values()) for round_ in seen]
    total = 140
    assert alive == [total, round(total * 0.5), round(total * 0.25)]  # 0.125 ** (1/3) = 0.5, then 0.25
    assert sum(int(m.sum()) for m in mask.values()) == round(total * 0.125)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_synflow_criterion_defaults_to_100_rounds_and_snip_grasp_to_one():
    assert criterion_info("synflow").rounds == 100 and criterion_info("synflow").data
    assert criterion_info("snip").rounds == 1 and criterion_info("grasp").rounds == 1
    net = two_logits()
    scores = get_criterion("snip")({"weight": net.weight}, None, model=net, batches=[(ONE, torch.tensor([0]))])
    assert scores["weight"].dtype == torch.float32 and scores["weight"].shape == net.weight.shape


def test_min_density_keeps_every_layer_above_it_and_the_total_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 5))

    def score(weights):  # the last layer scores far below everything else: global pruning would empty it
        return {n: w.detach().abs() * (1e-6 if n == "2.weight" else 1.0) for n, w in weights.items()}

    names = ["0.weight", "2.weight"]
    with pytest.warns(UserWarning, match="min_alive"):  # only pruning's last-weight guard, with a warning
        plain = saliency.prune_at_init(net, names, score, 0.1)
    assert int(plain["2.weight"].sum()) == 1
    guarded = saliency.prune_at_init(net, names, score, 0.1, min_density=0.05)
    assert int(guarded["2.weight"].sum()) == math.ceil(0.05 * 100)
    assert sum(int(m.sum()) for m in guarded.values()) == 50  # 10% of 500, unchanged
    w = net[2].weight.detach().abs()  # the layer's own best are the ones kept
    assert w[guarded["2.weight"]].min() >= w[~guarded["2.weight"]].max()
    with pytest.raises(PruningError, match="min_density"):
        saliency.prune_at_init(net, names, score, 0.01, min_density=0.05)


def test_prune_set_takes_samples_in_batches_and_leaves_the_global_rng():
    data = [(torch.arange(i * 60, i * 60 + 60).float().unsqueeze(1), torch.zeros(60, dtype=torch.long))
            for i in range(5)]
    torch.manual_seed(3)
    expected_next = torch.rand(1)
    torch.manual_seed(3)
    batches = saliency.prune_set(data, 100, 32, seed=0)
    assert [len(x) for x, _ in batches] == [32, 32, 32, 4]
    assert torch.cat([x for x, _ in batches]).flatten().tolist() == list(range(100))
    assert torch.equal(torch.rand(1), expected_next)
    with pytest.raises(PruningError, match="inputs, labels"):
        saliency.prune_set([{"x": torch.zeros(2)}], 10, 4, seed=0)


def test_mask_at_init_scores_the_given_state_and_restores_the_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    theta0 = state(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(5.0)  # "trained"
    trained = state(net)
    mask = saliency.mask_at_init(net, theta0, ["0.weight"], lambda w: {n: x.detach().abs() for n, x in w.items()},
                                 0.5)
    w0 = theta0["0.weight"].abs()
    assert w0[mask["0.weight"]].min() >= w0[~mask["0.weight"]].max()  # scored at θ0, not at the trained weights
    assert all(torch.equal(v, trained[k]) for k, v in net.state_dict().items())
