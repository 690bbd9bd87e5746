"""Model directories named by a Hugging Face Hub id (``OpenGVLab/InternVL2_5-1B``).

A source that is not an existing path but reads ``owner/name`` is a hub id: it is downloaded
(``huggingface_hub.snapshot_download``) when online, and taken from the local cache when
offline (``HF_HUB_OFFLINE=1``) or when the hub cannot be reached. An existing path always wins.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_TRUE = ("1", "true", "yes", "on")


def is_hub_id(source: str | Path) -> bool:
    """Whether ``source`` names a hub repository rather than a local path."""
    text = str(source)
    return not Path(text).exists() and _HUB_ID.fullmatch(text) is not None and ".." not in text


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def model_dir(source: str | Path) -> Path:
    """The local directory of ``source``: the path itself, or a hub id's snapshot.

    Raises:
        FileNotFoundError: a hub id that is neither cached nor downloadable, naming both tries.
    """
    if not is_hub_id(source):
        return Path(source)
    from huggingface_hub import snapshot_download

    repo = str(source)
    if not _offline():
        try:
            return Path(snapshot_download(repo))
        except Exception as err:  # no network, a proxy, the hub down: try the cache next
            log.warning("could not download %s from the hub (%s); looking in the local cache", repo, err)
            online_error = f"; downloading it failed: {err}"
    else:
        online_error = " (HF_HUB_OFFLINE is set, so nothing was downloaded)"
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception as err:
        raise FileNotFoundError(
            f"{repo} is neither a local directory nor in the Hugging Face cache{online_error}; "
            f"cache lookup: {err}"
        ) from err
