"""Reading and writing ROS 2 bags with ``rosbags`` (sqlite3 ``.db3`` and ``.mcap``), ROS-free.

The typestore knows the stock ROS 2 (Kilted) messages plus the project's own messages, read
from the ``.msg`` files shipped with the package, so bags written here carry full message
definitions and any tool (``ros2 bag``, Foxglove, ``mcap_ros2``) can decode them.

A bag whose mcap file was cut short (a recorder killed mid-write, a copy interrupted) has no
summary section and ``rosbags`` refuses to open it; :class:`BagSource` then falls back to a
sequential scan that yields every message up to the break and records why it stopped.

Nothing is lost silently: messages are matched to their topic by name and type only (rosbags
also compares the offered QoS profiles in ``metadata.yaml`` with those in the storage file and
yields nothing for a topic where they differ, which real rosbag2 recordings do), and after a
full pass the messages read are compared with the counts in ``metadata.yaml``
(:attr:`BagSource.shortfall`).
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from openvla_ros.paths import share_dir

PROJECT_PACKAGE = 'openvla_ros'


class BagError(Exception):
    """A bag cannot be opened, read or written; the message says why in one line."""


def msg_dir() -> Path:
    """The project's ``.msg`` files: ``msg/`` in a source checkout, ``share/openvla_ros/msg`` once installed."""
    return share_dir() / 'msg'


@functools.lru_cache(maxsize=1)
def project_typestore():
    """A rosbags typestore with the ROS 2 Kilted messages and the project's messages registered."""
    from rosbags.typesys import Stores, get_typestore, get_types_from_msg

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for f in sorted(msg_dir().glob('*.msg')):
        types.update(get_types_from_msg(f.read_text(), f'{PROJECT_PACKAGE}/msg/{f.stem}'))
    if not types:
        raise BagError(f'no message definitions found in {msg_dir()}')
    store.register(types)
    return store


@dataclass
class TopicInfo:
    topic: str
    msgtype: str          # e.g. sensor_msgs/msg/Image
    count: int
    offered_qos_profiles: tuple = ()   # rosbags Qos objects as recorded (may be empty)


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int      # receive time the recorder stored (the bag's timeline)
    raw: bytes | memoryview  # serialized CDR, exactly as stored


class BagSource:
    """One bag opened for reading: its topics and a single pass over its messages.

    Reading never raises half-way: when the bag breaks (truncated file, corrupt chunk or
    database page) the iteration stops and :attr:`read_error` says where and why, so callers
    keep what was read before the break.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.read_error: str | None = None     # set when reading stopped early
        self.recovered: bool = False            # opened through the sequential mcap scan
        self.shortfall: dict[str, tuple[int, int]] = {}   # topic -> (count in metadata, read)
        self._reader = None
        self._mcap_file: Path | None = None
        self.topics: dict[str, TopicInfo] = {}
        self._open()

    # ---- opening ----
    def _open(self) -> None:
        from rosbags.rosbag2 import Reader

        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist')
        if self.path.is_dir() and not any(self.path.iterdir()):
            raise BagError(f'bag {self.path} is an empty directory (no metadata.yaml, no .db3/.mcap file)')
        try:
            reader = Reader(self.path)
            reader.open()
        except Exception as exc:  # rosbags raises several types; all mean "cannot open"
            mcap = self._single_mcap_file()
            if mcap is None:
                raise BagError(f'cannot open bag {self.path}: {one_line(exc)}') from exc
            self._mcap_file = mcap
            self.recovered = True
            self._scan_mcap_topics(open_error=one_line(exc))
            return
        self._reader = reader
        for conn in reader.connections:
            info = self.topics.get(conn.topic)
            qos = tuple(getattr(conn.ext, 'offered_qos_profiles', ()) or ())
            if info is None:
                self.topics[conn.topic] = TopicInfo(conn.topic, conn.msgtype, conn.msgcount, qos)
            else:  # one topic may have several connections (e.g. several publishers)
                info.count += conn.msgcount

    def _single_mcap_file(self) -> Path | None:
        if self.path.is_file() and self.path.suffix == '.mcap':
            return self.path
        if self.path.is_dir():
            files = sorted(self.path.glob('*.mcap'))
            if len(files) == 1:
                return files[0]
        return None

    def _scan_mcap_topics(self, open_error: str) -> None:
        """First pass over a damaged mcap: channels and message counts up to the break."""
        counts: dict[str, int] = {}
        types: dict[str, str] = {}
        for topic, msgtype, _, _ in self._scan_mcap(with_data=False):
            counts[topic] = counts.get(topic, 0) + 1
            types[topic] = msgtype
        for topic, msgtype in self._mcap_channels.items():
            types.setdefault(topic, msgtype)
        if not types:
            raise BagError(f'cannot open bag {self.path}: {open_error}; no readable message before the break')
        self.topics = {t: TopicInfo(t, types[t], counts.get(t, 0)) for t in types}
        if self._scan_error:
            self.read_error = f'bag damaged ({open_error}): read up to the break at: {self._scan_error}'

    def _scan_mcap(self, with_data: bool = True) -> Iterator[tuple[str, str, int, bytes]]:
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        self._scan_error = None
        schemas: dict[int, str] = {}
        channels: dict[int, tuple[str, str]] = {}
        self._mcap_channels: dict[str, str] = {}
        with open(self._mcap_file, 'rb') as fh:
            try:
                for rec in StreamReader(fh, skip_magic=False).records:
                    if isinstance(rec, Schema):
                        schemas[rec.id] = rec.name
                    elif isinstance(rec, Channel):
                        msgtype = schemas.get(rec.schema_id, '')
                        channels[rec.id] = (rec.topic, msgtype)
                        self._mcap_channels[rec.topic] = msgtype
                    elif isinstance(rec, Message) and rec.channel_id in channels:
                        topic, msgtype = channels[rec.channel_id]
                        yield topic, msgtype, rec.log_time, (rec.data if with_data else b'')
            except Exception as exc:  # the break: stop here, keep everything before it
                self._scan_error = one_line(exc) or type(exc).__name__

    # ---- reading ----
    def describe(self) -> str:
        """One line listing what the bag has: ``/topic (type, N msgs), ...``."""
        if not self.topics:
            return 'the bag has no topics'
        return 'the bag has: ' + ', '.join(
            f'{t.topic} ({t.msgtype}, {t.count} msgs)' for t in sorted(self.topics.values(), key=lambda t: t.topic))

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[BagMessage]:
        """Messages of ``topics`` (all when None) in the bag's time order."""
        wanted = None if topics is None else set(topics)
        if self._reader is None:
            for topic, msgtype, t, raw in self._scan_mcap():
                if wanted is None or topic in wanted:
                    yield BagMessage(topic, msgtype, t, raw)
            if self._scan_error:
                self.read_error = f'bag damaged, read up to the break at: {self._scan_error}'
            return
        conns = [c for c in self._reader.connections if wanted is None or c.topic in wanted]
        if not conns:
            return
        read: dict[str, int] = {c.topic: 0 for c in conns}
        try:
            for conn, t, raw in self._storage_messages(conns):
                read[conn.topic] += 1
                yield BagMessage(conn.topic, conn.msgtype, t, raw)
        except Exception as exc:  # corrupt chunk / sqlite page: keep what was read
            self.read_error = f'bag damaged, stopped reading: {one_line(exc)}'
        self._check_counts(read)

    def _storage_messages(self, conns):
        """(connection, log time, raw) of ``conns`` from every storage file of the bag.

        A bag directory's connections come from ``metadata.yaml`` and rosbags pairs them with
        the storage file's connections by topic, type *and* offered QoS; the QoS strings that
        rosbag2 writes into the two places need not agree, and then rosbags yields nothing.
        Here the pairing is by topic and type (and type hash when both have one)."""
        storage = self._reader.storage
        files = getattr(storage, 'storages', None)
        if files is None:   # a single .mcap/.db3 file: its connections are the file's own
            yield from self._reader.messages(connections=conns)
            return
        per_message_zstd = getattr(storage.metadata, 'compression_mode', None) == 'message'
        for f in files:
            pairs = {}
            for fc in f.connections:
                match = next((c for c in conns if c.topic == fc.topic and c.msgtype == fc.msgtype
                              and (not c.digest or not fc.digest or c.digest == fc.digest)), None)
                if match is not None:
                    pairs[fc.id] = match
            selected = [fc for fc in f.connections if fc.id in pairs]
            if not selected:
                continue
            for fc, t, raw in f.messages(selected, None, None):
                if per_message_zstd:
                    from rosbags.rosbag2.reader import zstd   # the decompressor rosbags uses
                    raw = zstd.decompress(raw)
                yield pairs[fc.id], t, raw

    def _check_counts(self, read: dict[str, int]) -> None:
        for topic, n in read.items():
            expected = self.topics[topic].count
            if n < expected:
                self.shortfall[topic] = (expected, n)

    def count_warning(self) -> str | None:
        """One line naming every topic that yielded fewer messages than ``metadata.yaml`` says."""
        if not self.shortfall:
            return None
        parts = ', '.join(f'{t}: read {n} of {e}' for t, (e, n) in sorted(self.shortfall.items()))
        return f'fewer messages read than the bag metadata lists ({parts})'

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> 'BagSource':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_replaceable_bag(p: Path) -> bool:
    """A bag directory (metadata.yaml plus storage files, maybe a report folder) or an empty one."""
    if not p.is_dir() or p.is_symlink():
        return False
    entries = list(p.iterdir())
    return not entries or (p / 'metadata.yaml').is_file()


def check_not_input(path: str | Path, inputs: Iterable[str | Path], what: str) -> None:
    """Refuse an output that is an input, holds one or lies inside one (symlinks and relative
    paths resolved), so writing or replacing it can never touch a recording being read."""
    real = Path(os.path.abspath(path)).resolve()
    for i in inputs:
        src = Path(i).resolve()
        if real == src or real in src.parents or src in real.parents:
            raise BagError(f'{what} {path} is (or holds, or is inside) the input {i}; choose another one')


class BagOutput:
    """A new bag (or any tool output folder) written next to its final place and renamed there.

    The writer gets :attr:`path`, inside a fresh hidden folder beside ``target``; only
    :meth:`commit` moves it to ``target``, replacing an earlier output (``force``) in one rename.
    A run that fails before it commits leaves the previous output untouched. ``force`` never
    replaces the input, a folder holding the input, anything that is not a bag directory, or a
    plain file.
    """

    def __init__(self, target: str | Path, force: bool, inputs: Iterable[str | Path] = (),
                 what: str = 'output bag'):
        self.target = Path(target)
        self.what = what
        check_not_input(self.target, inputs, what)
        if self.target.exists() or self.target.is_symlink():
            if not force:
                raise BagError(f'{what} {self.target} already exists; pass --force to replace it')
            if not _is_replaceable_bag(self.target):
                kind = 'a file' if self.target.is_file() else 'not a bag directory (no metadata.yaml)'
                raise BagError(f'{what} {self.target} exists and is {kind}; refusing to replace it '
                               'even with --force')
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._staging = Path(tempfile.mkdtemp(prefix=f'.{self.target.name}.partial-', dir=parent))
        except OSError as exc:
            raise BagError(f'cannot create {what} in {parent}: {exc}') from exc
        self.path = self._staging / self.target.name
        self.committed = False

    def commit(self) -> Path:
        """Move the new output into place (replacing the old one); returns the final path."""
        old = None
        if self.target.exists():
            old = self._staging / '.previous'
            os.replace(self.target, old)
        try:
            os.replace(self.path, self.target)
        except OSError:
            if old is not None:
                os.replace(old, self.target)
            raise
        self.committed = True
        shutil.rmtree(self._staging, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        """Remove what was written; the previous output (if any) stays as it was."""
        shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> 'BagOutput':
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        if not self.committed:
            self.discard()


def open_writer(path: Path, storage: str = 'mcap'):
    """An opened rosbags Writer (bag format version 9, as written by Jazzy and Kilted)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    try:
        writer.open()
    except Exception as exc:
        raise BagError(f'cannot create bag {path}: {one_line(exc)}') from exc
    return writer


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)
