"""The policy layer: what nodes, the server, the bag tools and the CLIs use to run a model.

- the Policy interface, its options and errors (defined with the engine, :mod:`openvla_ros.engine.api`);
- :mod:`.options`: those options as command-line flags and parameter specs, from one definition;
- :mod:`.remote`: :class:`~.remote.RemotePolicy`, the same interface over HTTP;
- :mod:`.numpy_json`: upstream's json_numpy wire format.

Layers import downwards only: ``defaults``/``action_layout`` < ``engine``/``control`` < ``policy``
< ``server``/``bag``/``nodes``/``sim``/``evaluation``/``learning`` < ``cli``
(``test/test_import_layers.py`` checks it).
"""
from openvla_ros.engine.api import (OpenVLAError, Policy, PolicyOptions,  # noqa: F401
                                    PredictionResult)
