"""cluster.yaml validates offline against Ray's own cluster-launcher schema and keeps our policies:
a CPU-0 head, spot GPU workers that autoscale from zero, prunetune installed from the checkout,
token auth on every node, a localhost-only dashboard, S3 results, and no credential in the file."""

import copy
import json
import os
import re
from pathlib import Path

import pytest
import yaml

import jsonschema
import ray

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def ray_schema():
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_valid_against_ray_schema_and_launcher_checks(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    jsonschema.validate(config, ray_schema())
    prepared = prepare_config(copy.deepcopy(config))  # merges Ray's AWS defaults; no network
    validate_config(prepared)
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_the_schema_check_can_fail(config):
    bad = copy.deepcopy(config)
    bad["max_wokers"] = 3  # a typo must not pass silently
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema())
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_spot"]["min_workers"] = "none"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_schema())


def test_head_coordinates_only_and_workers_are_autoscaling_spot_gpus(config):
    types = config["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--num-cpus=0" in head_start and "--dashboard-host=127.0.0.1" in head_start
    worker = types["gpu_spot"]
    assert worker["min_workers"] == 0 and worker["max_workers"] >= 1
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert re.match(r"^(g|p)\d", worker["node_config"]["InstanceType"])  # a GPU instance family


def test_token_auth_on_every_node_with_the_token_from_file_mounts(config):
    for cmd in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "export RAY_AUTH_MODE=token" in cmd and "ray start" in cmd
    assert any("RAY_AUTH_MODE=token" in c for c in config["setup_commands"])
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_prunetune_is_installed_from_the_synced_checkout_with_matching_ray(config):
    from importlib.metadata import version

    src = config["file_mounts"]["~/prunetune"]
    assert (ROOT / src / "pyproject.toml").exists()
    assert any(re.search(r"pip install .*-e ~/prunetune", c) for c in config["setup_commands"])
    assert {".venv", "results", ".git"} <= {p.split("/")[-1] for p in config["rsync_exclude"]}
    image = config["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{version('ray')}-py311-") and image.endswith("gpu")


def test_results_go_to_s3_and_no_credentials_are_written(config):
    text = (ROOT / "cluster.yaml").read_text()
    storage = [c for c in config["setup_commands"] if "PRUNETUNE_STORAGE" in c]
    assert storage and "s3://" in storage[0]
    for pattern in (r"AKIA[0-9A-Z]{16}", r"(?i)aws_secret_access_key", r"(?i)aws_access_key_id",
                    r"RAY_AUTH_TOKEN\s*=", r"(?i)password", r"BEGIN [A-Z ]*PRIVATE KEY"):
        assert not re.search(pattern, text), pattern
    assert "ssh_private_key" not in config["auth"]
    assert os.path.basename(config["file_mounts"]["~/.ray/auth_token"]) == "auth_token"
