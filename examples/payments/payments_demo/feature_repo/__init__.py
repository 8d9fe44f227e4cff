"""The payments demo's Feast repo: entities, sources, feature views and feature services.

The definitions live in `features.py` (a plain module, importable as
`payments_demo.feature_repo.features` or parsed by Feast from this directory; Feast skips
this `__init__.py`). The platform's feature store sets the Feast project, the registry
and the stores, and creates the batch tables from the views' schemas.
"""
