"""HSA over one tree that mixes modalities: a document of sentences (tokens) and an image (patches).

The tree is a PyG ``HeteroData`` with edges from child to parent type; ``Hierarchy.from_hetero`` turns it into
the hierarchy HSA runs on, and a ``DataLoader`` batch of such documents becomes a forest.

    python examples/hsa_on_a_document.py
"""
from __future__ import annotations

import torch
from torch_geometric.data import HeteroData
from torch_geometric.loader import DataLoader

import hgattn


def document(sentence_lengths: list[int], num_patches: int, dim: int = 16) -> HeteroData:
    """tokens -> sentences -> doc, and patches -> image -> doc."""
    data = HeteroData()
    num_tokens = sum(sentence_lengths)
    data["token"].x = torch.randn(num_tokens, dim)
    data["patch"].x = torch.randn(num_patches, dim)
    data["sentence"].num_nodes = len(sentence_lengths)
    data["image"].num_nodes = 1
    data["doc"].num_nodes = 1
    sentence_of_token = torch.repeat_interleave(torch.arange(len(sentence_lengths)),
                                                torch.tensor(sentence_lengths))
    data["token", "in", "sentence"].edge_index = torch.stack([torch.arange(num_tokens), sentence_of_token])
    data["patch", "in", "image"].edge_index = torch.stack(
        [torch.arange(num_patches), torch.zeros(num_patches, dtype=torch.long)])
    data["sentence", "in", "doc"].edge_index = torch.stack(
        [torch.arange(len(sentence_lengths)), torch.zeros(len(sentence_lengths), dtype=torch.long)])
    data["image", "in", "doc"].edge_index = torch.tensor([[0], [0]])
    data["sentence"].pos = torch.randn(len(sentence_lengths), 4)   # e.g. sentence order features
    return data


def main() -> None:
    torch.manual_seed(0)
    docs = [document([5, 3, 7], num_patches=16), document([4, 4], num_patches=9)]
    batch = next(iter(DataLoader(docs, batch_size=len(docs))))
    hierarchy = hgattn.Hierarchy.from_hetero(batch)
    print(hierarchy, hierarchy.node_slices)

    x = hierarchy.leaf_features(batch.x_dict)                   # [N, 16]: tokens, then patches
    heads = 4
    q, k, v = (x.view(-1, heads, 4) for _ in range(3))
    pos = hierarchy.node_features({"sentence": batch["sentence"].pos})
    out, attention = hgattn.hsa(q, k, v, hierarchy, pos=pos, include_self=True, return_attention=True)
    per_type = hierarchy.split_leaves(out.reshape(len(x), -1))
    print({nt: tuple(t.shape) for nt, t in per_type.items()})

    theta = attention.to_dense()                                # [heads, N, N]
    print("rows sum to one:", bool(torch.allclose(theta.sum(-1), torch.ones(heads, len(x)))))
    first_doc = hierarchy.batch == 0
    print("attention crossing documents:", float(theta[:, first_doc][:, :, ~first_doc].sum()))


if __name__ == "__main__":
    main()
