"""The one place for topic names, node names and shared default values.

Every node, launch description, CLI, test and document takes these from here.

The ``*_TOPIC`` constants are the names as seen from the root namespace: what a single robot's
graph shows, what bags record and what the tools outside the nodes (bag tools, demo, tests)
subscribe to. The nodes themselves create their topics by :func:`relative` name, so
``--ros-args -r __ns:=/robot1`` moves every package topic into ``/robot1`` (as yolo_ros and
moveit_servo do); ``~/...`` names are private to the node that owns them, and ``/diagnostics``
and ``/clock`` stay global, where ROS tools look for them.
"""
# ---- node names (also the executable names) ----
VLA_NODE = 'vla_node'
ARM_CONTROLLER_NODE = 'arm_controller'
SIM_NODE = 'sim_node'

# ---- vla_node ----
CAMERA_TOPIC = '/camera/image_raw'                       # sensor_msgs/Image
COMPRESSED_CAMERA_TOPIC = '/camera/image_raw/compressed'  # sensor_msgs/CompressedImage
INSTRUCTION_TOPIC = '/openvla/instruction'               # std_msgs/String
ACTION_TOPIC = '/openvla/action'                         # openvla_ros/EndEffectorDelta
ACTION_TWIST_TOPIC = '/openvla/action_twist'             # geometry_msgs/TwistStamped
VLA_STATUS_TOPIC = '/openvla/status'                     # openvla_ros/VlaStatus (latched)
DEBUG_IMAGE_TOPIC = '~/debug_image'                      # sensor_msgs/Image
DIAGNOSTICS_TOPIC = '/diagnostics'                       # diagnostic_msgs/DiagnosticArray

# ---- arm_controller ----
JOINT_STATES_TOPIC = '/joint_states'                               # sensor_msgs/JointState
JOINT_TRAJECTORY_TOPIC = '/arm_controller/joint_trajectory'        # trajectory_msgs/JointTrajectory
TARGET_POSE_TOPIC = '/arm_controller/target_pose'                  # geometry_msgs/PoseStamped
SERVO_TWIST_TOPIC = '/servo_node/delta_twist_cmds'                 # geometry_msgs/TwistStamped
GRIPPER_WIDTH_TOPIC = '/arm_controller/gripper_width'              # std_msgs/Float64
CONTROLLER_STATUS_TOPIC = '/arm_controller/status'                 # openvla_ros/ControllerStatus
ESTOP_TOPIC = '/arm_controller/estop'                              # std_msgs/Bool (latched)

# ---- sim_node ----
CLOCK_TOPIC = '/clock'                                             # rosgraph_msgs/Clock

# ---- episodes (openvla-collect --graph, teleop recordings, openvla-dataset build) ----
# std_msgs/String markers: "start" when an episode begins; "end success" or "end failure REASON"
# (plain "end": outcome not known) when it ends
EPISODE_TOPIC = '/openvla/episode'

# ---- openvla-bag ----
BAG_PLAYER_NODE = 'openvla_bag_player'      # services ~/toggle_pause, ~/play_next (std_srvs/Trigger)
BAG_RECORDER_NODE = 'openvla_bag_recorder'

# ---- model defaults ----
DEFAULT_UNNORM_KEY = 'bridge_orig'
DEFAULT_EMBODIMENT = 'widowx_250s_bridge'
DEFAULT_SERVER_HOST = '127.0.0.1'
DEFAULT_SERVER_PORT = 8000
MAX_INSTRUCTION_CHARS = 1000   # longer instructions are rejected with a clear error
# in a trained checkpoint: the simulator seeds of its demonstrations (openvla-eval --held-out)
TRAINING_SEEDS_FILE = 'training_seeds.json'

# Topics that stay global in a namespace: the aggregator and the clock are one per graph.
GLOBAL_TOPICS = frozenset({DIAGNOSTICS_TOPIC, CLOCK_TOPIC})


def relative(topic: str) -> str:
    """The name a node creates ``topic`` under: relative (resolved in the node's namespace),
    except for private (``~/``) and :data:`GLOBAL_TOPICS` names."""
    if topic in GLOBAL_TOPICS or not topic.startswith('/'):
        return topic
    return topic[1:]


def in_namespace(topic: str, namespace: str = '', node: str = '') -> str:
    """The absolute name ``topic`` resolves to for a node ``node`` in ``namespace`` (tools that
    talk to a namespaced node set)."""
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    if topic.startswith('~/'):
        return f'{ns}/{node}/{topic[2:]}'
    name = relative(topic)
    return name if name.startswith('/') else f'{ns}/{name}'
