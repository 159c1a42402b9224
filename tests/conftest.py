"""Test-wide setup: 8 fake CPU devices for sharding tests, set before JAX is imported."""

import os
import pathlib

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_gsm8k_dir() -> pathlib.Path:
    """The real GSM8K (train.jsonl / test.jsonl): $GSM8K_DIR, else shared/data/gsm8k beside the repository. Tests
    pass it in explicitly; the library has no default path."""
    beside_repository = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
    directory = pathlib.Path(os.environ.get("GSM8K_DIR", beside_repository))
    assert (directory / "test.jsonl").is_file(), f"{directory} lacks GSM8K's test.jsonl"
    return directory
