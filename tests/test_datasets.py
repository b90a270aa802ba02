"""Datasets: real files, published counts, fixed splits, batching into forests."""
from collections import Counter
from pathlib import Path

import pytest

from hgattn.datasets.bbc import BBC_TOPICS, parse_article, read_bbc_articles


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
