"""Build the default tiny model from scratch and write it to ``rlvr/models/tiny_model``, the copy that ships with
the package (so that a fresh machine need not spend minutes on the warm start). Run it after changing
``rlvr.models.tiny.TinySpec`` or the warm start; ``tests/unit/test_tiny_model.py`` fails until the shipped copy
matches the spec.

    python scripts/build_tiny_model.py
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from rlvr.models import tiny


def main() -> None:
    with tempfile.TemporaryDirectory() as cache:
        os.environ["RLVR_CACHE_DIR"] = cache
        built = _build()
        shutil.rmtree(tiny.SHIPPED, ignore_errors=True)
        shutil.copytree(built, tiny.SHIPPED)
    meta = json.loads((tiny.SHIPPED / "rlvr_tiny.json").read_text())
    size = sum(path.stat().st_size for path in Path(tiny.SHIPPED).iterdir())
    print(f"wrote {tiny.SHIPPED} (key {tiny.TinySpec().key()}, {size / 1e6:.1f} MB, built in "
          f"{meta['build_seconds']:.0f}s)")


def _build() -> Path:
    """The default spec built from scratch: the shipped copy is moved aside while it builds."""
    aside = tiny.SHIPPED.with_name("tiny_model.old")
    if tiny.SHIPPED.exists():
        os.replace(tiny.SHIPPED, aside)
    try:
        return tiny.ensure_tiny_model()
    finally:
        if aside.exists():
            shutil.rmtree(tiny.SHIPPED, ignore_errors=True)
            os.replace(aside, tiny.SHIPPED)


if __name__ == "__main__":
    main()
