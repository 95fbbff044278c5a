"""ray_cluster.yaml passes the checks `ray up` runs on it (Ray's own schema and defaults)."""

import copy

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tests.conftest import REPO


@pytest.fixture(scope="module")
def cluster_config():
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_config_validates_like_ray_up(cluster_config):
    validate_config(prepare_config(copy.deepcopy(cluster_config)))


def test_cluster_config_has_a_cpu_head_and_gpu_workers(cluster_config):
    types = cluster_config["available_node_types"]
    head = types[cluster_config["head_node_type"]]
    gpu = [t for name, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert head["resources"].get("GPU", 0) == 0 and gpu
    assert all(t["max_workers"] >= t["min_workers"] for t in gpu)
    assert any("pip install" in c and "satsweep" in c for c in cluster_config["setup_commands"])


def test_ray_would_reject_a_broken_config(cluster_config):
    broken = copy.deepcopy(cluster_config)
    broken["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepare_config(broken))
