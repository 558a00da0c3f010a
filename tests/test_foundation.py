"""The trace recorder, the tensor codec, the conformance comparer and the import boundary."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from losscore.conformance import compare
from losscore.trace import Trace, decode_tensor, encode_tensor

ROOT = Path(__file__).resolve().parents[1]
WEB_MODULES = {"fastapi", "pydantic", "pydantic_settings", "starlette", "jinja2", "plotly", "uvicorn", "app"}


def test_losscore_never_imports_the_web_layer():
    offenders = []
    for path in sorted((ROOT / "losscore").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in WEB_MODULES]
    assert offenders == []


def test_losscore_import_loads_no_web_module():
    import subprocess
    import sys

    code = ("import sys, losscore, losscore.registry as r; r.all_schemes(); "
            "import losscore.conformance, losscore.export, losscore.verify; "
            f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(WEB_MODULES)!r}); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_encode_decode_round_trip_keeps_non_finite_and_shape():
    t = torch.tensor([[1.5, float("nan")], [float("inf"), -float("inf")]])
    enc = encode_tensor(t)
    assert enc["shape"] == [2, 2] and enc["data"][1:] == ["nan", "inf", "-inf"]
    back = decode_tensor(enc)
    assert back.dtype == torch.float32
    assert torch.equal(torch.isnan(back), torch.isnan(t))
    assert back[0, 0].item() == 1.5 and back[1, 0].item() == math.inf
    empty = decode_tensor(encode_tensor(torch.zeros((0, 4), dtype=torch.int64)))
    assert empty.shape == (0, 4) and empty.dtype == torch.int64


def test_int8_scaled_decoding_is_exact():
    import base64

    codes = bytes([0x00, 0x7F, 0x80, 0xFF])  # 0, 127, -128, -1
    obj = {"dtype": "float32", "shape": [2, 2], "encoding": "int8_scaled", "scale": 0.0625,
           "data_b64": base64.b64encode(codes).decode()}
    assert decode_tensor(obj).tolist() == [[0.0, 127 / 16], [-8.0, -1 / 16]]


def test_trace_copies_tensors_at_record_time_and_scopes_names():
    trace = Trace()
    x = torch.zeros(3)
    with trace.scope("loss"), trace.scope("P3"):
        trace.record("obj", "Objectness", "tobj per cell", tensors={"tobj": (x, "A H W")})
    x += 1  # a later in-place write by the algorithm must not change the record
    stage = trace.get("loss.P3.obj")
    assert stage["tobj"].tolist() == [0.0, 0.0, 0.0]
    assert stage.tensors["tobj"].dims == "A H W"
    assert trace.find("obj") == [stage]
    d = trace.to_dict()[0]
    assert d["name"] == "loss.P3.obj" and d["tensors"][0]["shape"] == [3]
    with pytest.raises(KeyError):
        trace.get("nope")
    leaf = torch.ones(2, requires_grad=True)
    recorded = trace.record("grad", "G", "a tensor in an autograd graph", tensors={"y": leaf * 2})["y"]
    assert not recorded.requires_grad and recorded.grad_fn is None and recorded.tolist() == [2.0, 2.0]


def test_compare_reports_shape_value_and_int_mismatches():
    enc = encode_tensor(torch.tensor([1.0, 2.0]))
    assert compare(torch.tensor([1.0, 2.0]), enc, dict(rtol=1e-5, atol=1e-6)) == []
    assert compare(torch.tensor([1.0, 2.1]), enc, dict(rtol=1e-5, atol=1e-6)) != []
    assert compare(torch.tensor([1.0]), enc, dict(rtol=1e-5, atol=1e-6)) != []
    ienc = encode_tensor(torch.tensor([1, 2]))
    assert compare(torch.tensor([1, 3]), ienc, dict(rtol=0, atol=0)) != []
    assert compare(torch.tensor([1.0, 2.0]), ienc, dict(rtol=0, atol=0)) != []


def test_blend_logits_cache_is_bit_identical_and_keeps_the_generator_in_step():
    from losscore.predictions import blend_logits, blend_sparse

    shape = (1, 3, 4, 5, 7)
    perfect = torch.full(shape, -6.0)
    perfect[..., :4] = 0.0
    perfect[0, 1, 2, 3] = torch.arange(7.0)  # one written slot
    background = torch.tensor([0.0] * 4 + [-6.0] * 3)
    index = perfect.view(-1).ne(background.expand(shape).reshape(-1)).nonzero().flatten()
    for progress in (0.0, 0.3, 1.0):
        plain = torch.Generator().manual_seed(7)
        want = [(1 - progress) * (torch.randn(shape, generator=plain) * 2.0) + progress * perfect
                for _ in range(2)]
        for _ in range(2):  # the second pass is served from the cache
            dense_gen, sparse_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
            dense = [blend_logits(perfect, progress, dense_gen) for _ in range(2)]
            sparse = [blend_sparse(shape, background, index, perfect.view(-1)[index], progress, sparse_gen)
                      for _ in range(2)]
            assert all(torch.equal(w, d) and torch.equal(w, s) for w, d, s in zip(want, dense, sparse))
            assert torch.equal(dense_gen.get_state(), plain.get_state())
            assert torch.equal(sparse_gen.get_state(), plain.get_state())
        dense[0].add_(1.0)  # callers may write into the result; the cache must not see it
        again = blend_logits(perfect, progress, torch.Generator().manual_seed(7))
        assert torch.equal(again, want[0])


@pytest.mark.parametrize("N", [1, 2, 20, 256])
def test_the_smallest_owner_of_each_cell_is_the_int64_minimum(N):
    """The perfect heads' cell owner (ultralytics and YOLOX scenes), taken in int16: the same integers."""
    from losscore.predictions import smallest_owner

    generator = torch.Generator().manual_seed(N)
    inside = torch.rand(N, 37, 23, generator=generator) > 0.8  # (N, H, W)
    inside[:, 0, :5] = False  # cells that no box holds
    rank_of_box = torch.randperm(N, generator=generator)
    got = smallest_owner(inside, rank_of_box)
    want = torch.where(inside, rank_of_box[:, None, None], N).amin(0)
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert bool((got == N).any()) and bool((got < N).any())


@pytest.mark.parametrize("numel", [1, 15, 16, 17, 1000, 4099])
def test_a_draw_has_the_bits_of_the_plain_formula_for_any_size_scale_and_progress(numel):
    """The draw scales the noise in one pass where it can (normal_ with std = scale * (1 - progress)):
    bit for bit the formula's (1 - progress) * (randn * scale), on either side of torch's 16-element
    vector path, for a power-of-two scale or not, at progress 0, 1 and in between."""
    from losscore.predictions import _draw

    background = torch.tensor([0.0, -6.0, 1.5])
    shape = (numel, 3)
    for scale in (2.0, 0.5, 3.0):
        for progress in (0.0, 1e-9, 0.1, 1 / 3, 0.7, 0.999999, 1.0):
            plain = torch.Generator().manual_seed(numel)
            want = (1.0 - progress) * (torch.randn(shape, generator=plain) * scale)
            gen = torch.Generator().manual_seed(numel)
            scaled, term, blend = _draw(shape, torch.float32, torch.device("cpu"), progress, gen, scale, background)
            assert torch.equal(scaled.view(torch.int32), want.view(torch.int32)), (scale, progress)
            assert torch.equal(blend.view(torch.int32), (want + progress * background.expand(shape)).view(torch.int32))
            assert torch.equal(gen.get_state(), plain.get_state())


def test_blended_heads_equal_blend_sparse_and_restore_the_scratch_copy():
    import threading

    from losscore.predictions import blend_sparse, blended_heads

    shapes = [(1, 3, 4, 5, 7), (1, 3, 2, 3, 7)]
    background = torch.tensor([0.0] * 4 + [-6.0] * 3)
    writes = [(torch.tensor([0, 9, 40]), torch.tensor([1.0, 2.0, 3.0])), (torch.tensor([5]), torch.tensor([4.0]))]

    def fresh():
        gen = torch.Generator().manual_seed(11)
        return [blend_sparse(shape, background, i, v, 0.4, gen) for shape, (i, v) in zip(shapes, writes)], gen

    want, want_gen = fresh()
    for _ in range(2):  # the second block reuses the restored scratch copies
        gen = torch.Generator().manual_seed(11)
        with blended_heads(shapes, background, writes, 0.4, gen) as heads:
            assert all(torch.equal(h, w) for h, w in zip(heads.heads, want))
            assert torch.equal(gen.get_state(), want_gen.get_state())
            heads.write(0, torch.tensor([9, 10]), torch.tensor([-1.0, -2.0]))  # a pin over a written slot
            assert heads[0].view(-1)[9] == -1.0
            scratch = [h for h in heads.heads]
        assert all(torch.equal(h, b) for h, b in zip(scratch, fresh_bases(shapes, background)))  # restored

    # an exception inside the block still restores, and a busy scratch copy is not shared
    gen = torch.Generator().manual_seed(11)
    try:
        with blended_heads(shapes, background, writes, 0.4, gen) as outer:
            inner_heads = []

            def other_thread():
                with blended_heads(shapes, background, writes, 0.4, torch.Generator().manual_seed(11)) as inner:
                    inner_heads.extend(inner.heads)
                    assert all(torch.equal(h, w) for h, w in zip(inner.heads, want))

            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
            assert all(h.data_ptr() != o.data_ptr() for h, o in zip(inner_heads, outer.heads))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    again, _ = fresh()
    with blended_heads(shapes, background, writes, 0.4, torch.Generator().manual_seed(11)) as heads:
        assert all(torch.equal(h, w) for h, w in zip(heads.heads, again))


def fresh_bases(shapes, background):
    """The blended background of each level (no writes), as blend_sparse computes it."""
    from losscore.predictions import blend_sparse

    gen = torch.Generator().manual_seed(11)
    return [blend_sparse(shape, background, torch.zeros(0, dtype=torch.long), torch.zeros(0), 0.4, gen)
            for shape in shapes]


def test_every_builtin_scheme_is_registered_whichever_family_was_imported_first():
    import subprocess
    import sys

    code = ("import losscore.yolov3, losscore.registry as r; "
            "print(sorted(r.all_schemes())); print(r.get_scheme('yolov5').name)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    listed, name = out.stdout.split("\n")[:2]
    assert {"focal", "yolov3", "yolov5", "yolov9"} <= set(eval(listed)) and name == "yolov5"  # noqa: S307


def test_noise_cache_is_bounded_in_bytes(monkeypatch):
    from losscore import predictions as scene_module

    monkeypatch.setattr(scene_module, "_NOISE_CACHE", scene_module.OrderedDict())
    monkeypatch.setattr(scene_module, "_NOISE_CACHE_BYTES", 3 * 2 * 4 * 1000)  # three (1000,)-float entries with a blend
    background = torch.zeros(1)
    for seed in range(5):
        scene_module.blend_sparse((1000,), background, torch.tensor([0]), torch.tensor([1.0]), 0.5,
                                  torch.Generator().manual_seed(seed))
    assert len(scene_module._NOISE_CACHE) == 3  # the two least recently used went
    monkeypatch.setattr(scene_module, "_NOISE_CACHE_BYTES", 10)  # smaller than any entry
    scene_module.blend_sparse((1000,), background, torch.tensor([0]), torch.tensor([1.0]), 0.5,
                              torch.Generator().manual_seed(9))
    assert len(scene_module._NOISE_CACHE) == 1  # the newest stays


def test_non_finite_places_names_every_tensor_with_a_nan_or_an_infinity_and_nothing_else():
    import math

    from losscore.finite import non_finite_places

    big = torch.full((4,), 3.0e38)  # finite, whose float32 sum would overflow: not a place
    both = torch.tensor([math.inf, -math.inf, 1.0])  # +inf and -inf: the sum is NaN
    trace = Trace()
    trace.record("assign.k", "k", "", tensors={"topk": (torch.tensor([0.5, math.nan]), "N")})
    places = non_finite_places({"iou": torch.tensor([0.1, 0.2]), "big": big, "label": torch.tensor([1, 2])},
                               {"box": torch.tensor(0.3), "cls": both},
                               {"tobj": [torch.zeros(2, 2), torch.tensor([[math.inf]])]}, trace)
    assert [str(p) for p in places] == ["loss cls", "map tobj", "stage assign.k: topk"]
    assert non_finite_places({"big": big}, {"box": torch.tensor(0.3)}, {"tobj": [torch.zeros(3)]}, trace=None) == []
