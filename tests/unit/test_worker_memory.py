"""Giving back what a trial freed: in a fresh process (as a fresh Ray worker is), the first
release freezes the imported libraries out of later collections, and a reference cycle made
after it is still collected."""

import subprocess
import sys

from tests.conftest import REPO

CHILD = """
import gc, time, weakref
import torch, mlflow  # what a worker has imported by a trial's end
from trainables.worker_memory import release_freed_memory

start = time.perf_counter()
release_freed_memory()  # the first trial's end
first = time.perf_counter() - start
frozen = gc.get_freeze_count()

class Node:
    pass

a, b = Node(), Node()
a.other, b.other = b, a  # a cycle: only the collector frees it
gone = weakref.ref(a)
del a, b
start = time.perf_counter()
release_freed_memory()  # the next trial's end
second = time.perf_counter() - start
print(frozen, gone() is None, first, second)
"""


def test_the_first_release_freezes_the_libraries_and_later_cycles_are_still_collected():
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    frozen, collected, first, second = out.stdout.split()
    assert int(frozen) > 100_000  # torch and MLflow alone are hundreds of thousands
    assert collected == "True"
    assert float(second) < float(first)
