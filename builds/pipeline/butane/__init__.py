"""Butane (variant flatcar) rendering and transpiling to Ignition, without the butane binary.

- ``transpile``: Butane flatcar 1.0.0/1.1.0 -> Ignition 3.3.0/3.4.0, as ``butane`` prints it;
- ``render``: a flavour's Butane config (sysext images, sysupdate, keyring, user extras);
- ``cli``: ``python -m builds.pipeline butane``, flag for flag like the tool.
"""
