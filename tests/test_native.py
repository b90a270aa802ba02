"""The native CPU kernel (hgattn.attention.native): dispatch, fallbacks and its cached work arrays. Its
exactness against the float64 reference is tested with every other kernel in test_hsa.py (the ``kernel``
fixture)."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from hgattn import Hierarchy, hsa
import hgattn.attention.native as native
from hgattn.attention.reference import hsa_reference
from conftest import native_kernel_expected
from trees import flat_tree, forest, random_forest

pytestmark = pytest.mark.skipif(not native.available() and not native_kernel_expected(),
                                reason="the native kernel was not built (no C compiler)")


def count_native_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = native.hsa_native

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(native, "hsa_native", spy)
    return calls


def test_the_native_kernel_is_built_where_a_compiler_is() -> None:
    assert native.available()


def test_cpu_calls_take_the_native_kernel_and_wide_families_the_pytorch_ones(monkeypatch) -> None:
    calls = count_native_calls(monkeypatch)
    narrow = Hierarchy.from_windows(300, 4)
    q = torch.randn(300, 2, 8)
    hsa(q, q, q, narrow)
    assert len(calls) == 1
    wide = Hierarchy(torch.tensor(flat_tree(native.WIDE_FAMILY + 1)))
    q = torch.randn(native.WIDE_FAMILY + 1, 2, 8, dtype=torch.float64)
    out = hsa(q, q, q, wide, include_self=True)
    assert len(calls) == 1
    torch.testing.assert_close(out, hsa_reference(q, q, q, wide, include_self=True), rtol=1e-10, atol=1e-12)


def test_half_precision_and_compiled_calls_do_not_take_it(monkeypatch) -> None:
    calls = count_native_calls(monkeypatch)
    h = Hierarchy.from_windows(40, 4)
    q = torch.randn(40, 2, 8, dtype=torch.bfloat16)
    assert hsa(q, q, q, h).dtype == torch.bfloat16   # computed in float32: the native kernel takes it
    assert len(calls) == 1
    assert not native.takes(native.native_plan(h), torch.float16)


def test_mixed_forest_of_tiny_and_large_trees_matches_the_reference() -> None:
    rng = random.Random(3)
    parent = forest(random_forest(rng, [1, 2, 3], max_children=3), random_forest(rng, [900], max_children=6),
                    flat_tree(40))
    h = Hierarchy(torch.tensor(parent))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(h.num_leaves, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    pos = torch.randn(h.num_nodes, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    for include_self in (False, True):
        out = hsa(q, k, v, h, pos=pos, include_self=include_self)
        ref = hsa_reference(q, k, v, h, pos=pos, include_self=include_self)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        up = torch.randn_like(ref)
        grads = torch.autograd.grad((out * up).sum(), (q, k, v, pos))
        expected = torch.autograd.grad((ref * up).sum(), (q, k, v, pos))
        for got, want in zip(grads, expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_work_arrays_are_reused_across_calls() -> None:
    h = Hierarchy.from_windows(500, 4)
    q = torch.randn(500, 2, 8, requires_grad=True)
    hsa(q, q, q, h, include_self=True).sum().backward()
    plan = native.native_plan(h)
    first = {key: tensor.data_ptr() for key, tensor in plan.workspace.items()}
    assert {name for name, *_ in first} == {"g", "q", "k", "v", "gv", "scalars"}
    hsa(q, q, q, h, include_self=True).sum().backward()
    assert {key: tensor.data_ptr() for key, tensor in plan.workspace.items()} == first


def test_plan_moves_with_the_hierarchy_and_is_not_used_off_the_cpu() -> None:
    h = Hierarchy.from_windows(30, 4)
    plan = native.native_plan(h)
    moved = h.to("meta")
    assert not native.takes(moved._plans["native"])
    assert native.takes(plan)


def test_recomputing_the_node_state_in_the_backward_pass_gives_the_same_gradients(monkeypatch) -> None:
    h = Hierarchy(torch.tensor(random_forest(random.Random(5), [30, 7, 1, 60], max_children=5)))
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(h.num_leaves, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    pos = torch.randn(h.num_nodes, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    results = []
    for limit in (1 << 40, 0):   # saved, then recomputed
        monkeypatch.setattr(native, "RECOMPUTE_BYTES", limit)
        out = hsa(q, k, v, Hierarchy(h.parent), pos=pos, include_self=True)
        results.append([out, *torch.autograd.grad(out.square().sum(), (q, k, v, pos))])
    for saved, recomputed in zip(*results):
        torch.testing.assert_close(saved, recomputed, rtol=0, atol=0)


def test_calls_that_would_not_fit_in_memory_go_to_the_dp(monkeypatch) -> None:
    calls = count_native_calls(monkeypatch)
    h = Hierarchy.from_windows(200, 4)
    q = torch.randn(200, 2, 8, dtype=torch.float64)
    monkeypatch.setattr(native, "MEMORY_CHECK_BYTES", 0)
    assert native.fits_in_memory(native.native_plan(h), 2, 8, 8, 8)
    monkeypatch.setattr(native, "MEMORY_MARGIN", float("inf"))
    out = hsa(q, q, q, h, include_self=True)
    assert not calls
    torch.testing.assert_close(out, hsa_reference(q, q, q, h, include_self=True), rtol=1e-10, atol=1e-12)


def mapping_flags(address: int) -> set[str]:
    """The VmFlags of the mapping of this process that holds ``address`` (from /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                inside = start <= address < end
            elif inside and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_large_fresh_arrays_land_on_huge_page_mappings() -> None:
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        pytest.skip("no transparent huge pages on this system")
    if "[never]" in mode:
        pytest.skip("transparent huge pages are off on this system")
    large = native.fresh((3, native.HUGE_PAGE_BYTES // 4), torch.zeros(1))
    assert large.shape == (3, native.HUGE_PAGE_BYTES // 4) and large.dtype == torch.float32
    first_huge_page = -(-large.data_ptr() // (1 << 21)) * (1 << 21)
    assert "hg" in mapping_flags(first_huge_page)


def test_fresh_advises_the_whole_huge_pages_inside_large_arrays_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int, int]] = []

    class RecordingLibc:
        def madvise(self, start: int, length: int, advice: int) -> int:
            calls.append((start, length, advice))
            return 0

    monkeypatch.setattr(native, "_libc", lambda: RecordingLibc())
    like = torch.zeros(1, dtype=torch.float64)
    native.fresh((1000,), like)
    native.fresh((native.HUGE_PAGE_BYTES // 8 - 1,), like)
    assert not calls
    large = native.fresh((5, native.HUGE_PAGE_BYTES // 8), like)
    ((start, length, advice),) = calls
    assert advice == native._MADV_HUGEPAGE and start % (1 << 21) == 0 and length % (1 << 21) == 0 and length > 0
    assert large.data_ptr() <= start and start + length <= large.data_ptr() + large.numel() * 8
    assert start - large.data_ptr() < 1 << 21
