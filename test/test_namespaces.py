"""Two robots on one ROS domain: two namespaced node sets (vla_node + arm_controller, tiny
model) started from the bring-up description, side by side, with no cross-talk.

The nodes create their topics by relative name, so the namespace alone (``-r __ns:=/robotN``,
what ``namespace:=`` and ``ros2 run ... --ros-args -r __ns:=`` pass) moves every package topic.
The first test checks that on each node in-process (every topic it publishes or subscribes to,
configured, lies in its namespace unless it is one of the global ones); the second runs two node
sets as processes.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import VlaProbe, spin_until
from openvla_ros import defaults
from openvla_ros.cli.bringup import commands

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ROBOTS = ('robot1', 'robot2')
STARTUP_TIMEOUT_S = 240.0    # four processes importing torch and loading models on 2 shared cores
PACKAGE_TOPICS = [v for k, v in vars(defaults).items() if k.endswith('_TOPIC')]


def _outside(node, name: str, namespace: str) -> list[str]:
    """The topics of node ``namespace/name`` that lie outside ``namespace``, except the global ones
    and the ROS infrastructure topics every node has."""
    infrastructure = {'/rosout', '/parameter_events'}
    topics = {t for t, _ in node.get_publisher_names_and_types_by_node(name, namespace)}
    topics |= {t for t, _ in node.get_subscriber_names_and_types_by_node(name, namespace)}
    return sorted(t for t in topics if not t.startswith(namespace + '/')
                  and t not in defaults.GLOBAL_TOPICS | infrastructure)


@pytest.mark.timeout(180)
def test_every_package_topic_of_a_namespaced_node_is_in_its_namespace(ros_context, tiny_checkpoint):
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from openvla_ros.nodes.arm_controller import ArmControllerNode
    from openvla_ros.nodes.common import wait_for
    from openvla_ros.nodes.vla_node import VlaNode

    ns = '/robot1'
    vla = VlaNode(namespace=ns, context=ros_context, parameter_overrides=[
        Parameter('model_path', value=str(tiny_checkpoint)), Parameter('device', value='cpu'),
        Parameter('dtype', value='float32'), Parameter('quantization', value='none'),
        Parameter('publish_twist', value=True)])
    arm = ArmControllerNode(namespace=ns, context=ros_context)
    try:
        # Configured: the lifecycle publishers and the input subscriptions exist.
        assert vla.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert arm.trigger_configure() == TransitionCallbackReturn.SUCCESS
        expected = {defaults.in_namespace(t, ns, defaults.VLA_NODE) for t in (
            defaults.VLA_STATUS_TOPIC, defaults.ACTION_TOPIC, defaults.ACTION_TWIST_TOPIC,
            defaults.DEBUG_IMAGE_TOPIC, defaults.CAMERA_TOPIC, defaults.INSTRUCTION_TOPIC)}
        expected |= {defaults.in_namespace(t, ns) for t in (
            defaults.CONTROLLER_STATUS_TOPIC, defaults.ACTION_TOPIC, defaults.JOINT_STATES_TOPIC)}

        def graph_has_all() -> bool:
            return expected <= {t for t, _ in vla.get_topic_names_and_types()}
        assert wait_for(graph_has_all, 10.0), sorted(
            expected - {t for t, _ in vla.get_topic_names_and_types()})
        for node_name in (defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE):
            assert _outside(vla, node_name, ns) == [], node_name
    finally:
        for node in (vla, arm):
            node.trigger_cleanup()
            node.destroy_node()


@pytest.mark.timeout(600)
def test_two_namespaced_node_sets_do_not_cross_talk(processes, probe, tiny_checkpoint):
    from std_msgs.msg import String

    from openvla_ros.msg import ControllerStatus
    from openvla_ros.nodes import common

    for ns in ROBOTS:
        for name, argv in commands({'namespace': ns, 'vla_config': 'openvla_tiny_sim',
                                    'model_path': str(tiny_checkpoint)}):
            processes.start(argv[2], *argv[3:], '-p', 'max_image_age_s:=30.0', name=f'{ns}_{name}')

    node, executor = probe
    # Only robot1 is shown a camera image; the root namespace is watched for leaks.
    rgb = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    vla = {ns: VlaProbe(node, executor, rgb if ns == 'robot1' else None, namespace=ns)
           for ns in (*ROBOTS, '')}
    controller = {ns: [] for ns in ROBOTS}
    for ns in ROBOTS:
        node.create_subscription(ControllerStatus,
                                 defaults.in_namespace(defaults.CONTROLLER_STATUS_TOPIC, ns),
                                 controller[ns].append, common.reliable_qos(10))
    instruction = node.create_publisher(
        String, defaults.in_namespace(defaults.INSTRUCTION_TOPIC, 'robot1'), common.reliable_qos(10))

    up = spin_until(executor, lambda: all(vla[ns].statuses for ns in ROBOTS), STARTUP_TIMEOUT_S)
    assert up, {n: processes.log(n)[-1500:] for n, _ in processes.procs}

    # Every package topic of each set lives in its namespace; only the global ones are shared.
    def graph_complete() -> bool:
        names = {n for n, _ in node.get_topic_names_and_types()}
        return all(defaults.in_namespace(t, ns, defaults.VLA_NODE) in names
                   for ns in ROBOTS for t in (defaults.ACTION_TOPIC, defaults.DEBUG_IMAGE_TOPIC,
                                              defaults.CONTROLLER_STATUS_TOPIC))
    assert spin_until(executor, graph_complete, 30.0), sorted(
        n for n, _ in node.get_topic_names_and_types())
    leaked = sorted(t for t in PACKAGE_TOPICS if t not in defaults.GLOBAL_TOPICS
                    and not t.startswith('~') and node.get_publishers_info_by_topic(t))
    assert not leaked, f'published outside the namespaces: {leaked}'

    camera, said = vla['robot1'].camera, [0]

    def robot1_acted() -> bool:
        if camera.sent != said[0]:   # with each frame: a late-matched subscription gets it too
            instruction.publish(String(data='pick up the block'))
            said[0] = camera.sent
        return len(vla['robot1'].actions) >= 3 and any(
            s.actions_received > 0 for s in controller['robot1'])

    assert vla['robot1'].feed_until(robot1_acted, 90.0), (
        len(vla['robot1'].actions), processes.log('robot1_vla_node')[-2000:])
    # robot2 saw no image, so it predicted nothing and its controller received nothing;
    # nothing at all reached the root-namespace topics.
    assert vla['robot2'].actions == [] and vla[''].actions == [] and vla[''].statuses == []
    assert all(s.actions_received == 0 for s in controller['robot2'])
    assert all(s.frames_received == 0 for s in vla['robot2'].statuses)
    codes = processes.stop(timeout_s=20.0)
    assert set(codes.values()) == {0}, codes
