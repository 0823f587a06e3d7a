"""The builds tests take ``cast`` and ``small_catalog`` from tests/conftest.py."""
