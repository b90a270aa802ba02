"""Bridges to other libraries; import the submodule you need (``hgattn.integrations.transformers``)."""
