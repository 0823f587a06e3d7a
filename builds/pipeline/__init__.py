"""The bake pipeline: recipe -> fetch -> unpack -> tree -> image -> sums -> sign, plus sysupdate
files and Butane/Ignition.

Pure Python around real tools (mksquashfs, gpg). Nothing under this package may import Django,
Celery or boto3: it must be testable and reusable on its own (tests/pipeline/test_purity.py).
"""
