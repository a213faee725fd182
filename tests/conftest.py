import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample files beside the checkout (CI has them). Missing means a broken set-up, not a skip."""
    path = SHARED / "data"
    assert path.is_dir(), f"{path} is missing: the tests read the real sample files from ../shared/data"
    return path
