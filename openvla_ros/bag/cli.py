"""``openvla-bag``: play, record and evaluate ROS 2 bags without rosbag2.

  openvla-bag play BAG [--rate R] [--loop] [--topics T ...] [--remap FROM:=TO] [--start-paused] [--clock [HZ]]
  openvla-bag record -o OUT [TOPICS ...] [--no-camera | --camera-scale 0.5] [--use-sim-time] [--duration-s S] [--force]
  openvla-bag eval BAG --checkpoint DIR [--instruction TEXT] [--output OUT_BAG] [--report-dir DIR] [--json]
  openvla-bag replay-actions BAG [--out DIR] [--task T --seed S] [--force] [--json]

On a ROS workstation ``ros2 bag play BAG --clock`` and ``ros2 bag record`` do what ``play`` and
``record`` do here; these exist for machines without rosbag2 and read/write the same bags
(sqlite3 and mcap). ``eval`` runs the policy offline on a bag's camera frames (no ROS graph) and
compares its actions with recorded ones. ``replay-actions`` replays the recorded actions open
loop through the arm controller's safety core into the simulator and compares the reached
end-effector trajectory with the recorded one.

Exit status: 0 success; 1 the run failed or stopped early (partial results are kept and say
so); 2 bad input (bag missing, empty or unreadable, topic missing, output exists without --force).
"""
from __future__ import annotations

import argparse
import sys

from openvla_ros import defaults
from openvla_ros.bag.storage import BagError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    from openvla_ros.bag.play import DEFAULT_CLOCK_HZ
    from openvla_ros.policy.options import add_policy_arguments

    parser = argparse.ArgumentParser(prog='openvla-bag', description=__doc__.split('\n\n')[0])
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('play', help='publish a bag into the ROS graph with its recorded timing')
    p.add_argument('bag', help='bag directory (metadata.yaml + .db3/.mcap) or a single .mcap file')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor (default 1.0)')
    p.add_argument('--loop', action='store_true', help='start over at the end of the bag')
    p.add_argument('--topics', nargs='+', metavar='T', help='only these topics (default: all)')
    p.add_argument('--remap', action='append', metavar='FROM:=TO', help='publish topic FROM as TO (repeatable)')
    p.add_argument('--start-paused', action='store_true',
                   help=f'wait for /{defaults.BAG_PLAYER_NODE}/toggle_pause or /play_next (std_srvs/Trigger)')
    p.add_argument('--clock', nargs='?', type=float, const=DEFAULT_CLOCK_HZ, default=None, metavar='HZ',
                   help=f'publish {defaults.CLOCK_TOPIC} from the bag time at HZ (default {DEFAULT_CLOCK_HZ:g} Hz)')
    p.add_argument('--qos-reliability', choices=('reliable', 'best_effort'),
                   help='publisher reliability (default: as recorded, else reliable)')
    p.add_argument('--delay-s', type=float, default=0.0, help='wait this long before the first message, seconds')
    p.add_argument('--wait-for-subscribers-s', type=float, default=0.0,
                   help='wait up to this long until every publisher has a subscriber, seconds')
    p.add_argument('--strict', action='store_true',
                   help='fail when fewer messages are read than metadata.yaml lists (default: a warning)')

    r = sub.add_parser('record', help='record topics of the live graph into an mcap bag')
    r.add_argument('-o', '--output', required=True, help='bag directory to create')
    r.add_argument('topics', nargs='*', help='topics to record (default: what eval reads -- the camera, the '
                   'instruction and the actions -- and what openvla-dataset build needs -- also '
                   f'{defaults.JOINT_STATES_TOPIC} and the episode markers on {defaults.EPISODE_TOPIC} -- plus the '
                   'status, diagnostics and controller topics)')
    r.add_argument('--camera', action=argparse.BooleanOptionalAction, default=None,
                   help=f'add {defaults.CAMERA_TOPIC} to the topics given, or (--no-camera) leave it out')
    r.add_argument('--camera-scale', type=float, default=1.0, help='shrink camera images by this factor (0, 1]')
    r.add_argument('--duration-s', type=float, help='stop after this many seconds (default: until Ctrl-C)')
    r.add_argument('--force', action='store_true', help='replace an earlier output bag (only a bag directory, '
                   'and only once the new recording is closed)')
    r.add_argument('--use-sim-time', action=argparse.BooleanOptionalAction, default=None,
                   help=f'log times from {defaults.CLOCK_TOPIC} (default: when the graph has a '
                   f'{defaults.CLOCK_TOPIC} publisher), or (--no-use-sim-time) from the wall clock')

    e = sub.add_parser('eval', help='run the policy offline on a bag and compare with recorded actions')
    e.add_argument('bag')
    e.add_argument('--checkpoint', required=True, help='OpenVLA checkpoint directory')
    e.add_argument('--unnorm-key', help=f'dataset statistics key (default {defaults.DEFAULT_UNNORM_KEY} '
                   'when the checkpoint has it, else its only key)')
    e.add_argument('--instruction', help='fixed instruction (default: the latest message on --instruction-topic)')
    e.add_argument('--image-topic', help=f'Image or CompressedImage topic (default {defaults.CAMERA_TOPIC}, '
                   f'else {defaults.COMPRESSED_CAMERA_TOPIC})')
    e.add_argument('--instruction-topic', default=defaults.INSTRUCTION_TOPIC)
    e.add_argument('--reference-topic', help='recorded actions: openvla_ros/EndEffectorDelta or '
                   f'std_msgs/Float64MultiArray (default {defaults.ACTION_TOPIC} when present)')
    e.add_argument('--match-tolerance-s', type=float, default=0.05,
                   help='largest stamp difference between a prediction and its reference, seconds')
    e.add_argument('--rate', type=float, help='evaluate at most this many frames per second of bag time (default: every frame)')
    e.add_argument('--output', help='output mcap bag of predicted actions (default: <bag>_eval_<timestamp>)')
    e.add_argument('--report-dir', help='report.json and plots (default: <output>/report)')
    e.add_argument('--frame-id', default='', help='header.frame_id of the predicted actions (the embodiment base frame)')
    e.add_argument('--json', action='store_true', help='print the report as JSON on stdout')
    e.add_argument('--force', action='store_true', help='replace an earlier output bag (only a bag directory, '
                   'and only once the new one is complete) and report files')
    e.add_argument('--strict', action='store_true',
                   help='fail when fewer messages are read than metadata.yaml lists (default: a warning)')
    e.add_argument('--no-progress', action='store_true', help='no progress bar on stderr')
    add_policy_arguments(e)  # the same model options as openvla-predict and openvla-serve

    a = sub.add_parser('replay-actions', help='replay the recorded actions open loop in the simulator and '
                       'compare the reached end-effector trajectory with the recorded one')
    a.add_argument('bag', help=f'bag with {defaults.ACTION_TOPIC} and {defaults.JOINT_STATES_TOPIC}')
    a.add_argument('--out', help='folder for replay.json and replay.png (default: <bag>_replay)')
    a.add_argument('--episode', type=int, default=0, help='episode of a bag with episode markers (default 0)')
    a.add_argument('--task', help='evaluation task whose object layout to replay in (with --seed; default: '
                   'the objects at their nominal poses)')
    a.add_argument('--seed', type=int, help='seed of the object layout')
    a.add_argument('--embodiment', default=defaults.DEFAULT_EMBODIMENT)
    a.add_argument('--force', action='store_true', help='replace an earlier replay.json / replay.png in --out')
    a.add_argument('--json', action='store_true', help='print the report as JSON on stdout')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == 'play':
            from openvla_ros.bag.play import PlayOptions, parse_remaps, play

            return play(PlayOptions(
                bag=args.bag, rate=args.rate, loop=args.loop, topics=args.topics,
                remap=parse_remaps(args.remap), start_paused=args.start_paused, clock_hz=args.clock,
                qos_reliability=args.qos_reliability, delay_s=args.delay_s,
                wait_for_subscribers_s=args.wait_for_subscribers_s, strict=args.strict))
        if args.command == 'record':
            from openvla_ros.bag.record import RecordOptions, record

            return record(RecordOptions(output=args.output, topics=args.topics, camera=args.camera,
                                        camera_scale=args.camera_scale, duration_s=args.duration_s,
                                        force=args.force, use_sim_time=args.use_sim_time))
        if args.command == 'replay-actions':
            import json

            from openvla_ros.bag.replay import ReplayOptions, replay, summary_line

            report = replay(ReplayOptions(bag=args.bag, out=args.out, episode=args.episode, task=args.task,
                                          seed=args.seed, embodiment=args.embodiment, force=args.force))
            print(json.dumps(report, indent=2) if args.json else summary_line(report))
            return EXIT_OK
        from openvla_ros.bag.evaluate import EvalOptions, run_eval

        return run_eval(EvalOptions.from_args(args))
    except BagError as exc:
        print(f'openvla-bag {args.command}: error: {exc}', file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == '__main__':
    sys.exit(main())
