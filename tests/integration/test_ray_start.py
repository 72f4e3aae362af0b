"""The private Ray instance a run starts: no notice about Ray's own defaults on every run, only the processes a run
uses, and the actors' output on the driver's terminal."""

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


LEAN = """
import os, sys, time
import psutil, ray
from rlvr.config import build_recipe
from rlvr.workers.placement import start_ray

start_ray(build_recipe({}, ["placement.num_cpus=1", "placement.object_store_mb=128"]))

@ray.remote
class Talker:
    def talk(self):
        print("to stdout from the actor", flush=True)
        print("to stderr from the actor", file=sys.stderr, flush=True)
        return os.getpid()

talker = Talker.remote()  # held: an actor without a handle ends
pid = ray.get(talker.talk.remote())
time.sleep(1.0)
for child in psutil.Process().children(recursive=True):
    print("process:", " ".join(child.cmdline())[:200])
ray.shutdown()
"""


def test_the_private_instance_has_no_monitor_dashboard_or_idle_workers_and_actors_output_reaches_the_driver(tmp_path):
    result = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, timeout=180, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    processes = [line for line in result.stdout.splitlines() if line.startswith("process:")]
    names = " ".join(processes)
    assert "gcs_server" in names and "raylet" in names and "ray::Talker" in names
    for absent in ("autoscaler", "dashboard/dashboard.py", "log_monitor", "ray::IDLE"):
        assert absent not in names, processes
    assert len(processes) <= 5, processes  # GCS, raylet, its two agents, the actor
    assert "(Talker pid=" in result.stdout and "to stdout from the actor" in result.stdout
    assert "to stderr from the actor" in result.stderr
