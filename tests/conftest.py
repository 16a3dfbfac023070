"""Test-wide setup: Triton runs in its interpreter when there is no GPU, and every test gets a
fresh seed that is printed when it fails."""

import os

import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit function is created, i.e. before mxa2a's kernels are imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def seed(request) -> int:
    """A fresh random seed, seeded into torch and reported in the failure output."""
    value = random.SystemRandom().randrange(2**31)
    torch.manual_seed(value)
    request.node.user_properties.append(("seed", value))
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for key, value in item.user_properties:
            if key == "seed":
                report.sections.append(("seed", f"seed={value} (torch.manual_seed)"))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
