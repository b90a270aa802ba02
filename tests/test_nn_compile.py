"""torch.compile: HSAConv and HSAGPSConv trace without graph breaks and match eager mode.

``Hierarchy.sibling_index`` is built lazily on first use with data-dependent ops (``nonzero``,
``repeat_interleave``), so a hierarchy must have built it before entering a compiled region; the strict xfail
below records that the first use inside one still breaks the graph. Dynamo itself warns that the autograd
Function of ``hgattn.hsa`` "should not be instantiated" reads ``.grad`` of non-leaf tensors while
tracing PyG's ``propagate``, and inductor calls the deprecated ``torch._prims_common.check`` (torch-internal
warnings, filtered here).
"""
from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GINConv, MLP

from hgattn import Hierarchy
from hgattn.nn import HSAConv, HSAGPSConv

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"),
              pytest.mark.filterwarnings("ignore:.*torch._prims_common.check.* is deprecated:FutureWarning")]


def conv_inputs() -> tuple[HSAConv, Hierarchy, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    h = Hierarchy.random(60, generator=torch.Generator().manual_seed(0))
    conv = HSAConv(8, 4, heads=2, include_self=True, pos_channels=3).eval()
    return conv, h, torch.randn(h.num_leaves, 8), torch.randn(h.num_nodes, 3)


def test_hsaconv_compiles_without_graph_breaks() -> None:
    conv, h, x, pos = conv_inputs()
    assert h.sibling_index.size(0) == 2  # built outside the compiled region
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(conv)(x, h, pos)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(conv)(x, h, pos), conv(x, h, pos), rtol=1e-4, atol=1e-5)


@pytest.mark.xfail(strict=True, reason="Hierarchy.sibling_index is built lazily inside the compiled region: "
                   "nonzero (hierarchy.py _sibling_pairs) and repeat_interleave are data-dependent graph breaks")
def test_hsaconv_compiles_with_a_fresh_hierarchy() -> None:
    conv, h, x, pos = conv_inputs()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(conv)(x, h, pos)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_hsagpsconv_compiles_without_graph_breaks() -> None:
    torch.manual_seed(1)
    layer = HSAGPSConv(8, GINConv(MLP([8, 8, 8])), heads=2).eval()
    x, edge_index = torch.randn(50, 8), torch.randint(0, 50, (2, 200))
    h = Hierarchy.from_windows(50, 4)
    assert h.sibling_index.size(0) == 2
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(layer)(x, edge_index, h)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(layer)(x, edge_index, h), layer(x, edge_index, h),
                               rtol=1e-4, atol=1e-5)
