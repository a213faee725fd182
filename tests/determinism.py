"""`deterministic`: a fixture for tests that claim bit-identical reruns in this process. It turns on
torch.use_deterministic_algorithms for the test alone (an op without a deterministic kernel then raises instead of
varying silently, which matters on a GPU; CPU kernels are deterministic already) and sets the cuBLAS workspace
that deterministic CUDA matmuls require. Import it into a test module: `from determinism import deterministic`."""
import pytest
import torch


@pytest.fixture
def deterministic(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
