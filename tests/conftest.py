import os
from pathlib import Path

import pytest

from zj_utils.common import DATA_DIR

ROOT = Path(__file__).resolve().parents[1]
# The real sample files the tests read; they ship with the repository in data/ (data/README.md).
DATA_FILES = ("cmtmedqa/CMtMedQA_test.json", "rlhf_label_tool/input_file.json", "rlhf_label_tool/output_result.tsv",
              "paper/zhongjing_reported_win_tie_loss.csv")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The repository's data/ folder with the real sample files. A missing file is a broken checkout: fail, never
    skip."""
    assert DATA_DIR.resolve() == (ROOT / "data").resolve(), (
        f"zj_utils is imported from {DATA_DIR.parent}, not from this checkout {ROOT}: run the tests with "
        f"PYTHONPATH={ROOT}")
    missing = [f for f in DATA_FILES if not (DATA_DIR / f).is_file()]
    assert not missing, (f"missing in {DATA_DIR}: {', '.join(missing)}; these files ship with the repository "
                         "(data/README.md): restore them with `git checkout -- data/`")
    return DATA_DIR
