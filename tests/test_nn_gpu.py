"""The layers on CUDA give the CPU's results (float64), forward and backward, on both propagate paths."""
from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import GINConv, MLP

from hgattn import Hierarchy
from hgattn.nn import HSAConv, HSAGPSConv
from test_nn import METADATA, make_doc

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("observed", [False, True])
def test_hetero_hsaconv_on_cuda_matches_cpu(observed: bool) -> None:
    data = make_doc(3)
    h = Hierarchy.from_hetero(data)
    conv = HSAConv(-1, 4, METADATA, heads=2, pos_channels=2, include_self=True).double()
    x_dict = {nt: x.double() for nt, x in data.x_dict.items()}
    pos_dict = {nt: p.double() for nt, p in data.pos_dict.items()}
    conv(x_dict, h, pos_dict)
    gpu = HSAConv(-1, 4, METADATA, heads=2, pos_channels=2, include_self=True).double().cuda()
    gpu({nt: x.cuda() for nt, x in x_dict.items()}, h.to("cuda"),
        {nt: p.cuda() for nt, p in pos_dict.items()})
    gpu.load_state_dict(conv.state_dict())
    if observed:
        for module in (conv, gpu):
            module.register_message_forward_hook(lambda module, inputs, out: None)
    out_cpu = conv(x_dict, h, pos_dict)
    out_gpu = gpu({nt: x.cuda() for nt, x in x_dict.items()}, h.to("cuda"),
                  {nt: p.cuda() for nt, p in pos_dict.items()})
    sum(o.square().sum() for o in out_cpu.values()).backward()
    sum(o.square().sum() for o in out_gpu.values()).backward()
    for nt in out_cpu:
        torch.testing.assert_close(out_gpu[nt].cpu(), out_cpu[nt], rtol=1e-10, atol=1e-12)
    for (name, p_cpu), p_gpu in zip(conv.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=1e-9, atol=1e-11, msg=name)


def test_hsagpsconv_runs_on_cuda() -> None:
    torch.manual_seed(0)
    layer = HSAGPSConv(16, GINConv(MLP([16, 16, 16])), heads=4).cuda()
    x = torch.randn(5000, 16, device="cuda", requires_grad=True)
    edge_index = torch.randint(0, 5000, (2, 35000), device="cuda")
    out = layer(x, edge_index, Hierarchy.from_windows(5000, 16).to("cuda"))
    out.square().mean().backward()
    assert out.shape == (5000, 16) and bool(torch.isfinite(x.grad).all())
