"""Butane (variant flatcar) rendering and transpiling to Ignition, without the butane binary.

- ``transpile.transpile``: Butane flatcar 1.0.0/1.1.0 -> Ignition 3.3.0/3.4.0, as ``butane``
  prints it, with the tool's errors and warnings (JSON path, line, column);
- ``transpile.validate_fragment``: inline validation of a user's Butane fragment for the UI/API;
- ``render.render_butane`` / ``render.render_ignition``: a flavour's configs from ``FlavourConfig``;
- ``cli.main``: ``python -m builds.pipeline butane``, flag for flag like the tool.
"""
