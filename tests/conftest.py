"""Shared fixtures: tiny generated datasets (no files, well under a second)."""
import pytest
import torch

from topoland.data import load_dataset

# Tests are tiny: one intra-op thread avoids OpenMP spin-waiting, which on a shared 2-core
# machine made small convolutions ~100x slower. Results do not depend on the thread count
# being 1 (determinism tests compare two runs under the same setting).
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests, the previous count restored after (a test that
    sets threads itself, e.g. through run.threads, does not leak into the next module)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_data():
    """Synthetic Gaussian blobs: 3 classes, 8 features ("vector"), 231/25/128 train/val/test."""
    return load_dataset("synthetic", seed=0)


@pytest.fixture(scope="session")
def tiny_image_data():
    """Synthetic 3-class images (1, 8, 8) ("image"): 87/9/64 train/val/test."""
    return load_dataset("synthetic", seed=0,
                        synthetic={"input_shape": (1, 8, 8), "n_train": 96, "n_test": 64})
