"""Where results live: the storage root, URIs, the layout of a sweep, finding a sweep by name or path.

One home for these facts (as open_lth's `foundations/paths.py`): the store, the dense cache, the
Ray backend, `resume`, the CLI and `analysis` all ask this module, so a layout change or a URI rule
is made once. Imports neither torch nor Ray (analysis uses it).

    <storage>/<sweep>/spec.yaml                    the resolved spec, written at start
    <storage>/<sweep>/<table>/<cell_id>.parquet    one file per cell and table
    <storage>/<sweep>/_analysis/...                analysis' consolidated read cache
    <storage>/_cache/dense/<key>/...               dense checkpoints and their SLQ, shared by sweeps
    <storage>/_tune/<sweep>/run-<time>-<hex>/      Tune experiments of the Ray backend

A storage root is a local path (`~` expanded, made absolute; `file://` stripped) or a pyarrow.fs URI
(`s3://bucket/prefix`, `gs://…`). Names starting with '.' or '_' are temp files or caches, never
results.

Object-store access comes from the environment, never from the URI or a file in the repository: for
S3, pyarrow's `FileSystem.from_uri` (which Ray Tune uses too) reads the standard variables —
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` (else ~/.aws or the instance role),
`AWS_DEFAULT_REGION`, and the endpoint of an S3-compatible server from `AWS_ENDPOINT_URL_S3`, else
`AWS_ENDPOINT_URL` (checked with pyarrow 26; `S3FileSystem()` built directly ignores them, so this
module always goes through `from_uri`). A URI that carries credentials (`s3://KEY:SECRET@bucket/…`,
`?secret_key=…`) is refused: the storage root is written into spec.yaml, Tune's state and every log.
"""

from __future__ import annotations

import functools
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs

STORAGE_ENV = "PRUNETUNE_STORAGE"
DEFAULT_STORAGE = "./results"
SPEC_FILE = "spec.yaml"
CACHE_DIR = "_cache"
TUNE_DIR = "_tune"
TABLE_SUFFIX = ".parquet"

_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def default_storage() -> str:
    """$PRUNETUNE_STORAGE, else ./results."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def storage_root(storage: str | os.PathLike | None = None) -> str:
    """The storage root a user means: the argument, else the default."""
    return str(storage) if storage is not None else default_storage()


def is_uri(path: str) -> bool:
    """A remote pyarrow.fs URI such as s3://bucket/prefix (file:// counts as local)."""
    return bool(_URI.match(path)) and not path.startswith("file://")


def local_path(path: str) -> str:
    """An absolute local path for a storage root (file:// stripped, ~ expanded)."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    return os.path.abspath(os.path.expanduser(path))


def normalize(storage: str) -> str:
    """The canonical form of a storage root: a URI as given, a local root absolute."""
    return storage if is_uri(storage) else local_path(storage)


def hidden(name: str) -> bool:
    """Temp files and caches ('.tmp' files, `_cache`, `_tune`, `_analysis`) are never results."""
    return name.startswith((".", "_"))


@dataclass(frozen=True)
class Location:
    """A storage root resolved to a pyarrow filesystem and a base path in it."""

    fs: pafs.FileSystem
    base: str
    local: bool

    def join(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])


# query parameters of pyarrow URIs that carry secrets (pyarrow.fs S3/GCS/Azure options)
SECRET_PARAMS = ("access_key", "secret_key", "session_token", "access_token", "account_key",
                 "sas_token", "client_secret", "credentials")


def credentials_problem(location: str) -> str | None:
    """Why a storage URI must not be used as written (it carries credentials), or None."""
    if not is_uri(location):
        return None
    parts = urllib.parse.urlsplit(location)
    secret = [k for k in urllib.parse.parse_qs(parts.query) if k.lower() in SECRET_PARAMS]
    if parts.username or parts.password or secret:
        where = "user:secret@ in the URI" if parts.username or parts.password else ", ".join(secret)
        return (f"storage: the URI carries credentials ({where}), which would be stored in spec.yaml, "
                "Tune's state and logs; remove them and give them through the environment "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws or the instance role)")
    return None


@functools.lru_cache(maxsize=64)
def filesystem(location: str) -> Location:
    """The filesystem of a local path, a file:// URI or any pyarrow.fs URI (see the module docstring
    for where object-store access comes from; a URI with credentials is a ValueError).

    Cached per location: an object-store client is slow to create, and one process reuses one.
    """
    if (problem := credentials_problem(location)) is not None:
        raise ValueError(problem)
    if is_uri(location):
        fs, base = pafs.FileSystem.from_uri(location)
        return Location(fs, base.rstrip("/") or base, local=False)
    return Location(pafs.LocalFileSystem(), local_path(location).replace(os.sep, "/"), local=True)


# ----------------------------------------------------------------------------- the layout
# Paths inside a storage root's filesystem, relative to its base (join with Location.join).


def table_parts(sweep: str, table: str) -> tuple[str, ...]:
    return (sweep, table)


def cell_parts(sweep: str, table: str, cell_id: str) -> tuple[str, ...]:
    return (sweep, table, f"{cell_id}{TABLE_SUFFIX}")


def spec_parts(sweep: str) -> tuple[str, ...]:
    return (sweep, SPEC_FILE)


def dense_cache_parts(key: str, item: str = "") -> tuple[str, ...]:
    return (CACHE_DIR, "dense", key, *([item] if item else []))


def tune_root(storage: str, sweep: str) -> str:
    """Where a sweep's Tune experiments live: a path or URI as Tune takes it."""
    return f"{storage.rstrip('/')}/{TUNE_DIR}/{sweep}"


def cell_id_of(file_name: str) -> str | None:
    """The cell id of a result file name, None for temp files, caches and other files."""
    if hidden(file_name) or not file_name.endswith(TABLE_SUFFIX):
        return None
    return file_name[: -len(TABLE_SUFFIX)]


def is_sweep_dir(fs: pafs.FileSystem, path: str, tables: tuple[str, ...]) -> bool:
    """A sweep directory holds spec.yaml or at least one table directory."""
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    names = {i.base_name for i in infos}
    return SPEC_FILE in names or any(t in names for t in tables)


# ----------------------------------------------------------------------------- finding sweeps


@dataclass(frozen=True)
class SweepRef:
    """One stored sweep: its storage root (path or URI) and its name."""

    storage: str
    sweep: str


@dataclass(frozen=True)
class Sweeps:
    """The sweeps a user named: one storage root (path or URI) and the names of sweeps in it."""

    storage: str
    names: tuple[str, ...]
    label: str                    # what the user typed, for messages
    fs: pafs.FileSystem | None = field(default=None, compare=False)  # a filesystem object of the
    # caller's own, `storage` a path on it (e.g. an in-memory one); None: the one `storage` names

    @property
    def location(self) -> Location:
        if self.fs is not None:
            return Location(self.fs, self.storage.rstrip("/"), isinstance(self.fs, pafs.LocalFileSystem))
        return filesystem(self.storage)

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self.location.fs

    @property
    def dirs(self) -> list[str]:
        """Each sweep's directory on `filesystem`."""
        return [self.location.join(n) for n in self.names]

    def one(self) -> SweepRef:
        if len(self.names) != 1:
            raise ValueError(f"sweep: {self.label!r} is a storage root of {len(self.names)} sweeps "
                             f"({', '.join(self.names)}); name one of them")
        return SweepRef(self.storage, self.names[0])


def _sweeps_under(loc: Location, path: str, tables: tuple[str, ...]) -> list[str]:
    infos = loc.fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and not hidden(i.base_name)
                  and is_sweep_dir(loc.fs, i.path, tables))


def _spec_file_ref(path: Path, storage: str | None) -> SweepRef:
    """The sweep a user's own spec file runs: its name, under --storage, else its storage, else the default."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"sweep: cannot read the spec {str(path)!r}: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ValueError(f"sweep: {str(path)!r} has no sweep name")
    root = storage if storage is not None else raw.get("storage") if isinstance(raw.get("storage"), str) else None
    return SweepRef(normalize(storage_root(root)), raw["name"])


def resolve(name_or_path: str | os.PathLike, storage: str | os.PathLike | None = None, *,
            tables: tuple[str, ...] = (), several: bool = False) -> Sweeps:
    """The sweeps a user means, for every command that reads a stored sweep; tried in this order:

    - a pyarrow.fs URI (`s3://bucket/results/my_sweep`): a sweep, or (`several`) a storage root;
    - a file: a stored `spec.yaml` (its directory is the sweep), or the spec file a sweep was run
      from (its `name`, under `storage`, else the spec's storage, else the default root);
    - a sweep name under `storage` (else $PRUNETUNE_STORAGE, else ./results);
    - a local sweep directory, or (`several`) a storage root of sweeps.
    A sweep directory holds spec.yaml or one of `tables`. Without `several`, a name that is not
    stored yet is still returned (the caller says what is missing, in its terms); with it, an unknown
    name lists the sweeps that exist.
    """
    text = str(name_or_path).rstrip("/")
    label = str(name_or_path)
    if not text:
        raise ValueError("sweep: empty; give a sweep name, a sweep directory, a storage root or a URI")
    if is_uri(text) or text.startswith("file://"):
        if several and not is_sweep_dir((loc := filesystem(text)).fs, loc.base, tables) \
                and (names := _sweeps_under(loc, loc.base, tables)):
            return Sweeps(text, tuple(names), label)
        root, _, sweep = text.rpartition("/")
        return Sweeps(root, (sweep,), label)
    path = Path(text)
    if path.is_file():
        if path.name == SPEC_FILE:
            resolved = path.resolve().parent
            return Sweeps(str(resolved.parent), (resolved.name,), label)
        ref = _spec_file_ref(path, None if storage is None else str(storage))
        return Sweeps(ref.storage, (ref.sweep,), label)
    root = normalize(storage_root(storage))
    loc = filesystem(root)
    plain = "/" not in text and os.sep not in text and text not in (".", "..") and not hidden(text)
    if plain and is_sweep_dir(loc.fs, loc.join(text), tables):
        return Sweeps(root, (text,), label)
    if path.is_dir():
        resolved = path.resolve()
        if is_sweep_dir(pafs.LocalFileSystem(), str(resolved), tables):
            return Sweeps(str(resolved.parent), (resolved.name,), label)
        if several and (names := _sweeps_under(filesystem(str(resolved)), str(resolved), tables)):
            return Sweeps(str(resolved), tuple(names), label)
        if several:
            raise ValueError(f"sweep: {text!r} is an empty store, no sweeps in it (a sweep directory holds "
                             f"{SPEC_FILE} or one of {', '.join(tables)})")
        raise ValueError(f"sweep: {text!r} holds no {SPEC_FILE}; give a sweep directory (<storage>/<sweep>) "
                         "or a sweep name")
    if not several:
        return Sweeps(root, (text,), label)
    known = _sweeps_under(loc, loc.base, tables)
    if known:
        raise ValueError(f"sweep {text!r} not found under storage root {root}: choose from {', '.join(known)}")
    raise ValueError(f"sweep {text!r} not found: storage root {root} is empty or missing "
                     f"(set --storage or ${STORAGE_ENV})")


def locate_sweep(name_or_path: str, storage: str | None = None) -> SweepRef:
    """The one sweep a user means (see `resolve`)."""
    return resolve(name_or_path, storage).one()
