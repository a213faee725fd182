"""`zj data fetch NAME`: download a full public data set from the Hugging Face hub into data/raw/NAME/.

Offline (``HF_HUB_OFFLINE=1``, or the hub unreachable within a few seconds) it stops at once with a message
that says what to download and where to put it.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .common import DATA_DIR, ZJError

RAW = DATA_DIR / "raw"

# name -> (hub dataset, what it is)
DATASETS = {
    "cmtmedqa": ("Suprit/CMtMedQA", "CMtMedQA: ~70,000 multi-turn doctor-patient dialogues (one ~156 MB JSON array)"),
    "huatuo26m-test": ("FreedomIntelligence/huatuo26M-testdatasets", "Huatuo-26M test split: 6,000 single-turn Q&A"),
    "huatuo26m-lite": ("FreedomIntelligence/Huatuo26M-Lite", "Huatuo-26M-Lite: ~178,000 single-turn Q&A"),
    "huatuo-encyclopedia-qa": ("FreedomIntelligence/huatuo_encyclopedia_qa", "Huatuo encyclopedia Q&A (~364,000)"),
    "huatuo-kg-qa": ("FreedomIntelligence/huatuo_knowledge_graph_qa", "Huatuo knowledge-graph Q&A (~798,000)"),
}


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _reachable(url: str, timeout: float) -> bool:
    u = urlparse(url)
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def manual_steps(name: str, dest: Path) -> str:
    repo, _ = DATASETS[name]
    return (f"download the dataset {repo} from {_endpoint()}/datasets/{repo}/tree/main "
            f"(every file, or `hf download --repo-type dataset {repo} --local-dir {dest}` on a "
            f"machine that is online) and put its files in {dest}/")


def fetch(name: str, dest: str | Path | None = None, timeout: float = 5.0, force: bool = False) -> Path:
    """Download the data set ``name`` (a key of DATASETS) into ``dest`` (default data/raw/NAME); its folder."""
    if name not in DATASETS:
        raise ZJError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    repo, _ = DATASETS[name]
    dest = Path(dest) if dest else RAW / name
    if dest.is_dir() and any(p.is_file() for p in dest.rglob("*") if ".cache" not in p.parts) and not force:
        print(f"{name}: already in {dest} (pass --force to download again)")
        return dest
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    if offline or not _reachable(_endpoint(), timeout):
        why = "HF_HUB_OFFLINE is set" if offline else f"cannot reach {_endpoint()} (offline?)"
        raise ZJError(f"{name}: {why}. To use it, {manual_steps(name, dest)}")
    from huggingface_hub import snapshot_download
    try:
        snapshot_download(repo, repo_type="dataset", local_dir=str(dest), etag_timeout=timeout)
    except Exception as e:  # network, auth or hub errors: say what to do instead of a traceback
        raise ZJError(f"{name}: download of {repo} failed ({type(e).__name__}: {str(e)[:200]}). "
                      f"Instead, {manual_steps(name, dest)}") from e
    return dest
