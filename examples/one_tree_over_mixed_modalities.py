"""One tree over mixed modalities: each emoji (Google's 64x64 PNG, its name, its keywords) as
item -> {image -> quadtree regions -> 8x8 patches, name -> tokens, keywords -> tokens}, classified into its
10 categories by one HTE layer whose leaves are image patches and MiniLM word embeddings together.

Real data: the npm package emoji-datasource-google 16.0.0 (``npm install emoji-datasource-google@16.0.0``;
pass its folder as ``--source`` or in ``$EMOJI_DATASOURCE_GOOGLE``).

    python examples/one_tree_over_mixed_modalities.py --source node_modules/emoji-datasource-google
    python examples/one_tree_over_mixed_modalities.py --source ... --quick     # 60 emoji, 1 epoch
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from hgattn import Hierarchy
from hgattn.datasets import EMOJI_CATEGORIES, Emoji
from hgattn.nn import HTEBlock
from hgattn.transforms import TextHierarchy


class EmojiClassifier(torch.nn.Module):
    """Frozen word embeddings for tokens, raw pixels for patches, one HTE layer over the whole tree, mean
    pooling over all leaves of an item, a linear head."""

    def __init__(self, metadata, patch_features: int, pos_channels: int, channels: int = 64) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding.from_pretrained(TextHierarchy().embedding_table)
        self.block = HTEBlock(
            {"patch": patch_features, "token": self.embedding.embedding_dim},
            channels,
            metadata,
            heads=4,
            pos_channels=pos_channels,
        )
        self.head = torch.nn.Linear(channels, len(EMOJI_CATEGORIES))

    def forward(self, batch) -> torch.Tensor:
        hierarchy = Hierarchy.from_hetero(batch)
        x = {"patch": batch["patch"].x, "token": self.embedding(batch["token"].token_id)}
        out = self.block(x, hierarchy, {nt: batch[nt].pos for nt in batch.node_types if "pos" in batch[nt]})
        leaves = torch.cat([out["patch"], out["token"]])
        item = torch.cat([batch["patch"].batch, batch["token"].batch])
        return self.head(scatter(leaves, item, dim=0, dim_size=batch.num_graphs, reduce="mean"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="runs/data/emoji")
    parser.add_argument("--source", help="the emoji-datasource-google package folder")
    parser.add_argument("--limit", type=int, help="keep the first N emoji")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 emoji, 1 epoch")
    args = parser.parse_args(argv)
    dataset = Emoji(args.root, source=args.source, limit=60 if args.quick else args.limit)
    sample = dataset[0]
    print(
        f"{dataset}: one item is {sample.node_types} with {sample['patch'].num_nodes} patches and "
        f"{sample['token'].num_nodes} tokens"
    )
    pos_channels = max(sample[nt].pos.size(1) for nt in sample.node_types if "pos" in sample[nt])
    torch.manual_seed(0)
    model = EmojiClassifier(sample.metadata(), sample["patch"].x.size(1), pos_channels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    train_loader = DataLoader(dataset[dataset.split_idx["train"]], batch_size=32, shuffle=True)
    test_set = dataset[dataset.split_idx["test"]]
    test_loader = DataLoader(test_set, batch_size=64)
    print(f"{len(test_set)} test items in {len({int(item.y) for item in test_set})} categories")
    for epoch in range(1, (1 if args.quick else args.epochs) + 1):
        model.train()
        for batch in train_loader:
            optimizer.zero_grad()
            F.cross_entropy(model(batch), batch.y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(b).argmax(-1) == b.y).sum()) for b in test_loader)
        print(f"epoch {epoch}: test accuracy {correct / len(dataset.split_idx['test']):.3f}")


if __name__ == "__main__":
    main()
