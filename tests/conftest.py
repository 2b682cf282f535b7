"""Suite-wide test selection: the `slow` marker for whole modules that train many runs or compile kernels.

`python -m pytest -m "not slow"` is the fast inner loop; `python -m pytest` (CI) runs everything.
Single slow tests elsewhere carry `@pytest.mark.slow` themselves.
"""

from __future__ import annotations

import pytest

#: Modules whose tests each train several runs, spawn processes or compile kernels (seconds each on 2 cores).
SLOW_MODULES = {
    "tests/cli/test_benchmark.py",
    "tests/cli/test_metacog_cli.py",
    "tests/cli/test_cache_cli.py",
    "tests/cli/test_run_life_cli.py",
    "tests/cli/test_train_generate.py",
    "tests/cli/test_generate_more.py",
    "tests/cli/test_eval_cli.py",
    "tests/train/test_distributed.py",
    "tests/train/test_survival.py",
    "tests/train/test_resume.py",
    "tests/train/test_loop_features.py",
    "tests/train/test_run_life.py",
    "tests/optim/test_baselines.py",
    "tests/optim/test_backends.py",
    "tests/parity/test_compile_kernels.py",
    "tests/parity/test_kernels_cu_host.py",
    "tests/parity/test_velvet_triton_parity.py",
    "tests/parity/test_era_parity.py",
    "tests/data/test_streaming.py",
}


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    for item in items:
        if item.path.relative_to(root).as_posix() in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
