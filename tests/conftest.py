"""Test-wide setup, before JAX is imported: 8 fake CPU devices for sharding tests, compile flags and caches."""

import os
import pathlib

import pytest

# Tests run tiny programs, so compiling them is most of the suite's time: XLA's CPU backend skips its expensive
# optimisation passes, and programs compiled once (the same tiny model and step in many tests, in every worker) come
# from JAX's persistent cache; converted GGUF tokenizers are cached beside it.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
CACHE = pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("LOWRANK_JAX_CACHE", str(CACHE / "lowrank_jax"))
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
