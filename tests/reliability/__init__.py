"""The reliability suite (issue 10): run with ``make reliability`` (``pytest -m reliability``)."""
