"""losscore.export: the export document is faithful JSON and verify catches any change."""
from __future__ import annotations

import dataclasses
import math

import orjson
import pytest
import torch
from hypothesis import given, settings, strategies as st

from losscore import export, registry, verify, wire
from losscore.scene import Box, Pin, Scene
from losscore.registry import all_schemes, get_scheme
from losscore.trace import Trace, decode_tensor
from test_api_toyscheme import with_toy


@pytest.fixture(scope="module", autouse=True)
def _toy_family():
    with with_toy():
        yield
REAL_SCHEMES = sorted(name for name in all_schemes() if name != "toy")


def pins_for(scheme: str) -> tuple:
    """One pinned prediction: a grid cell on level 1, or DETR's query 3 (level 0, cell (0, 0))."""
    spec = get_scheme(scheme)
    if spec.kind == "queries":
        return (Pin(level=0, anchor=3, gi=0, gj=0, cx=170.0, cy=200.0, w=60.0, h=90.0),)
    if not spec.pred_box:
        return ()  # the focal playground has no boxes to pin
    return (Pin(level=1, anchor=0, gi=10, gj=12, cx=170.0, cy=200.0, w=60.0, h=90.0),)


def first_tensor(result):
    """A computed tensor of a result: its first map level, else its first loss."""
    if result.maps:
        return next(iter(result.maps.values()))[0]
    return next(iter(result.losses.values()))


def toy_scene(**overrides) -> Scene:
    fields = dict(scheme="toy", width=128, height=96, nc=3, boxes=(Box(1, 16, 16, 48, 48), Box(0, 70, 20, 120, 90)),
                  device="cpu")
    fields.update(overrides)
    return Scene(**fields)


def real_scene(scheme: str) -> Scene:
    return Scene(scheme, 640, 640, 4, (Box(3, 52, 60, 148, 260), Box(0, 300, 300, 420, 380)), device="cpu")


def json_round_trip(doc: dict) -> dict:
    return orjson.loads(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=0, max_size=24))
@settings(max_examples=50, deadline=None)
def test_map_encoding_round_trips_bit_exactly(values):
    tensor = torch.tensor(values, dtype=torch.float32).reshape(1, 1, -1)  # (A=1, H=1, W)
    back = wire.decode_map(json_round_trip(wire.encode_map(tensor)))
    assert back.shape == tensor.shape
    assert torch.equal(back.view(torch.int32), tensor.view(torch.int32))  # same bits, NaN payload included


def test_plain_turns_non_finite_into_strings():
    assert wire.plain({"a": float("nan"), "b": [float("inf"), -math.inf, 1.5], "c": torch.tensor([1, 2])}) == \
        {"a": "nan", "b": ["inf", "-inf", 1.5], "c": [1, 2]}


def test_scene_dict_round_trip():
    scene = toy_scene(params={"gain": 2.0}, seed=7, progress=0.25,
                      pins=(Pin(0, 0, 1, 2, 30.0, 40.0, 10.0, 12.0),))
    assert export.scene_from_dict(json_round_trip(export.scene_to_dict(scene))) == scene


def test_scene_from_dict_names_missing_fields():
    with pytest.raises(ValueError, match=r"^boxes\[0\]\.x2: missing"):
        export.scene_from_dict({"scheme": "toy", "image": {"width": 32, "height": 32}, "nc": 1,
                                "boxes": [{"cls": 0, "x1": 1, "y1": 1, "y2": 3}]})


def test_export_stage_data_is_the_recorded_tensors():
    run = export.run_scene(toy_scene())
    doc = json_round_trip(export.build_export(run))
    assert [s["name"] for s in doc["stages"]] == run.trace.names()
    for stage_json, stage in zip(doc["stages"], run.trace):
        for tensor_json in stage_json["tensors"]:
            recorded = stage[tensor_json["name"]]
            decoded = decode_tensor(tensor_json)
            assert decoded.dtype == recorded.dtype and torch.equal(decoded, recorded)
    assert doc["params"] == {"gain": 1.0} and doc["scene"]["params"] == {"gain": 1.0}


def test_verify_accepts_an_untouched_export():
    report = verify.verify_export(json_round_trip(export.build_export(export.run_scene(toy_scene()))))
    assert report.ok and report.mismatches == [] and report.checked > 10


@pytest.mark.parametrize("tamper, where", [
    (lambda d: d["stages"][-1]["tensors"][0]["data"].__setitem__(0, 99), "stages["),
    (lambda d: d["result"]["losses"].__setitem__("total", d["result"]["losses"]["total"] + 1e-3), "result.losses"),
    (lambda d: d["result"]["positives"][0].__setitem__("gi", 3), "result.positives"),
    (lambda d: d["stages"].pop(0), "stages"),
    (lambda d: d["result"]["maps"]["iou"]["levels"][0].__setitem__(
        "b64", wire.encode_map(torch.ones(1, 3, 4))["b64"]), "result.maps.iou[0]"),
])
def test_verify_catches_each_kind_of_tampering(tamper, where):
    doc = json_round_trip(export.build_export(export.run_scene(toy_scene())))
    tamper(doc)
    report = verify.verify_export(doc)
    assert not report.ok
    assert any(m.where.startswith(where) for m in report.mismatches), report.mismatches


def test_verify_within_tolerance_but_not_beyond():
    doc = json_round_trip(export.build_export(export.run_scene(toy_scene())))
    iou_stage = next(s for s in doc["stages"] if s["name"] == "toy.bbox_iou")
    iou = next(t for t in iou_stage["tensors"] if t["name"] == "iou")
    iou["data"][0] *= 1 + 1e-7  # below rtol 1e-5: still the same number for float32 replay
    assert verify.verify_export(doc).ok
    iou["data"][0] *= 1 + 1e-3
    assert not verify.verify_export(doc).ok


def test_verify_rejects_other_documents():
    with pytest.raises(ValueError, match="format"):
        verify.verify_export({"format": "something"})


@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_real_scheme_export_replays(scheme):
    doc = json_round_trip(export.build_export(export.run_scene(real_scene(scheme))))
    assert doc["upstream"]["commit"], "each family pins the upstream commit it matches"
    report = verify.verify_export(doc)
    assert report.ok, report.mismatches[:5]
    tensor = next(t for s in doc["stages"] for t in s["tensors"] if t["data"] and t["dtype"] == "float32")
    tensor["data"][0] = "nan" if tensor["data"][0] != "nan" else 0.0
    assert not verify.verify_export(doc).ok


finite_or_not = st.floats(width=32, allow_nan=True, allow_infinity=True)


@given(st.lists(st.one_of(
    st.lists(finite_or_not, max_size=20).map(lambda v: torch.tensor(v, dtype=torch.float32)),
    st.lists(st.integers(-2**40, 2**40), max_size=12).map(lambda v: torch.tensor(v, dtype=torch.int64)),
    st.lists(st.booleans(), max_size=12).map(lambda v: torch.tensor(v, dtype=torch.bool)),
), max_size=8))
@settings(max_examples=80, deadline=None)
def test_stage_stats_equal_per_tensor_reductions(tensors):
    """The batched min/max/mean of a trace's tensors are each tensor's own (NaN, inf, empty included)."""
    trace = Trace()
    trace.record("test.stats", "S", "stats", tensors={f"t{i}": t for i, t in enumerate(tensors)})
    got = json_round_trip({"stages": export._stages_to_list(trace, stage_data=0)})["stages"][0]["tensors"]
    for tensor, entry in zip(tensors, got):
        if tensor.numel() == 0:
            assert (entry["min"], entry["max"], entry["mean"]) == (None, None, None)
            continue
        wide = tensor.double()
        expected = {"min": wide.min().item(), "max": wide.max().item(), "mean": wide.mean().item()}
        for key, value in expected.items():
            if math.isnan(value):
                assert entry[key] == "nan", (key, tensor)
            elif math.isinf(value):
                assert entry[key] == ("inf" if value > 0 else "-inf"), (key, tensor)
            else:
                assert entry[key] == pytest.approx(value, rel=1e-12, abs=1e-300), (key, tensor)


@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_explain_of_a_scene_without_boxes(scheme):
    """No boxes: every positives column is empty, (0,) or (0, k), and still encodes."""
    doc = json_round_trip(export.result_to_dict(export.run_scene(Scene(scheme, 640, 640, 4, (), device="cpu"))))
    assert doc["positives"] == []
    total = doc["losses"]["total"]
    # the YOLOv3 PyTorch port averages over no positives: nan, written as the string "nan"
    assert total == "nan" if scheme == "yolov3" else math.isfinite(total)


@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_results_do_not_alias_the_reused_head_buffers(scheme):
    """Heads are cached buffers patched per call and restored (scene.blended_heads): no tensor of a
    result may share their storage, and the next call must see the restored buffer."""
    from losscore import predictions as scene_module

    first = dataclasses.replace(real_scene(scheme), progress=0.6, pins=pins_for(scheme))
    other = dataclasses.replace(first, boxes=(Box(1, 20, 30, 600, 500), Box(2, 100, 100, 160, 180)))
    kept = export.run_scene(first)
    scratch = {entry.scratch.untyped_storage().data_ptr()
               for entry in scene_module._NOISE_CACHE.values() if entry.scratch is not None}
    result = kept.result
    tensors = [*result.positives.values(), *(t for levels in result.maps.values() for t in levels),
               *result.losses.values(), *(rec.value for stage in kept.trace for rec in stage.tensors.values())]
    assert not [t for t in tensors if t.untyped_storage().data_ptr() in scratch]
    before = json_round_trip(export.result_to_dict(kept, maps=None, stage_data=None))
    export.run_scene(other)  # patches the same buffers with other writes
    again = json_round_trip(export.result_to_dict(export.run_scene(first), maps=None, stage_data=None))
    before.pop("compute_ms"), again.pop("compute_ms")
    assert again == before


def test_stage_stats_of_large_tensors():
    """Tensors above the batching size are reduced on their own, with the same answers."""
    big = torch.linspace(-3, 5, 5000)
    with_inf = big.clone()
    with_inf[7] = math.inf
    ints = torch.arange(-2000, 3000)
    trace = Trace()
    trace.record("test.large", "S", "large", tensors={"big": big, "inf": with_inf, "ints": ints, "small": torch.tensor([2.0])})
    got = {t["name"]: t for t in json_round_trip({"s": export._stages_to_list(trace, 0)})["s"][0]["tensors"]}
    assert got["big"]["min"] == pytest.approx(-3.0) and got["big"]["max"] == pytest.approx(5.0)
    assert got["big"]["mean"] == pytest.approx(big.double().mean().item(), rel=1e-12)
    assert got["inf"]["max"] == "inf" and got["inf"]["mean"] == "inf"
    assert (got["ints"]["min"], got["ints"]["max"], got["ints"]["mean"]) == (-2000, 2999, 499.5)
    assert (got["small"]["min"], got["small"]["max"], got["small"]["mean"]) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("scheme", REAL_SCHEMES)
def test_run_scene_in_inference_mode_has_the_bits_of_a_plain_explain(scheme, monkeypatch):
    """run_scene computes under torch.inference_mode (less dispatch overhead); losscore.registry.explain
    does not. Both orders of first use share the noise cache, whose tensors must stay normal tensors:
    a cache filled in inference mode is then patched in place by a plain call, and vice versa."""
    from losscore import predictions as scene_module

    scene = dataclasses.replace(real_scene(scheme), progress=0.7, pins=pins_for(scheme))
    for inference_first in (True, False):
        monkeypatch.setattr(scene_module, "_NOISE_CACHE", scene_module.OrderedDict())
        runs = []
        for inference in (inference_first, not inference_first):
            if inference:
                run = export.run_scene(scene)
                assert first_tensor(run.result).is_inference()
            else:
                trace = Trace()
                result = registry.explain(scene, trace)
                assert not first_tensor(result).is_inference()
                run = export.Run(scene=registry.validate(scene), result=result, compute_ms=0.0, trace=trace)
            runs.append(json_round_trip(export.result_to_dict(run, maps=None, stage_data=None)))
        assert all(not t.is_inference() for entry in scene_module._NOISE_CACHE.values()
                   for t in (entry.scaled, entry.scratch) if t is not None)
        for doc in runs:
            doc.pop("compute_ms")
        assert runs[0] == runs[1]


def test_a_detr_export_replays_its_queries_and_cost_matrices():
    """verify compares a query scheme's per-query rows and its (Q, N) cost matrices too."""
    scene = Scene("detr", 640, 640, 80, (Box(0, 64, 64, 224, 224), Box(1, 384, 320, 576, 544)), device="cpu")
    doc = json_round_trip(export.build_export(export.run_scene(scene)))
    assert doc["result"]["queries"] and doc["result"]["matrices"]
    assert verify.verify_export(doc).ok
    changed = json_round_trip(doc)
    changed["result"]["queries"][0]["pred_prob"] = 0.123456
    report = verify.verify_export(changed)
    assert not report.ok and [m.where for m in report.mismatches] == ["result.queries"]
    changed = json_round_trip(doc)
    name = next(iter(changed["result"]["matrices"]))
    other = json_round_trip(export.build_export(export.run_scene(dataclasses.replace(scene, seed=7))))
    changed["result"]["matrices"][name] = other["result"]["matrices"][name]
    report = verify.verify_export(changed)
    assert not report.ok and f"result.matrices.{name}" in [m.where for m in report.mismatches]
