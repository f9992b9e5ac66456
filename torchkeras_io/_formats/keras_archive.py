"""The Keras 3 ``.keras`` model archive: a ZIP of ``config.json``, ``metadata.json`` and the
variable store ``model.weights.h5`` (docs/keras_formats.md §8).

:class:`KerasArchive` reads the ZIP without extracting anything to disk, with Keras 3's
member-size guard against ZIP bombs; :func:`write_archive` writes one (members stored).
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import zipfile

import h5py

from torchkeras_io._formats.keras3_store import MAX_JSON_BYTES
from torchkeras_io.errors import FileFormatError

CONFIG = "config.json"
METADATA = "metadata.json"
WEIGHTS = "model.weights.h5"
#: Keras 3 ``saving_lib`` refuses a member over 4 GiB that is > 100x its compressed size
ZIP_BOMB_SIZE = 4 << 30
ZIP_BOMB_RATIO = 100


class KerasArchive:
    """Read access to a ``.keras`` ZIP: its JSON members and its weights store, in memory only."""

    def __init__(self, filepath: os.PathLike | str) -> None:
        self.filepath = os.fspath(filepath)
        try:
            self.zip = zipfile.ZipFile(self.filepath, "r")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise FileFormatError(f"not a readable ZIP archive: {exc}", filepath=self.filepath) from exc
        try:
            self.members = {}
            for info in self.zip.infolist():
                self._check_member(info)
                self.members[info.filename] = info
        except BaseException:
            self.zip.close()
            raise
        self._h5 = self._fh = None

    def _check_member(self, info: zipfile.ZipInfo) -> None:
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\x00" in name:
            raise FileFormatError(f"unsafe member name '{name}' in the archive", filepath=self.filepath, layer=name)
        if info.file_size > ZIP_BOMB_SIZE and info.file_size > ZIP_BOMB_RATIO * max(info.compress_size, 1):
            raise FileFormatError(
                f"member '{name}' expands to {info.file_size} bytes from {info.compress_size} (a ZIP bomb?)",
                filepath=self.filepath,
                layer=name,
            )

    def _member(self, name: str) -> zipfile.ZipInfo:
        info = self.members.get(name)
        if info is None:
            raise FileFormatError(
                f"the archive has no '{name}' member (members: {sorted(self.members)[:10]})",
                filepath=self.filepath,
                layer=name,
            )
        return info

    def has(self, name: str) -> bool:
        return name in self.members

    def json(self, name: str) -> dict:
        """A JSON member, size-checked before it is read."""
        info = self._member(name)
        if info.file_size > MAX_JSON_BYTES:
            raise FileFormatError(f"member '{name}' is larger than {MAX_JSON_BYTES} bytes", filepath=self.filepath)
        try:
            with self.zip.open(info) as fh:
                data = fh.read(MAX_JSON_BYTES + 1)
            if len(data) > MAX_JSON_BYTES:
                raise FileFormatError(f"member '{name}' is larger than {MAX_JSON_BYTES} bytes", filepath=self.filepath)
            value = json.loads(data.decode("utf-8"))
        except FileFormatError:
            raise
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise FileFormatError(
                f"member '{name}' is not valid JSON: {exc}", filepath=self.filepath, layer=name
            ) from exc
        if not isinstance(value, dict):
            raise FileFormatError(f"member '{name}' is not a JSON object", filepath=self.filepath, layer=name)
        return value

    def weights(self) -> h5py.File:
        """The ``model.weights.h5`` member opened in place (read through the ZIP, never extracted)."""
        if self._h5 is None:
            info = self._member(WEIGHTS)
            try:
                if info.compress_type == zipfile.ZIP_STORED:
                    self._fh = self.zip.open(info)  # seekable: h5py reads only what it needs
                else:
                    with self.zip.open(info) as fh:
                        self._fh = io.BytesIO(fh.read())
                self._h5 = h5py.File(self._fh, "r")
            except (OSError, RuntimeError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise FileFormatError(
                    f"member '{WEIGHTS}' is not a readable HDF5 file: {exc}", filepath=self.filepath, layer=WEIGHTS
                ) from exc
        return self._h5

    def close(self) -> None:
        if self._h5 is not None:
            with contextlib.suppress(Exception):
                self._h5.close()
        if self._fh is not None:
            self._fh.close()
        self.zip.close()

    def __enter__(self) -> KerasArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def metadata(keras_version: str) -> dict:
    """What Keras 3 writes to ``metadata.json``."""
    return {"keras_version": keras_version, "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}


def write_archive(path: str, config: dict, meta: dict, weights_file: str) -> None:
    """Write a ``.keras`` ZIP at ``path`` (members stored, as Keras does)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(METADATA, json.dumps(meta))
        zf.writestr(CONFIG, json.dumps(config))
        zf.write(weights_file, WEIGHTS)
