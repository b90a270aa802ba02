"""Hierarchical datasets that load offline from files shipped by package registries."""
from .bbc import BBC_TOPICS, BBCArticle, read_bbc_articles
