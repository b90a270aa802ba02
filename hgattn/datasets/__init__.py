"""Hierarchical datasets that load offline from files shipped by package registries."""
from .bbc import BBC_TOPICS, BBCArticle, BBCNews, read_bbc_articles
from .code import OGBCode2, PythonCode
from .emoji import EMOJI_CATEGORIES, Emoji, emoji_tree
from .integrity import DatasetFileError, ProcessedFileWarning
from .manifest import RECORDS
from .ogb import OGBMoleculeDataset, OGBNodeDataset
from .planetoid import HierarchicalPlanetoid
from .splits import stratified_split

__all__ = ["BBC_TOPICS", "BBCArticle", "BBCNews", "DatasetFileError", "EMOJI_CATEGORIES", "Emoji", "emoji_tree",
           "HierarchicalPlanetoid", "OGBMoleculeDataset", "OGBNodeDataset", "ProcessedFileWarning", "RECORDS",
           "read_bbc_articles", "stratified_split", "OGBCode2", "PythonCode"]
