"""Remote inference (ROS-free): ``openvla-serve`` (:mod:`.cli`, :mod:`.app`, :mod:`.batching`),
upstream's json_numpy wire format (:mod:`.numpy_json`), the :class:`~.client.RemotePolicy` backend
and a load test (:mod:`.loadtest`). The HTTP API, its error codes and how to scale it are
described in :mod:`.app`.
"""
