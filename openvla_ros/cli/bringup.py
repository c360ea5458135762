"""openvla-bringup: start the openvla_ros node set without ``ros2 launch``.

Runs the same description as ``launch/openvla.launch.py`` (``openvla_ros.bringup``): one
subprocess per node with the equivalent ``--ros-args``, all in the project's loopback DDS
environment (one domain id for the set), output prefixed with the node name. Ctrl-C stops all
nodes cleanly (SIGINT, then SIGKILL after a grace period).

    openvla-bringup model_path:=/models/openvla-7b instruction:="put the spoon in the pot"
    openvla-bringup sim:=true model_path:=/tmp/openvla-tiny --print
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from openvla_ros import bringup, runtime_env
from openvla_ros.paths import share_dir

STOP_GRACE_S = 15.0


def executable_command(executable: str) -> list[str]:
    """How to run a package executable here: ``python -m <module>`` from console_scripts.txt in
    a source checkout, else the installed ``lib/openvla_ros/<name>`` or ``bin/<name>``."""
    try:
        table = share_dir() / 'console_scripts.txt'
    except FileNotFoundError:
        table = None
    if table is not None and table.is_file():
        for line in table.read_text().splitlines():
            name, sep, target = line.partition('=')
            if sep and not line.lstrip().startswith('#') and name.strip() == executable:
                return [sys.executable, '-m', target.strip().split(':')[0]]
    for candidate in (Path(sys.prefix) / 'lib' / bringup.PACKAGE / executable, shutil.which(executable)):
        if candidate and Path(candidate).is_file():
            return [str(candidate)]
    raise FileNotFoundError(f'executable {executable!r} of {bringup.PACKAGE} not found')


def commands(values: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(node name, argv) for every node of the description."""
    return [(spec.name, executable_command(spec.executable) + spec.ros_args())
            for spec in bringup.node_specs(values)]


def _pump(name: str, stream, lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b''):
        line = raw.decode(errors='replace').rstrip('\n')
        with lock:
            print(f'[{name}] {line}', flush=True)
    stream.close()


def run(cmds: list[tuple[str, list[str]]], env: dict) -> int:
    lock = threading.Lock()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    procs: list[tuple[str, subprocess.Popen]] = []
    pumps = []
    for name, argv in cmds:
        # Own process group: the terminal's Ctrl-C reaches only us, and we stop the nodes in order.
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append((name, proc))
        t = threading.Thread(target=_pump, args=(name, proc.stdout, lock), daemon=True)
        t.start()
        pumps.append(t)
    reported: set[str] = set()
    while not stop.is_set() and len(reported) < len(procs):
        for name, proc in procs:
            if name not in reported and proc.poll() is not None:
                reported.add(name)
                with lock:
                    print(f'[bringup] {name} exited with code {proc.returncode}', flush=True)
        stop.wait(0.2)
    codes = stop_processes(procs)
    for t in pumps:
        t.join(timeout=2)
    with lock:
        print('[bringup] stopped: ' + ', '.join(f'{n}={c}' for n, c in codes.items()), flush=True)
    return 0 if all(c == 0 for c in codes.values()) else 1


def stop_processes(procs: list[tuple[str, subprocess.Popen]], timeout_s: float = STOP_GRACE_S) -> dict[str, int]:
    """SIGINT every process (the nodes' clean shutdown path), wait up to ``timeout_s`` in all,
    kill what is left; return {name: exit code}."""
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    codes = {}
    deadline = time.monotonic() + timeout_s
    for name, proc in procs:
        try:
            codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[name] = proc.wait(5)
    return codes


def _arguments_help() -> str:
    lines = ['launch arguments (name:=value):']
    for a in bringup.ARGUMENTS:
        choices = ' {' + ','.join(c or "''" for c in a.choices) + '}' if a.choices else ''
        lines.append(f'  {a.name}:={a.default!r}{choices}\n      {a.description}')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='openvla-bringup', description=__doc__.split('\n\n')[0],
        epilog=_arguments_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--print', action='store_true', dest='print_only',
                        help='print the commands (with the environment) and exit')
    parser.add_argument('arguments', nargs='*', metavar='name:=value')
    ns = parser.parse_args(argv)
    try:
        values = bringup.parse_cli_arguments(ns.arguments)
        cmds = commands(values)
    except (ValueError, FileNotFoundError) as exc:
        print(f'openvla-bringup: {exc}', file=sys.stderr)
        return 2
    env = runtime_env.loopback_env()
    if ns.print_only:
        print(f'export ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]} '
              f'FASTDDS_DEFAULT_PROFILES_FILE={shlex.quote(env["FASTDDS_DEFAULT_PROFILES_FILE"])}')
        for name, argv_ in cmds:
            print(shlex.join(argv_))
        return 0
    print(f'[bringup] ROS_DOMAIN_ID={env["ROS_DOMAIN_ID"]}; starting {", ".join(n for n, _ in cmds)}',
          flush=True)
    return run(cmds, env)


if __name__ == '__main__':
    sys.exit(main())
