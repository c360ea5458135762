"""Honest parameters in every node, checked through the parameter services as rqt_reconfigure
and ``ros2 param`` use them: ListParameters, GetParameters, DescribeParameters, SetParameters.

For every declared parameter of vla_node, arm_controller and sim_node (each a real process):
- it has a value, and one GetParameters call for all of them answers all of them;
- a numeric one has a range in its descriptor;
- a load-time one is ``read_only``, or (vla_node, whose load-time values may change while it is
  unconfigured) a live change of it is refused with the reason while the model is loaded;
- a live change either takes effect (reads back) or is refused with a reason; a change to a
  value outside the declared range is refused.
"""
from __future__ import annotations

import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import DescribeParameters, GetParameters, ListParameters, SetParameters

from openvla_ros import defaults

pytestmark = pytest.mark.ros

STARTUP_TIMEOUT_S = 120.0
# Declared by rclpy itself; use_sim_time is switched by tests of its own (it stops the clock).
SKIP_PREFIXES = ('qos_overrides.', 'use_sim_time', 'start_type_description_service')
NUMERIC = (ParameterType.PARAMETER_INTEGER, ParameterType.PARAMETER_DOUBLE)
_FIELD = {ParameterType.PARAMETER_BOOL: 'bool_value', ParameterType.PARAMETER_INTEGER: 'integer_value',
          ParameterType.PARAMETER_DOUBLE: 'double_value', ParameterType.PARAMETER_STRING: 'string_value',
          ParameterType.PARAMETER_BYTE_ARRAY: 'byte_array_value',
          ParameterType.PARAMETER_BOOL_ARRAY: 'bool_array_value',
          ParameterType.PARAMETER_INTEGER_ARRAY: 'integer_array_value',
          ParameterType.PARAMETER_DOUBLE_ARRAY: 'double_array_value',
          ParameterType.PARAMETER_STRING_ARRAY: 'string_array_value'}


def _args(name: str, tiny_checkpoint) -> list[str]:
    if name == defaults.VLA_NODE:
        return ['--ros-args', '-p', f'model_path:={tiny_checkpoint}']
    if name == defaults.SIM_NODE:
        return ['--ros-args', '-p', 'image_width:=64', '-p', 'image_height:=48']
    return ['--ros-args']


def _load_time(name: str) -> frozenset[str]:
    if name == defaults.VLA_NODE:
        from openvla_ros.nodes import vla_params

        return vla_params.LOAD_TIME
    return frozenset()   # the other nodes say so with read_only in their descriptors


def _value(v: ParameterValue):
    field = _FIELD.get(v.type)
    return None if field is None else getattr(v, field)


def _other_value(v: ParameterValue, descriptor) -> ParameterValue | None:
    """A different value inside the declared range (None: no generic candidate)."""
    out = ParameterValue(type=v.type)
    if v.type == ParameterType.PARAMETER_BOOL:
        out.bool_value = not v.bool_value
    elif v.type == ParameterType.PARAMETER_DOUBLE and descriptor.floating_point_range:
        r = descriptor.floating_point_range[0]
        out.double_value = (r.from_value + r.to_value) / 2 if v.double_value != (r.from_value + r.to_value) / 2 \
            else r.from_value
    elif v.type == ParameterType.PARAMETER_INTEGER and descriptor.integer_range:
        r = descriptor.integer_range[0]
        out.integer_value = r.to_value if v.integer_value != r.to_value else r.from_value
    else:
        return None
    return out


def _out_of_range(v: ParameterValue, descriptor) -> ParameterValue | None:
    out = ParameterValue(type=v.type)
    if v.type == ParameterType.PARAMETER_DOUBLE and descriptor.floating_point_range:
        out.double_value = descriptor.floating_point_range[0].to_value + 1.0
    elif v.type == ParameterType.PARAMETER_INTEGER and descriptor.integer_range:
        out.integer_value = descriptor.integer_range[0].to_value + 1
    else:
        return None
    return out


@pytest.mark.parametrize('name', [defaults.VLA_NODE, defaults.ARM_CONTROLLER_NODE, defaults.SIM_NODE])
def test_every_parameter_is_honest(name, processes, ros_context, tiny_checkpoint):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from conftest import spin_until

    module = {defaults.VLA_NODE: 'vla_node', defaults.ARM_CONTROLLER_NODE: 'arm_controller',
              defaults.SIM_NODE: 'sim_node'}[name]
    processes.start(f'openvla_ros.nodes.{module}', *_args(name, tiny_checkpoint), name=name)
    node = rclpy.create_node('parameter_probe', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    clients = {srv: node.create_client(srv, f'/{name}/{path}') for srv, path in (
        (ListParameters, 'list_parameters'), (GetParameters, 'get_parameters'),
        (DescribeParameters, 'describe_parameters'), (SetParameters, 'set_parameters'))}

    def call(srv, request):
        future = clients[srv].call_async(request)
        assert spin_until(executor, future.done, 30.0), f'{name}: {srv.__name__} did not answer'
        return future.result()

    try:
        up = spin_until(executor, lambda: all(c.service_is_ready() for c in clients.values()),
                        STARTUP_TIMEOUT_S)
        assert up, processes.log(name)[-2000:]
        if name == defaults.VLA_NODE:   # load-time checks need the model loaded
            from lifecycle_msgs.srv import GetState

            state = node.create_client(GetState, f'/{name}/get_state')
            assert spin_until(executor, state.service_is_ready, 30.0)

            def active() -> bool:
                f = state.call_async(GetState.Request())
                spin_until(executor, f.done, 10.0)
                return f.result() is not None and f.result().current_state.label == 'active'
            assert spin_until(executor, active, STARTUP_TIMEOUT_S, step_s=0.5), processes.log(name)[-2000:]

        names = sorted(n for n in call(ListParameters, ListParameters.Request()).result.names
                       if not n.startswith(SKIP_PREFIXES))
        assert names
        values = call(GetParameters, GetParameters.Request(names=names)).values
        descriptors = call(DescribeParameters, DescribeParameters.Request(names=names)).descriptors
        problems = []
        if len(values) != len(names):
            problems.append(f'GetParameters answered {len(values)} values for {len(names)} names')
        if len(descriptors) != len(names):
            problems.append(f'DescribeParameters answered {len(descriptors)} for {len(names)} names')
        load_time = _load_time(name)
        for pname, value, desc in zip(names, values, descriptors):
            if value.type == ParameterType.PARAMETER_NOT_SET:
                problems.append(f'{pname}: no value')
                continue
            if value.type in NUMERIC and not (desc.integer_range or desc.floating_point_range):
                problems.append(f'{pname}: numeric without a range')
            if not desc.description:
                problems.append(f'{pname}: no description')
            candidate = _other_value(value, desc) or value   # same value: still must answer honestly
            result = call(SetParameters, SetParameters.Request(
                parameters=[ParameterMsg(name=pname, value=candidate)])).results[0]
            if desc.read_only and result.successful:
                problems.append(f'{pname}: read_only but a set succeeded')
            if pname in load_time and not desc.read_only and result.successful:
                problems.append(f'{pname}: load-time, model loaded, but a live set succeeded')
            if not result.successful and not result.reason:
                problems.append(f'{pname}: refused without a reason')
            if result.successful:
                back = call(GetParameters, GetParameters.Request(names=[pname])).values
                if not back or _value(back[0]) != _value(candidate):
                    problems.append(f'{pname}: set succeeded but reads back {back and _value(back[0])!r}')
                call(SetParameters, SetParameters.Request(parameters=[ParameterMsg(name=pname, value=value)]))
            bad = _out_of_range(value, desc)
            if bad is not None and not desc.read_only:
                r = call(SetParameters, SetParameters.Request(
                    parameters=[ParameterMsg(name=pname, value=bad)])).results[0]
                if r.successful:
                    problems.append(f'{pname}: a value outside its range was accepted')
                    call(SetParameters, SetParameters.Request(parameters=[ParameterMsg(name=pname, value=value)]))
        assert not problems, f'{name}:\n' + '\n'.join(problems)
    finally:
        executor.shutdown()
        node.destroy_node()
