"""Sphinx configuration: the API reference generated from hgattn's docstrings (``sphinx-build -W docs out``)."""
import hgattn

project = "hgattn"
author = "hgattn developers"
release = hgattn.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax"]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
