"""Shared pytest fixtures. Tests run offline: hub calls fail fast instead of retrying."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import itertools  # noqa: E402

import pytest  # noqa: E402

# ---------------------------------------------------------------------------------------------
# `make test` runs two workers (pytest-xdist, --dist loadgroup): the merge tests share one, where
# numba compiles the kernels (about 4 min of CPU the first time on a machine; then loaded from the
# user-wide cache of lrmerge.numba_cache, which every clone of the same kernels.py shares); the
# workflow tests share the other's turn at Snakemake's working directory (dry runs in the
# repository).


def pytest_collection_modifyitems(config, items):
    lane = {}
    for item in items:
        name = item.path.name
        if name.startswith("test_merge_"):
            item.add_marker(pytest.mark.xdist_group("merge_kernels"))
            lane[item] = 1
        elif name == "test_workflow.py":
            item.add_marker(pytest.mark.xdist_group("workflow"))
            lane[item] = 0
    # the two long groups first, one per worker; the short rest fills in after (xdist hands out
    # work in collection order)
    items.sort(key=lambda item: lane.get(item, 2))


# ---------------------------------------------------------------------------------------------
# merge engine fixtures: tiny random Llama checkpoints (see tests/merge_helpers.py)


@pytest.fixture(scope="session")
def merge_inputs_cache(tmp_path_factory):
    """Session cache of read-only merge inputs, keyed by build_inputs() arguments. Tests must not
    modify these folders (use `make_merge_inputs` for inputs a test alters)."""
    from merge_helpers import build_inputs

    cache: dict = {}
    counter = itertools.count()

    def get(**kw):
        key = tuple(sorted(kw.items(), key=lambda kv: kv[0]))
        key = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in key)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"merge_inputs_{next(counter)}")
            cache[key] = build_inputs(root, **kw)
        return cache[key]

    return get


@pytest.fixture
def shared_merge_inputs(merge_inputs_cache):
    """Factory: read-only tiny Llama base + models, built once per session per argument set.
    Arguments as merge_helpers.build_inputs (n_models, dtype, seed, shards, quantized, ...)."""
    return merge_inputs_cache


@pytest.fixture
def make_merge_inputs(tmp_path):
    """Factory: fresh tiny Llama base + models under tmp_path, free to modify."""
    from merge_helpers import build_inputs

    counter = itertools.count()

    def make(**kw):
        return build_inputs(tmp_path / f"inputs{next(counter)}", **kw)

    return make


@pytest.fixture
def f32_two(shared_merge_inputs):
    """float32, single-file, base + 2 models."""
    return shared_merge_inputs(n_models=2, dtype="float32", seed=11)


@pytest.fixture
def f32_three_sharded(shared_merge_inputs):
    """float32, 3 shards with index, base + 3 models."""
    return shared_merge_inputs(n_models=3, dtype="float32", seed=12, shards=3)


@pytest.fixture
def bf16_two(shared_merge_inputs):
    """bfloat16, single-file, base + 2 models (many |tau| ties: 8-bit significands)."""
    return shared_merge_inputs(n_models=2, dtype="bfloat16", seed=13)


@pytest.fixture
def bf16_three_sharded(shared_merge_inputs):
    """bfloat16, 2 shards with index, base + 3 models."""
    return shared_merge_inputs(n_models=3, dtype="bfloat16", seed=14, shards=2)
