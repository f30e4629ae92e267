"""Input errors and the primitive checks every layer uses: reading a YAML file, ``--set``
overrides, typing a method's or objective's hyperparameters. The bottom of raysweep: it imports
nothing of raysweep, so objectives, synthesis and the spec can all raise its errors.

Every failure is an :class:`InputError` (or :class:`HyperparameterError`) whose ``str()`` is one
line naming the field (or the file and line), the bad value and what is allowed; the CLI prints it
and exits 2. The checks of a whole command's inputs (job, space, storage, tracking server, model,
data) are :mod:`raysweep.preflight`, at the top.
"""

from __future__ import annotations

import difflib
import math
import typing
from pathlib import Path
from typing import Any, Optional


class InputError(ValueError):
    """A bad input; ``str()`` is one line."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def did_you_mean(name: str, allowed) -> str:
    m = difflib.get_close_matches(str(name), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f"; did you mean '{m[0]}'?" if m else ""


# ---- files ------------------------------------------------------------------------------------
def read_text(path: str | Path, what: str) -> str:
    """A text file's contents; a missing file, a folder or binary bytes are one-line errors."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} '{path}' is a folder (a YAML file is expected)")
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} '{path}': byte {data[err.start]:#04x} at offset {err.start} is not allowed "
                         f"(a UTF-8 text file is expected, this looks binary)") from None


def read_yaml(path: str | Path, what: str) -> Any:
    """YAML from a file; syntax errors name the file, line and column."""
    import yaml

    text = read_text(path, what)
    if "\x00" in text:
        raise InputError(f"{what} '{path}': a NUL byte is not allowed (a YAML text file is expected)")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{path}:{_yaml_where(err)} not valid YAML ({_yaml_problem(err)})") from None


def _yaml_where(err) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f"{mark.line + 1}:{mark.column + 1}:" if mark is not None else ""


def _yaml_problem(err) -> str:
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return _one_line(problem)


def parse_overrides(items: Optional[list[str]]) -> dict:
    """``--set key.path=value`` items -> {dotted key: YAML value}."""
    import yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set {item!r} is not allowed (key.path=value)")
        key, text = item.split("=", 1)
        if not key or any(not part.strip() for part in key.split(".")):
            raise InputError(f"--set {item!r}: key {key!r} is not allowed (dotted field names, e.g. unlearn.lr)")
        try:
            out[key] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise InputError(f"--set {key}: {text!r} is not allowed (not valid YAML: {_yaml_problem(err)})") from None
    return out


def set_dotted(raw: Any, dotted: str, value: Any) -> None:
    """``raw['a']['b'] = value`` for ``dotted = 'a.b'``, creating mappings on the way; a key under
    a scalar or a list is a one-line error."""
    if not isinstance(raw, dict):
        raise InputError(f"--set {dotted}: the job is a YAML {type(raw).__name__}, not a mapping "
                         "(a job file is a YAML mapping)")
    node, parts = raw, dotted.split(".")
    for i, p in enumerate(parts[:-1]):
        nxt = node.setdefault(p, {})
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise InputError(f"--set {dotted}: {where} is {nxt!r}, not a mapping, so {parts[i + 1]!r} "
                             f"is not allowed under it (set {where}=VALUE instead)")
        node = nxt
    node[parts[-1]] = value


# ---- hyperparameters --------------------------------------------------------------------------
class HyperparameterError(ValueError):
    def __init__(self, param: str, detail: str):
        super().__init__(f"{param}: {detail}")
        self.param, self.detail = param, detail


def _allowed_kind(annotation) -> tuple[tuple[type, ...], str, bool]:
    """(types, description, optional) for a dataclass field's annotation."""
    args = typing.get_args(annotation)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    if base is bool:
        return (bool,), "true or false", optional
    if base is int:
        return (int,), "an integer", optional
    if base is float:
        return (int, float), "a finite number", optional
    if base is str:
        return (str,), "a string", optional
    return (object,), "any value", optional


def check_hyperparameters(cls, params: dict) -> None:
    """Each value of ``params`` has the type of ``cls``'s dataclass field (a number for a float,
    an integer for an int, ...), and numbers are finite."""
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        if key not in hints:
            continue  # unknown names are the registry's error
        types, what, optional = _allowed_kind(hints[key])
        if value is None and optional:
            continue
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and isinstance(value, float) and not math.isfinite(value):
            ok = False
        if not ok:
            raise HyperparameterError(key, f"{value!r} is not allowed ({what}{' or null' if optional else ''})")


# ---- files another user could have written ----------------------------------------------------
def untrusted_file(root: str | Path) -> Optional[str]:
    """Why ``root`` or something below it must not be unpickled (ssh's StrictModes rule): the first
    entry owned by another user (root excepted) or writable by group or others, as one phrase; None
    when every entry is this user's own. Links are judged themselves, never followed."""
    import os
    import stat

    me = os.geteuid()
    root = Path(root)
    todo = [root]
    while todo:
        path = todo.pop()
        try:
            st = path.lstat()
        except OSError as err:
            return f"'{path}' cannot be checked ({err.strerror})"
        if st.st_uid not in (me, 0):
            return f"'{path}' is owned by another user (uid {st.st_uid})"
        if st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode):
            return f"'{path}' is writable by {'others' if st.st_mode & 0o002 else 'its group'}"
        if stat.S_ISDIR(st.st_mode):
            todo.extend(sorted(path.iterdir(), reverse=True))
    return None
