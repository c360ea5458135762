"""``openvla-bag play``: publish a recorded bag into the ROS graph with its recorded timing.

On a ROS workstation ``ros2 bag play BAG --clock`` does the same job; this player exists for
machines without rosbag2 (it reads sqlite3 and mcap bags through ``rosbags``). Messages are
published from their stored CDR bytes without deserialising them.

Step-by-step replay: start with ``--start-paused``, then call ``~/play_next`` (publishes exactly
one message) or ``~/toggle_pause`` (``std_srvs/Trigger``) on the ``openvla_bag_player`` node.
With ``--clock`` the player publishes ``/clock`` from the bag's timeline so nodes running with
``use_sim_time`` follow the recording (the clock stops while paused).
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass

from openvla_ros import defaults
from openvla_ros.bag.storage import BagError, BagSource
from openvla_ros.stamps import NS_PER_S, ns_to_sec_nanosec

DEFAULT_CLOCK_HZ = 40.0   # what `ros2 bag play --clock` uses
STEP_TIMEOUT_S = 5.0


@dataclass
class PlayOptions:
    bag: str
    rate: float = 1.0
    loop: bool = False
    topics: list[str] | None = None
    remap: dict[str, str] | None = None
    start_paused: bool = False
    clock_hz: float | None = None
    qos_reliability: str | None = None
    delay_s: float = 0.0
    wait_for_subscribers_s: float = 0.0
    strict: bool = False


def parse_remaps(items: list[str] | None) -> dict[str, str]:
    remap = {}
    for item in items or ():
        src, sep, dst = item.partition(':=')
        if not sep or not src or not dst:
            raise BagError(f'bad --remap {item!r}: expected FROM:=TO')
        remap[src] = dst
    return remap


class Player:
    """Publishes a :class:`BagSource` in a background thread; services run on the caller's executor."""

    def __init__(self, node, source: BagSource, opts: PlayOptions, publish_plan: dict):
        from rosgraph_msgs.msg import Clock
        from std_srvs.srv import Trigger

        self.node, self.source, self.opts = node, source, opts
        self.plan = publish_plan                  # bag topic -> (publisher, message class)
        self._raw_publish = True
        self._cond = threading.Condition()
        self._paused = opts.start_paused
        self._step_requests: list[dict] = []
        self._stop = False
        self.finished = threading.Event()
        self.published = 0
        self._bag_now_ns: int | None = None       # the bag time the clock shows
        self._anchor: tuple[float, int] | None = None  # (wall time, bag time) of the last (re)start
        self._clock_pub = None
        if opts.clock_hz:
            self._clock_cls = Clock
            self._clock_pub = node.create_publisher(Clock, defaults.CLOCK_TOPIC, 10)
        node.create_service(Trigger, '~/toggle_pause', self._on_toggle_pause)
        node.create_service(Trigger, '~/play_next', self._on_play_next)
        self._thread = threading.Thread(target=self._run, name='bag_playback', daemon=True)

    # ---- services (executor thread) ----
    def _on_toggle_pause(self, request, response):
        with self._cond:
            self._paused = not self._paused
            if not self._paused:
                self._anchor = None   # resume from where the bag stands, no burst
            self._cond.notify_all()
            response.success = True
            response.message = 'paused' if self._paused else 'playing'
        return response

    def _on_play_next(self, request, response):
        with self._cond:
            if not self._paused:
                response.success, response.message = False, 'play_next needs the player to be paused'
                return response
            if self.finished.is_set():
                response.success, response.message = False, 'end of bag'
                return response
            req = {'done': threading.Event(), 'topic': None}
            self._step_requests.append(req)
            self._cond.notify_all()
        if not req['done'].wait(STEP_TIMEOUT_S):
            response.success, response.message = False, 'timed out waiting for the next message'
        elif req['topic'] is None:
            response.success, response.message = False, 'end of bag'
        else:
            response.success, response.message = True, f'published one message on {req["topic"]}'
        return response

    # ---- playback thread ----
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=5.0)

    def _publish_clock(self) -> None:
        if self._clock_pub is not None and self._bag_now_ns is not None:
            sec, nanosec = ns_to_sec_nanosec(self._bag_now_ns)
            msg = self._clock_cls()
            msg.clock.sec, msg.clock.nanosec = sec, nanosec
            self._clock_pub.publish(msg)

    def _current_bag_time(self, now: float) -> int | None:
        if self._anchor is None:
            return self._bag_now_ns
        wall0, bag0 = self._anchor
        return bag0 + int((now - wall0) * self.opts.rate * NS_PER_S)

    def _wait_turn(self, t_ns: int) -> dict | None | bool:
        """Block until message time ``t_ns`` is due (or a step is requested while paused).
        Returns the step request served, None when due by the clock, False on stop."""
        clock_period = 1.0 / self.opts.clock_hz if self.opts.clock_hz else None
        with self._cond:
            while True:
                if self._stop:
                    return False
                now = time.monotonic()
                if self._paused:
                    if self._step_requests:
                        return self._step_requests.pop(0)
                    self._publish_clock()
                    self._cond.wait(clock_period or 0.5)
                    continue
                if self._anchor is None:
                    # (re)start: the bag's clock continues from the last message played
                    start = self._bag_now_ns if self._bag_now_ns is not None else t_ns
                    self._anchor = (now, min(start, t_ns))
                wall0, bag0 = self._anchor
                due = wall0 + (t_ns - bag0) / (self.opts.rate * NS_PER_S)
                if now >= due:
                    return None
                self._bag_now_ns = self._current_bag_time(now)
                self._publish_clock()
                self._cond.wait(min(due - now, clock_period) if clock_period else due - now)

    def _publish(self, topic: str, raw) -> None:
        pub, cls = self.plan[topic]
        if self._raw_publish:
            try:
                pub.publish(bytes(raw))
                return
            except TypeError:  # rclpy without serialized publishing: deserialize once per message
                self._raw_publish = False
        from rclpy.serialization import deserialize_message
        pub.publish(deserialize_message(bytes(raw), cls))

    def _run(self) -> None:
        try:
            while True:
                for m in self.source.messages(self.plan.keys()):
                    turn = self._wait_turn(m.log_time_ns)
                    if turn is False:
                        return
                    self._bag_now_ns = max(m.log_time_ns, self._bag_now_ns or 0) if turn is None else m.log_time_ns
                    self._publish_clock()   # nodes under sim time see the message's time first
                    self._publish(m.topic, m.raw)
                    self.published += 1
                    if isinstance(turn, dict):
                        turn['topic'] = self.opts.remap.get(m.topic, m.topic) if self.opts.remap else m.topic
                        turn['done'].set()
                        self._anchor = None
                if self.source.read_error:
                    print(f'openvla-bag play: {self.source.read_error}', file=sys.stderr)
                if not self.opts.loop or self._stop:
                    return
                self._anchor, self._bag_now_ns = None, None
        except Exception as exc:  # noqa: BLE001 - a publish after shutdown ends playback
            if not self._stop:
                print(f'openvla-bag play: playback stopped: {exc}', file=sys.stderr)
        finally:
            with self._cond:
                self.finished.set()
                for req in self._step_requests:
                    req['done'].set()
                self._step_requests.clear()


def _plan_topics(source: BagSource, opts: PlayOptions) -> tuple[list[tuple[str, str, object]], list[str]]:
    """(topic, msgtype, class) to publish, and one line per skipped topic."""
    from openvla_ros.bag.graph import import_message_class

    wanted = opts.topics or sorted(source.topics)
    missing = [t for t in wanted if t not in source.topics]
    if missing:
        raise BagError(f'topic(s) {", ".join(missing)} not in {source.path}; {source.describe()}')
    plan, skipped = [], []
    for topic in wanted:
        info = source.topics[topic]
        try:
            plan.append((topic, info.msgtype, import_message_class(info.msgtype)))
        except ImportError as exc:
            skipped.append(f'skipping {topic} ({info.msgtype}): {exc}')
    return plan, skipped


def play(opts: PlayOptions) -> int:
    source = BagSource(opts.bag)
    if opts.rate <= 0:
        raise BagError(f'--rate must be > 0, got {opts.rate}')
    plan, skipped = _plan_topics(source, opts)
    for line in skipped:
        print(f'openvla-bag play: {line}', file=sys.stderr)
    if not plan:
        raise BagError(f'nothing to play: no topic of {source.path} has a message type available here')
    if source.read_error:
        print(f'openvla-bag play: warning: {source.read_error}', file=sys.stderr)

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from openvla_ros.bag.graph import playback_qos

    rclpy.init()
    node = rclpy.create_node(defaults.BAG_PLAYER_NODE)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    player = None
    try:
        publishers = {}
        for topic, msgtype, cls in plan:
            out_topic = opts.remap.get(topic, topic) if opts.remap else topic
            qos = playback_qos(source.topics[topic].offered_qos_profiles, opts.qos_reliability)
            publishers[topic] = (node.create_publisher(cls, out_topic, qos), cls)
        player = Player(node, source, opts, publishers)
        _wait_for_subscribers(executor, [p for p, _ in publishers.values()], opts.wait_for_subscribers_s)
        if opts.delay_s > 0:
            _spin_for(executor, opts.delay_s)
        node.get_logger().info(
            f'playing {source.path} ({len(plan)} topics, rate {opts.rate}'
            f'{", paused" if opts.start_paused else ""}{", loop" if opts.loop else ""})')
        player.start()
        while rclpy.ok() and not player.finished.is_set():
            executor.spin_once(timeout_sec=0.05)
        return _outcome(source, player, opts, plan)
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if player is not None:
            player.stop()
            print(f'openvla-bag play: published {player.published} messages', file=sys.stderr)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        source.close()


def _outcome(source: BagSource, player: Player, opts: PlayOptions, plan) -> int:
    """Exit status of a playback that ran to its end: a bag that holds messages but published none,
    or (with ``--strict``) fewer messages than its metadata lists, is a failure."""
    listed = sum(source.topics[topic].count for topic, _, _ in plan)
    rc = 0
    shortfall = source.count_warning()
    if shortfall:
        print(f'openvla-bag play: {"error" if opts.strict else "warning"}: {shortfall}', file=sys.stderr)
        rc = 1 if opts.strict else rc
    if player.published == 0 and listed > 0:
        print(f'openvla-bag play: error: published nothing although the bag lists {listed} messages',
              file=sys.stderr)
        rc = 1
    return rc


def _spin_for(executor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=min(0.05, max(0.0, deadline - time.monotonic())))


def _wait_for_subscribers(executor, publishers, timeout_s: float) -> None:
    """Give discovery time to match every publisher with a subscriber (so nothing is lost)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(p.get_subscription_count() > 0 for p in publishers):
        executor.spin_once(timeout_sec=0.05)
