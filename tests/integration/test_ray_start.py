"""The private Ray instance a run starts: no notice about Ray's own defaults on every run."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

START = """
import ray
from rlvr.config import build_recipe
from rlvr.workers.placement import start_ray

start_ray(build_recipe({}, ["placement.num_cpus=1", "placement.object_store_mb=128"]))
print("ran", ray.get(ray.remote(lambda: 42).remote()))
ray.shutdown()
"""


def test_the_private_instance_starts_without_the_token_authentication_notice(tmp_path):
    """Ray 2.5x logs "Token authentication is enabled for this Ray cluster..." whenever ray.init starts a local
    instance with RAY_AUTH_MODE unset; start_ray drops that line and nothing else (authentication stays on)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([sys.executable, "-c", START], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                            env=env)
    assert result.returncode == 0, result.stderr
    assert "ran 42" in result.stdout
    assert "Token authentication" not in result.stderr, result.stderr
