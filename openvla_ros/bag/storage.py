"""Reading and writing ROS 2 bags with ``rosbags`` (sqlite3 ``.db3`` and ``.mcap``), ROS-free.

The typestore knows the stock ROS 2 (Kilted) messages plus the project's own messages, read
from the ``.msg`` files shipped with the package, so bags written here carry full message
definitions and any tool (``ros2 bag``, Foxglove, ``mcap_ros2``) can decode them.

A bag whose mcap file was cut short (a recorder killed mid-write, a copy interrupted) has no
summary section and ``rosbags`` refuses to open it; :class:`BagSource` then falls back to a
sequential scan that yields every message up to the break and records why it stopped.
"""
from __future__ import annotations

import functools
import shutil
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
                raise BagError(f'cannot open bag {self.path}: {_one_line(exc)}') from exc
            self._mcap_file = mcap
            self.recovered = True
            self._scan_mcap_topics(open_error=_one_line(exc))
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
                self._scan_error = _one_line(exc) or type(exc).__name__

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
        try:
            for conn, t, raw in self._reader.messages(connections=conns):
                yield BagMessage(conn.topic, conn.msgtype, t, raw)
        except Exception as exc:  # corrupt chunk / sqlite page: keep what was read
            self.read_error = f'bag damaged, stopped reading: {_one_line(exc)}'

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> 'BagSource':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prepare_output(path: str | Path, force: bool, what: str = 'output') -> Path:
    """Make sure ``path`` can be created: refuse to overwrite unless ``force``.

    With ``force`` only something that looks like a bag or an empty directory is removed, so a
    typo never deletes an unrelated directory.
    """
    p = Path(path)
    if not p.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
    if not force:
        raise BagError(f'{what} {p} already exists; pass --force to overwrite it')
    if p.is_dir():
        entries = list(p.iterdir())
        looks_like_bag = (p / 'metadata.yaml').exists() or any(e.suffix in ('.mcap', '.db3') for e in entries)
        if entries and not looks_like_bag:
            raise BagError(f'{what} {p} exists and is not a bag; refusing to delete it even with --force')
        shutil.rmtree(p)
    else:
        p.unlink()
    return p


def open_writer(path: Path, storage: str = 'mcap'):
    """An opened rosbags Writer (bag format version 9, as written by Jazzy and Kilted)."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    try:
        writer.open()
    except Exception as exc:
        raise BagError(f'cannot create bag {path}: {_one_line(exc)}') from exc
    return writer


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)
