"""Load hierarchical datasets through PyG's DataLoader and run HSA on each batch (a forest of trees).

BBC News articles become article -> paragraphs -> sentences -> tokens trees (``BBCNews``); a
``DataLoader`` batch of them is one ``HeteroData`` whose ``Hierarchy.from_hetero`` is a forest, one tree per
article. The same
works for molecules (``OGBMoleculeDataset``: molecule -> cliques -> atoms) and emoji (``Emoji``).

    python examples/hierarchical_datasets_with_pyg_loaders.py            # 8 articles per topic
    python examples/hierarchical_datasets_with_pyg_loaders.py --articles-per-topic 100 --batch-size 32
"""

from __future__ import annotations

import argparse

import torch
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.datasets import BBCNews
from hgattn.nn import HTEBlock
from hgattn.transforms import TextHierarchy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/data/bbc_news")
    parser.add_argument("--articles-per-topic", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="smoke run: one batch")
    args = parser.parse_args(argv)

    dataset = BBCNews(args.root, articles_per_topic=args.articles_per_topic)
    print(f"{dataset}: split sizes { ({k: len(v) for k, v in dataset.split_idx.items()}) }")
    embeddings = torch.nn.Embedding.from_pretrained(TextHierarchy().embedding_table)  # frozen MiniLM words
    block = HTEBlock(
        {"token": embeddings.embedding_dim},
        64,
        dataset[0].metadata(),
        heads=4,
        pos_channels=dataset[0]["token"].pos.size(1),
    )
    loader = DataLoader(dataset[dataset.split_idx["train"]], batch_size=args.batch_size, shuffle=True)
    for step, batch in enumerate(loader):
        hierarchy = Hierarchy.from_hetero(batch)
        pos = {nt: batch[nt].pos for nt in batch.node_types}
        out = block({"token": embeddings(batch["token"].token_id)}, hierarchy, pos)["token"]
        print(
            f"batch {step}: {batch.num_graphs} articles, {hierarchy}, token outputs {list(out.shape)}, "
            f"labels {batch.y.tolist()}"
        )
        if args.quick:
            break


if __name__ == "__main__":
    main()
