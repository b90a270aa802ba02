"""The operator on CUDA against the float64 reference (skipped without a GPU; marker ``gpu``)."""
from __future__ import annotations

import pytest
import torch

from hgattn import Hierarchy, hsa
from hgattn.attention.reference import hsa_reference
from test_hsa import DOUBLE, FIXED, check_low_precision, gradients, make_inputs, random_case

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def on_cuda(tensors: list) -> list:
    return [None if t is None else t.detach().to(CUDA).requires_grad_(t.requires_grad) for t in tensors]


@pytest.mark.parametrize("seed", range(100))
def test_random_trees_match_reference_on_cuda(seed: int) -> None:
    parent = random_case(seed)
    include_self, use_pos = bool(seed % 3), seed % 4 != 0
    inputs = make_inputs(parent, pos_dim=3 if use_pos else None, seed=seed, requires_grad=True)
    upstream = torch.randn(inputs[2].shape, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))
    device_inputs = on_cuda(inputs)
    h = Hierarchy.from_parent(torch.tensor(parent, device=CUDA))
    out = hsa(*device_inputs[:3], h, pos=device_inputs[3], include_self=include_self)
    ref = hsa_reference(*inputs[:3], parent, pos=inputs[3], include_self=include_self)
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-10)
    for g, r in zip(gradients(out, device_inputs, upstream.to(CUDA)), gradients(ref, inputs, upstream)):
        torch.testing.assert_close(g.cpu(), r, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", FIXED)
def test_hierarchy_built_on_cuda_equals_cpu(name: str) -> None:
    parent = FIXED[name]
    cpu, cuda = Hierarchy.from_parent(parent), Hierarchy.from_parent(torch.tensor(parent, device=CUDA))
    for attr in ("parent", "depth", "height", "leaf_count", "leaf_node", "batch", "child_ptr", "child_index",
                 "sibling_index", "node_slot"):
        assert torch.equal(getattr(cuda, attr).cpu(), getattr(cpu, attr)), attr


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("include_self", [False, True])
def test_low_precision_on_cuda_within_twice_naive(dtype: torch.dtype, include_self: bool) -> None:
    check_low_precision(dtype, include_self, CUDA)


@pytest.mark.parametrize("tree", ["balanced", "random"])
def test_large_tree_cuda_equals_cpu(tree: str) -> None:
    n = 1 << 16
    h = (Hierarchy.from_windows(n, 16) if tree == "balanced"
         else Hierarchy.random(n, (2, 30), generator=torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 4, 32, generator=gen, dtype=DOUBLE, requires_grad=True) for _ in range(3))
    upstream = torch.randn(n, 4, 32, generator=gen, dtype=DOUBLE)
    out = hsa(q, k, v, h, include_self=True)
    device_inputs = on_cuda([q, k, v])
    out_cuda = hsa(*device_inputs, h.to(CUDA), include_self=True)
    torch.testing.assert_close(out_cuda.cpu(), out, rtol=0, atol=1e-10)
    for g, r in zip(gradients(out_cuda, device_inputs, upstream.to(CUDA)), gradients(out, [q, k, v], upstream)):
        torch.testing.assert_close(g.cpu(), r, rtol=0, atol=1e-10)
