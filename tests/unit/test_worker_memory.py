"""Giving back what a trial freed: in a fresh process (as a fresh Ray worker is), each trial's
start freezes what came before it out of later collections, so what earlier trials left for
good is never scanned again, and a reference cycle made during a trial is still collected."""

import subprocess
import sys

from tests.conftest import REPO

CHILD = """
import gc, weakref
import torch, mlflow  # what a worker has imported by a trial's start
from trainables.worker_memory import begin_trial, release_freed_memory

begin_trial()  # the first trial's start
libraries = gc.get_freeze_count()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made during the trial: only the collector frees it
gone = weakref.ref(a)
del a, b
kept_for_good = [[i] for i in range(200_000)]  # what a library's cache keeps from the trial
release_freed_memory()  # the trial's end
collected = gone() is None
scanned_before = len(gc.get_objects())
begin_trial()  # the next trial's start
scanned_after = len(gc.get_objects())
print(libraries, collected, scanned_before, scanned_after)
"""


def test_each_trial_start_freezes_what_came_before_and_cycles_made_later_are_collected():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    libraries, collected, scanned_before, scanned_after = out.stdout.split()
    assert int(libraries) > 100_000  # torch and MLflow alone are hundreds of thousands
    assert collected == "True"
    assert int(scanned_before) > 200_000  # the first trial's leftovers, still scanned
    assert int(scanned_after) < 20_000  # frozen at the next start: later trials skip them
