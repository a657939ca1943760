"""Fast offline detection for Hugging Face Hub downloads of backbone weights.

Offline, ``huggingface_hub`` retries each request for about a minute before timm or open_clip report that the
weights cannot be fetched. ``hub_unreachable()`` answers at once: ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``
set, else one TCP connection to the hub host (``HF_ENDPOINT``, default huggingface.co:443) with a short timeout,
cached per host for the life of the process. ``hub_download_guard()`` wraps a hub download: when the hub is
unreachable it puts ``huggingface_hub`` in offline mode for the duration, so weights already in the local cache
load at once and missing ones fail at once (with ``huggingface_hub``'s offline error, which the backbones turn into
their own "download the checkpoint and pass backbone.pretrained=/path" message).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

__all__ = ["PROBE_TIMEOUT_S", "hub_address", "hub_download_guard", "hub_unreachable", "reset_probe_cache"]

PROBE_TIMEOUT_S = 2.0
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_probed: dict[tuple[str, int], str | None] = {}  # (host, port) -> reason it is unreachable, None if reachable


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_address() -> tuple[str, int]:
    """``(host, port)`` of the hub endpoint (``HF_ENDPOINT``, default https://huggingface.co)."""
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "huggingface.co", port


def reset_probe_cache() -> None:
    """Forget earlier probe results (the next ``hub_unreachable()`` probes again)."""
    _probed.clear()


def hub_unreachable(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached (offline variable set, or the probe failed), or None when it can.

    The probe is one TCP connection with ``timeout_s``; its result is cached per host and port.
    """
    for var in _OFFLINE_VARS:
        if _is_true(os.environ.get(var)):
            return f"{var}={os.environ[var]}"
    address = hub_address()
    if address not in _probed:
        try:
            with socket.create_connection(address, timeout=timeout_s):
                _probed[address] = None
        except OSError as err:  # DNS failure, refused, unreachable network, timeout
            _probed[address] = f"{address[0]}:{address[1]} unreachable ({type(err).__name__}: {err})"
    return _probed[address]


@contextlib.contextmanager
def hub_download_guard(timeout_s: float = PROBE_TIMEOUT_S) -> Iterator[str | None]:
    """Run a hub download; when the hub is unreachable, in ``huggingface_hub``'s offline mode (cache only, no
    retries). Yields the reason the hub is unreachable, or None."""
    reason = hub_unreachable(timeout_s)
    if reason is None:
        yield None
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: nothing downloads from the hub
        yield reason
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = saved
