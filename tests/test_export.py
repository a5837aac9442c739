"""Export (lightning_lottery.export): compaction and sparse export give the masked network's outputs (1e-5), on
every reference model, with random, magnitude (IMP-like) and structured masks; files round-trip; the CLI runs."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ticket_run_and_export_parser
from torch import nn

from lightning_lottery.export import SparseLinear, UnsupportedModelError, compact, sparsify
from lightning_lottery.export.chain import masked_copy
from lightning_lottery.export.commands import export_model, run_benchmark, run_export
from lightning_lottery.export.io import load_export, save_export
from lightning_lottery.masks import prunable_parameters
from lightning_lottery.models import VGG, ConvNet, LeNet300100, ResNet20
from lightning_lottery.pruning import prune_to
from lightning_lottery.ticket import Ticket

TOL = 1e-5


def random_mask(model: nn.Module, alive: float = 0.5, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < alive for n, p in prunable_parameters(model).items()}


def magnitude_mask(model: nn.Module, target: float = 0.087) -> dict[str, torch.Tensor]:
    params = prunable_parameters(model)
    ones = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
    return prune_to({n: p.detach().abs() for n, p in params.items()}, ones, target)


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Nonzero biases and BatchNorm statistics, so that folded constants matter."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            m.bias.normal_(0, 0.5)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.normal_(1, 0.2)
            m.bias.normal_(0, 0.5)
    return model.eval()


@torch.no_grad()
def assert_same(model: nn.Module, mask: dict, exported: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(5, *shape)
    ref = masked_copy(model, mask)(x)
    assert (exported(x) - ref).abs().max().item() <= TOL
    assert (exported(x[:1]) - ref[:1]).abs().max().item() <= TOL  # batch 1 too (one-row products)


def lenet() -> nn.Module:
    return randomize(LeNet300100(in_features=64, hidden_sizes=(24, 12)))


def conv2() -> nn.Module:
    return randomize(ConvNet("conv2", in_channels=2, image_size=8))


@pytest.mark.parametrize("make_mask", [random_mask, magnitude_mask], ids=["random", "magnitude"])
@pytest.mark.parametrize("make_model,shape", [(lenet, (64,)), (conv2, (2, 8, 8))], ids=["lenet", "conv2"])
def test_compact_and_sparse_match_the_masked_network(make_model, shape, make_mask):
    model = make_model()
    mask = make_mask(model)
    small, _ = compact(model, mask, shape)
    assert_same(model, mask, small, shape)
    sparse, report = sparsify(small, torch.randn(4, *shape), force="sparse")
    assert any(isinstance(m, SparseLinear) for m in sparse.modules())
    assert all(r["choice"] == "sparse" for r in report["layers"])
    assert_same(model, mask, sparse, shape)


def test_structured_lenet_mask_removes_every_pruned_unit():
    model = lenet()
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()}
    mask["net.fc1.weight"][:10] = False  # 10 hidden units with all fan-in pruned (nonzero bias: constants)
    mask["net.fc2.weight"][:, 20:] = False  # 4 more with all fan-out pruned
    mask["net.fc1.weight"][:, :8] = False  # 8 inputs read by nobody
    small, report = compact(model, mask, (64,))
    assert_same(model, mask, small, (64,))
    fc1 = report["layers"][0]
    assert (fc1["units_kept"], fc1["fan_in_pruned_folded"], fc1["fan_out_pruned"]) == (10, 10, 4)
    assert report["inputs_kept"] == 56 and small.select.size == 56


def test_structured_conv_filters_bn_channels_and_next_inputs():
    model = conv2()
    mask = random_mask(model, 0.6)
    mask["net.features.conv1.weight"][:20] = False  # constant filters (bias), folded into conv2? padded: only if 0
    mask["net.features.conv2.weight"][:, 40:] = False  # conv1 filters 40.. read by nobody
    mask["net.classifier.fc1.weight"][:, : 16 * 30] = False  # conv2 channels 0..29 read by nobody (16 px each)
    small, report = compact(model, mask, (2, 8, 8))
    assert_same(model, mask, small, (2, 8, 8))
    conv1, conv2_ = report["layers"][:2]
    assert conv1["units_kept"] <= 40 and conv2_["units_kept"] == 34
    assert small.features_conv2.in_channels == conv1["units_kept"]


def test_vgg_structured_mask_slices_batchnorm():
    model = randomize(VGG(depth=16))
    mask = random_mask(model, 0.3)
    mask["net.features.conv1.weight"][:, :, :, :] = True
    mask["net.features.conv2.weight"][:, 10:] = False  # conv1 filters 10..63 (and their BN channels) unread
    mask["net.features.conv13.weight"][:100] = False  # constant filters before the global pool + fc: folded
    small, report = compact(model, mask, (3, 16, 16))
    assert_same(model, mask, small, (3, 16, 16))
    assert small.features_bn1.num_features == 10 and report["layers"][12]["units_kept"] <= 412
    mask = magnitude_mask(model)  # an IMP-like (unstructured) mask: compaction keeps the outputs too
    small, _ = compact(model, mask, (3, 16, 16))
    assert_same(model, mask, small, (3, 16, 16))


def test_dead_unit_chain_folds_constants_to_a_fixpoint():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].bias.copy_(torch.tensor([0.7, 0.1, -0.2]))
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(net).items()}
    mask["0.weight"][0] = False  # unit 0 of layer 0: constant relu(0.7)
    mask["2.weight"][1] = torch.tensor([True, False, False])  # unit 1 of layer 2 reads only that constant
    small, report = compact(net, mask, (4,))
    assert_same(net, mask, small, (4,))
    assert [r["fan_in_pruned_folded"] for r in report["layers"]] == [1, 1, 0]
    assert (small[0].out_features, small[2].out_features) == (2, 2)


def test_unsupported_graphs_name_the_module():
    model = randomize(ResNet20(width=4))
    with pytest.raises(UnsupportedModelError, match="'net' \\(CifarResNet\\)"):
        compact(model, random_mask(model), (3, 8, 8))
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModelError, match="'1'.*LayerNorm"):
        compact(net, random_mask(net), (4,))


def test_resnet20_sparse_export_and_module_round_trip(tmp_path):
    model = randomize(ResNet20(width=4))
    mask = random_mask(model, 0.2)
    out, report, shape = export_model(model, mask, "sparse", (3, 8, 8), batch_size=2, num_threads=1)
    assert report["compaction"].startswith("skipped")
    assert_same(model, mask, out, shape)
    magnitude = magnitude_mask(model)
    assert_same(model, magnitude, sparsify(masked_copy(model, magnitude), torch.randn(2, *shape), force="sparse")[0],
                shape)
    forced, _ = sparsify(masked_copy(model, mask), torch.randn(2, *shape), force="sparse")
    save_export(forced, tmp_path, input_shape=shape, source=model, onnx=False)
    doc = json.loads((tmp_path / "model.json").read_text())
    assert doc["kind"] == "module" and list(doc["sparse"]) == ["net.fc"]
    assert_same(model, mask, load_export(tmp_path), shape)


def test_chain_round_trip_no_pickle(tmp_path):
    model = conv2()
    mask = random_mask(model, 0.3)
    mask["net.features.conv1.weight"][:, 1] = False  # input channel 1 unread: a Select
    small, _ = compact(model, mask, (2, 8, 8))
    sparse, _ = sparsify(small, torch.randn(2, 2, 8, 8), force="sparse")
    for i, m in enumerate((small, sparse)):
        save_export(m, tmp_path / str(i), input_shape=(2, 8, 8), onnx=False)
        assert sorted(p.name for p in (tmp_path / str(i)).iterdir()) == ["model.json", "model.safetensors"]
        assert_same(model, mask, load_export(tmp_path / str(i)), (2, 8, 8))


def test_sparse_choice_is_measured_per_layer():
    net = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    _, report = sparsify(net, torch.randn(1, 32), num_threads=1, repeats=3)
    assert {r["choice"] for r in report["layers"]} <= {"dense", "sparse"}
    assert all(r["dense_s"] > 0 and r["sparse_s"] > 0 for r in report["layers"])


def test_cli_export_and_benchmark(tmp_path, capsys):
    model = LeNet300100(in_features=16, hidden_sizes=(8, 4))
    mask = random_mask(model, 0.5)
    mask["net.fc2.weight"][:, :3] = False
    run, parser = ticket_run_and_export_parser(tmp_path, model, mask, "lightning_lottery.models.LeNet300100",
                                               {"in_features": 16, "hidden_sizes": [8, 4]})
    cfg = parser.parse_args(["export", str(run), "--format", "compact", "--onnx", "false"])
    assert run_export(parser, cfg.export) == 0
    assert "units removed 3" in capsys.readouterr().out
    ticket = Ticket.load(run / "ticket.safetensors")
    model.load_state_dict(ticket.state, strict=False)
    assert_same(model, mask, load_export(run / "export_compact"), (16,))
    cfg = parser.parse_args(["benchmark", str(run / "export_compact"), "--batch_sizes", "[2]", "--threads", "[1]",
                             "--rounds", "2", "--json", str(tmp_path / "b.json")])
    assert run_benchmark(parser, cfg.benchmark) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["dense", "masked", "compact"]


def test_onnx_written_when_onnx_is_installed(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = lenet()
    mask = random_mask(model)
    small, _ = compact(model, mask, (64,))
    doc = save_export(small, tmp_path, input_shape=(64,), onnx=True)
    assert doc["onnx"] == "model.onnx"
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    from onnx.reference import ReferenceEvaluator

    x = torch.randn(3, 64)
    (y,) = ReferenceEvaluator(str(tmp_path / "model.onnx")).run(None, {"input": x.numpy()})
    assert (torch.from_numpy(y) - masked_copy(model, mask)(x)).abs().max().item() <= TOL


def test_lightning_lottery_cli_has_export_and_benchmark(capsys):
    from lightning_lottery.cli import main

    with pytest.raises(SystemExit) as err:
        main(["export", "--help"])
    assert err.value.code == 0 and "--format" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["export", "no/such/ticket.safetensors"])
    assert err.value.code == 2 and "no ticket" in capsys.readouterr().err


def test_retrain_save_trained_then_export_the_trained_weights(tmp_path, capsys):
    from pathlib import Path

    from lightning_lottery.cli import main

    smoke = str(Path(__file__).resolve().parents[1] / "recipes" / "lenet300_digits_smoke.yaml")
    out = tmp_path / "exp"
    assert main(["find", "--config", smoke, "--lottery.out_dir", str(out), "--lottery.levels", "1",
                 "--trainer.max_steps", "10", "--lottery.val_every_n_steps", "10", "--quiet", "true"]) == 0
    ticket_file = out / "replicate_0" / "ticket" / "level_01" / "ticket.safetensors"
    with pytest.raises(SystemExit):  # a wrong path is one error before anything is trained
        main(["retrain", "--config", smoke, "--ticket", str(ticket_file), "--save_trained", str(tmp_path / "t.pt")])
    assert "--save_trained must name a .safetensors file" in capsys.readouterr().err
    trained = tmp_path / "trained.safetensors"
    assert main(["retrain", "--config", smoke, "--ticket", str(ticket_file), "--trainer.max_steps", "5",
                 "--quiet", "true", "--wandb.enabled", "false", "--save_trained", str(trained)]) == 0
    saved, start = Ticket.load(trained), Ticket.load(ticket_file)
    assert saved.metadata["trained"] == "true" and any(k.startswith("metric/") for k in saved.metadata)
    assert all(saved.mask[n].equal(start.mask[n]) for n in start.mask)  # the ticket's mask, new weights
    assert any(not saved.state[n].equal(start.state[n]) for n in start.mask)
    assert all(bool((saved.state[n][~saved.mask[n]] == 0).all()) for n in saved.mask)
    capsys.readouterr()
    assert main(["export", str(trained), "--experiment", str(out), "--format", "compact", "--onnx", "false"]) == 0
    assert f"trained weights of {trained}" in capsys.readouterr().out
    from lightning_lottery.export.commands import load_source

    model, mask, _ = load_source(trained, experiment=out)
    assert_same(model, mask, load_export(tmp_path / "export_compact"), (64,))


def test_benchmark_experiment_records_measurements_for_the_report_and_wandb(tmp_path, capsys):
    from pathlib import Path

    from lightning_lottery import measured
    from lightning_lottery.cli import main
    from lightning_lottery.store import ExperimentStore
    from lightning_lottery.tracking import WandbSettings, WandbTracker, read_offline_run

    smoke = str(Path(__file__).resolve().parents[1] / "recipes" / "lenet300_digits_smoke.yaml")
    out = tmp_path / "exp"
    assert main(["find", "--config", smoke, "--lottery.out_dir", str(out), "--lottery.levels", "2",
                 "--trainer.max_steps", "10", "--lottery.val_every_n_steps", "10", "--quiet", "true"]) == 0
    assert "measured speedup" not in (out / "report" / "summary.csv").read_text().replace("_", " ")
    capsys.readouterr()
    assert main(["benchmark", str(out), "--batch_sizes", "[4]", "--threads", "[1]", "--rounds", "2"]) == 0
    assert "recorded in" in capsys.readouterr().out
    entries = measured.read(out)
    assert [(e["branch"], e["level"], e["format"]) for e in entries] == [("ticket", 1, "sparse"), ("ticket", 2, "sparse")]
    assert {r["variant"] for r in entries[0]["rows"]} == {"dense", "masked", "sparse"} and entries[0]["machine"]["torch"]
    # the report's table: measured next to theoretical
    assert main(["report", str(out)]) == 0
    csv_text = (out / "report" / "summary.csv").read_text()
    header = csv_text.splitlines()[0].split(",")
    assert header.index("measured_speedup") == header.index("speedup") + 1
    html = (out / "report" / "report.html").read_text()
    assert "theoretical speedup</th><th data-key=\"measured_speedup\">measured speedup</th>" in html
    ticket_rows = [line for line in csv_text.splitlines()[1:] if line.startswith("ticket,1,") or
                   line.startswith("ticket,2,")]
    assert len(ticket_rows) == 2 and all(line.split(",")[header.index("measured_speedup")] for line in ticket_rows)
    # benchmarking an export of a run records it too (replacing that run's entry of the same format)
    capsys.readouterr()
    level1 = out / "replicate_0" / "ticket" / "level_01"
    assert main(["export", str(level1), "--format", "compact", "--onnx", "false"]) == 0
    assert main(["benchmark", str(level1 / "export_compact"), "--batch_sizes", "[4]", "--threads", "[1]",
                 "--rounds", "2"]) == 0
    assert len(measured.read(out)) == 3
    # the W&B summary run gets the measurements as a table
    store = ExperimentStore(out)
    settings = WandbSettings(project="lottery-tests", mode="offline", dir=str(tmp_path / "wb"))
    WandbTracker(settings, "exp", "h", {}, out, store).finish_experiment(store.results())
    (run_dir,) = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    run = read_offline_run(run_dir)
    logged = {k: v for row in [run.summary, *run.history] for k, v in row.items()}
    columns, data = measured.measurement_rows(measured.read(out))
    assert run.job_type == "summary" and logged["measured_speedup/_type"] == "table-file"
    assert logged["measured_speedup/nrows"] == len(data) == 9


def test_compact_export_fuses_linear_relu_runs_with_the_same_outputs(tmp_path):
    from lightning_lottery.export.layers import LinearStack

    model = lenet()
    mask = random_mask(model, 0.5)
    out, report, shape = export_model(model, mask, "compact", (64,))
    stacks = [m for m in out.modules() if isinstance(m, LinearStack)]
    assert len(stacks) == 1 and stacks[0].relu == [True, True, False]  # fc1-relu-fc2-relu-fc3 in one module
    assert_same(model, mask, out, shape)
    save_export(out, tmp_path, input_shape=shape, onnx=False)
    assert_same(model, mask, load_export(tmp_path), shape)
    conv = randomize(ConvNet("conv2", in_channels=2, image_size=8))
    cmask = random_mask(conv, 0.6)
    cout, _, cshape = export_model(conv, cmask, "compact", (2, 8, 8))
    assert any(isinstance(m, LinearStack) for m in cout.modules())
    assert_same(conv, cmask, cout, cshape)
