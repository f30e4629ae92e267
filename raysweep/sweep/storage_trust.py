"""What a sweep may trust of the storage folder its MLflow parent run names.

``raysweep resume`` restores the Tune experiment at the parent run's ``raysweep.storage`` tag, and
Tune unpickles its state from there; ``finish`` writes the front's plot into it. Anyone who can
write to the tracking server can change that tag, and anyone who can write to the storage can
replace what Tune unpickles. So:

* at launch the driver signs the path: ``raysweep.storage_mac`` = HMAC-SHA256 of the sweep's name
  and the path, under a key kept in the user's configuration folder (``~/.config/raysweep/
  storage.key``, mode 0600, or ``$RAYSWEEP_KEY_FILE``), outside both MLflow and the storage;
* resume trusts the tagged path only when that signature verifies with this user's key, or when
  the path lies under a storage root the user names (``raysweep resume --storage ROOT``);
* and then only when every file there is the user's own and not writable by group or others
  (:func:`raysweep.validation.untrusted_file`, ssh's StrictModes rule).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Iterable, Optional

from raysweep.sweep.tracking import TrackingError
from raysweep.validation import untrusted_file

KEY_ENV = "RAYSWEEP_KEY_FILE"
STORAGE_TAG = "raysweep.storage"
MAC_TAG = "raysweep.storage_mac"


class UntrustedStorage(TrackingError):
    """A storage path from MLflow that raysweep will not read; ``str()`` is one line."""


def key_file() -> Path:
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "raysweep" / "storage.key"


def _key(create: bool) -> Optional[bytes]:
    path = key_file()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another driver made it meanwhile
            return _key(create=False)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    st = path.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise UntrustedStorage(f"{KEY_ENV} / key file '{path}' is not allowed (it must be yours, mode 0600: "
                               "whoever can read it can sign a storage path)")
    return bytes.fromhex(path.read_text().strip())


def sign(sweep: str, path: str) -> str:
    """The ``raysweep.storage_mac`` tag a launching driver sets (creates the key the first time)."""
    return hmac.new(_key(create=True), f"{sweep}\n{path}".encode(), hashlib.sha256).hexdigest()


def _signed(sweep: str, path: str, mac: Optional[str]) -> bool:
    key = _key(create=False)
    if key is None or not mac:
        return False
    return hmac.compare_digest(hmac.new(key, f"{sweep}\n{path}".encode(), hashlib.sha256).hexdigest(), mac)


def is_under(path: str, roots: Iterable[str]) -> bool:
    """``path``, links and ``..`` resolved, lies inside one of ``roots``."""
    real = Path(path).resolve()
    return any(real.is_relative_to(Path(root).resolve()) for root in roots if root)


def trusted_storage(tags: dict, sweep: str, named_roots: Iterable[str] = ()) -> str:
    """The sweep's storage path from its parent run's tags, or :class:`UntrustedStorage`."""
    path = tags.get(STORAGE_TAG)
    if not path:
        raise UntrustedStorage(f"sweep '{sweep}': its parent run has no {STORAGE_TAG} tag (not a raysweep sweep)")
    roots = list(named_roots)
    if not (is_under(path, roots) or _signed(sweep, path, tags.get(MAC_TAG))):
        raise UntrustedStorage(
            f"sweep '{sweep}': storage '{path}' (its {STORAGE_TAG} tag) is not allowed (not signed by this user's key "
            f"{key_file()}{' and not under ' + ', '.join(map(str, roots)) if roots else ''}: the tag may have been "
            "changed; pass --storage ROOT, the storage the sweep was launched with, to trust it)")
    why = untrusted_file(path) if os.path.exists(path) else None
    if why is not None:
        raise UntrustedStorage(f"sweep '{sweep}': {why}, which is not allowed (Tune unpickles its state from "
                               f"'{path}': only your own files, not writable by group or others)")
    return path


def signed_storage(tags: dict, sweep: str) -> Optional[str]:
    """The storage path when its signature verifies, else None (for what may simply be skipped)."""
    path = tags.get(STORAGE_TAG)
    return path if path and _signed(sweep, path, tags.get(MAC_TAG)) else None
