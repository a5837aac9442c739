"""ResNet compaction (lightning_lottery.export.resnet): each basic block's internal channels go when the mask makes
them dead; the outputs stay the masked network's (1e-5) with random, hand-built and structured masks; the saved
model (safetensors + JSON) loads without the original class; the CLI exports ResNet-20 as compact."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ticket_run_and_export_parser
from test_export import TOL, assert_same, random_mask, randomize
from torch import nn

from lightning_lottery.export import CompactResNet, UnsupportedModelError, compact_resnet
from lightning_lottery.export.chain import masked_copy
from lightning_lottery.export.commands import describe_report, export_model, run_export
from lightning_lottery.export.io import load_export, save_export
from lightning_lottery.masks import prunable_parameters
from lightning_lottery.models import ResNet20
from lightning_lottery.models.resnet import BasicBlock, CifarResNet
from lightning_lottery.pruning import prune
from lightning_lottery.ticket import Ticket

SHAPE = (3, 8, 8)


def tiny() -> nn.Module:
    return randomize(CifarResNet(blocks=1, width=4))


def ones(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()}


def rows(report: dict) -> dict[str, tuple[int, int, int, int]]:
    return {r["block"]: (r["channels_kept"], r["fan_out_pruned"], r["fan_in_pruned_zero"], r["fan_in_pruned_folded"])
            for r in report["blocks"]}


@pytest.mark.parametrize("alive", [0.5, 0.05])
def test_random_unstructured_masks_keep_the_outputs(alive):
    model = tiny()
    mask = random_mask(model, alive)
    small, report = compact_resnet(model, mask, SHAPE)
    assert isinstance(small, CompactResNet)
    assert_same(model, mask, small, SHAPE)
    assert report["parameters_after"] <= report["parameters_before"]


@torch.no_grad()
def test_hand_built_dead_channels_dropped_or_folded_exactly():
    model = tiny()
    b1, b2 = model.stage1.block1, model.stage2.block1
    b1.bn1.running_mean[1:3] = 0.0
    b1.bn1.bias[1], b1.bn1.bias[2] = -3.0, 2.0  # constants relu(-3) = 0 and relu(2) = 2 once the fan-in is cut
    b2.bn1.running_mean.zero_()
    b2.bn1.bias.fill_(1.5)
    mask = ones(model)
    mask["stage1.block1.conv2.weight"][:, 0] = False  # channel 0: dead fan-out, dropped
    mask["stage1.block1.conv1.weight"][1] = False  # channel 1: dead fan-in, constant 0, dropped
    mask["stage1.block1.conv1.weight"][2] = False  # channel 2: dead fan-in, constant 2, folded (zero-padded conv2)
    mask["stage1.block1.conv1.weight"][3, :, 1:, :] = False  # channel 3: one alive weight left, kept
    mask["stage2.block1.conv1.weight"][:] = False  # every channel: constant 1.5, all folded (no conv path left)
    mask["stage2.block1.conv2.weight"][:, 7] = False  # ... but channel 7 is unread too: dead both ways, dropped
    mask["stage3.block1.conv2.weight"][:] = False  # nothing reads any internal channel: the block is bn2(0) + x
    small, report = compact_resnet(model, mask, SHAPE)
    assert_same(model, mask, small, SHAPE)
    assert rows(report) == {"stage1.block1": (1, 1, 1, 1), "stage2.block1": (0, 1, 0, 7),
                            "stage3.block1": (0, 16, 0, 0)}
    assert report["channels_removed"] == 3 + 8 + 16
    blocks = small.blocks
    assert (blocks.stage1_block1.conv1.out_channels, blocks.stage1_block1.conv2.in_channels) == (1, 1)
    assert blocks.stage1_block1.has_constant and not hasattr(blocks.stage2_block1, "conv1")
    assert not blocks.stage3_block1.constant.any()  # no folded channel: its constant term is 0
    x = torch.randn(3, 3, 13, 11)  # the folded constant term is exact at any input size (odd ones too)
    assert (small(x) - masked_copy(model, mask)(x)).abs().max().item() <= TOL
    text = describe_report({"compaction": report})
    assert "stage2.block1: 0/8 internal channels kept" in text and "residual channels kept" in text


def test_structured_mask_removes_every_pruned_internal_filter():
    model = tiny()
    params = prunable_parameters(model)
    scores = {n: p.detach().abs() for n, p in params.items()}
    mask = prune(scores, ones(model), 0.5, structure="units")
    mask = prune(scores, mask, 0.5, structure="units")
    small, report = compact_resnet(model, mask, SHAPE)
    assert_same(model, mask, small, SHAPE)
    for r in report["blocks"]:
        alive = int(mask[f"{r['block']}.conv1.weight"].flatten(1).any(1).sum())
        assert r["channels_kept"] == alive < r["channels"]  # every pruned conv1 filter is gone
    residual = mask["stage1.block1.conv2.weight"].flatten(1).any(1)
    assert not residual.all() and small.blocks.stage1_block1.conv2.out_channels == 4  # residual channels stay


def test_resnet20_compact_export_round_trips_without_the_class(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = randomize(ResNet20(width=4))
    mask = random_mask(model, 0.3)
    mask["net.stage1.block2.conv1.weight"][:2] = False
    mask["net.stage3.block3.conv2.weight"][:, 3:9] = False
    out, report, shape = export_model(model, mask, "compact", SHAPE)
    comp = report["compaction"]
    assert comp["kind"] == "resnet" and len(comp["blocks"]) == 9
    assert rows(comp)["net.stage3.block3"][1] >= 6
    assert_same(model, mask, out, shape)
    doc = save_export(out, tmp_path, input_shape=shape, source=model, onnx=True,
                      info={"report": report})
    assert doc["kind"] == "resnet" and doc["onnx"] == "model.onnx" and "class_path" not in doc
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["architecture"] == out.architecture()
    assert_same(model, mask, load_export(tmp_path), shape)
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    from onnx.reference import ReferenceEvaluator

    x = torch.randn(3, *shape)
    (y,) = ReferenceEvaluator(str(tmp_path / "model.onnx")).run(None, {"input": x.numpy()})
    assert (torch.from_numpy(y) - masked_copy(model, mask)(x)).abs().max().item() <= TOL
    sparse, sreport, _ = export_model(model, mask, "sparse", shape, batch_size=2, num_threads=1)
    assert sreport["compaction"].startswith("skipped")  # sparse on ResNet: as before (Linear layers only)
    assert_same(model, mask, sparse, shape)


def test_unsupported_resnet_parts_are_named():
    class Other(BasicBlock):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = tiny()
    model.stage2.block1 = Other(4, 8, stride=2)
    with pytest.raises(UnsupportedModelError, match="'stage2.block1'.*Other.*not a BasicBlock"):
        compact_resnet(model, ones(model), SHAPE)

    class Residual(nn.Module):  # any other graph with an add: one clear error naming it
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc(x)

    with pytest.raises(UnsupportedModelError, match="'Residual'.*not an nn.Sequential"):
        export_model(Residual(), ones(Residual()), "compact", (4,))


def test_cli_export_compact_of_a_resnet20_ticket(tmp_path, capsys):
    model = ResNet20(width=4)
    mask = random_mask(model, 0.5)
    mask["net.stage2.block2.conv2.weight"][:, :5] = False
    run, parser = ticket_run_and_export_parser(tmp_path, model, mask, "lightning_lottery.models.ResNet20",
                                               {"width": 4})
    cfg = parser.parse_args(["export", str(run), "--format", "compact", "--onnx", "false",
                             "--input_shape", "[3,8,8]"])
    assert run_export(parser, cfg.export) == 0
    out = capsys.readouterr().out
    assert "internal block channels removed" in out and "net.stage2.block2: 3/8 internal channels kept" in out
    model.load_state_dict(Ticket.load(run / "ticket.safetensors").state, strict=False)
    assert_same(model, mask, load_export(run / "export_compact"), SHAPE)
