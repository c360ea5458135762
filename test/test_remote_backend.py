"""The remote backend against a server that has only upstream deploy.py's surface.

The stand-in below is written here from that documented surface, not from upstream's code:
only ``POST /act``; the body is a json_numpy object ``{"image": ndarray, "instruction": str,
"unnorm_key": optional}``; the answer is the json_numpy action array, and on any failure the
JSON string ``"error"`` with status 200. Every other route answers 404 (405 for ``GET /act``),
as an HTTP framework does for routes it lacks. Its json_numpy coding is written independently of
the project's codec, so a mistake in one is not mirrored by the other. The model behind it is the
project's engine on the parity checkpoint, so the expected actions are upstream's own.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image as PILImage

from openvla_ros.policy.remote import RemoteBackendError, RemotePolicy

CASE = 1   # parity case: 224 x 224, "put carrot on plate", bridge_orig


def _decode(obj):
    if isinstance(obj, dict) and '__numpy__' in obj:
        raw = base64.b64decode(obj['__numpy__'])
        return np.frombuffer(raw, dtype=np.dtype(obj['dtype'])).reshape(obj['shape'])
    return obj


def _encode(array: np.ndarray) -> dict:
    a = np.ascontiguousarray(array)
    return {'__numpy__': base64.b64encode(a.tobytes()).decode(), 'dtype': a.dtype.str,
            'shape': list(a.shape)}


class PlainActServer:
    """deploy.py's surface on 127.0.0.1, backed by ``policy``; counts the requests per path."""

    def __init__(self, policy):
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):   # quiet test output
                pass

            def _send(self, status: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header('Content-Type', 'application/json')
                self.send_header('Content-Length', str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                outer.requests.append(('GET', self.path))
                self._send(405 if self.path == '/act' else 404, {'detail': 'Not Found'})

            def do_POST(self):
                outer.requests.append(('POST', self.path))
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                if self.path != '/act':
                    self._send(404, {'detail': 'Not Found'})
                    return
                try:
                    payload = json.loads(body, object_hook=_decode)
                    action = policy.predict(np.asarray(payload['image']), payload['instruction'],
                                            payload.get('unnorm_key'))
                    self._send(200, _encode(np.asarray(action.action)))
                except Exception:   # upstream answers every failure like this
                    self._send(200, 'error')

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope='module')
def case(parity_dir):
    c = json.loads((parity_dir / 'expected.json').read_text())['cases'][CASE]
    rgb = np.asarray(PILImage.open(parity_dir / c['image']).convert('RGB'))
    return c, rgb


@pytest.fixture(scope='module')
def plain_server(parity_dir, single_torch_thread):
    from openvla_ros.engine import load_policy

    policy = load_policy(parity_dir / 'checkpoint')
    with PlainActServer(policy) as server:
        yield server
    policy.close()


def test_remote_policy_uses_plain_act_and_gets_upstreams_action(plain_server, case):
    c, rgb = case
    remote = RemotePolicy(plain_server.url, timeout_s=60.0, retries=0)
    assert remote.probe() == {'info': False, 'detailed': False}
    assert remote.model_id == f'remote:{plain_server.url} (plain /act server)'
    result = remote.predict(rgb, c['instruction'], c['unnorm_key'])
    np.testing.assert_array_equal(result.action, c['action'])
    assert result.normalized_action.size == 0 and result.action_token_ids.size == 0  # not reported
    assert result.unnorm_key == c['unnorm_key']
    # the baseline route only, never a route the server does not have, after the probe
    after_probe = plain_server.requests[2:]
    assert after_probe and all(r == ('POST', '/act') for r in after_probe), plain_server.requests
    assert remote.describe()['server_kind'] == 'plain /act server'
    remote.close()


def test_plain_server_error_answer_is_an_error_not_an_action(plain_server, case):
    c, rgb = case
    remote = RemotePolicy(plain_server.url, timeout_s=60.0, retries=0)
    # The parity checkpoint has several statistics sets: no unnorm_key fails on the server.
    with pytest.raises(RemoteBackendError, match='"error"'):
        remote.predict(rgb, c['instruction'], None)
    with pytest.raises(RemoteBackendError, match='does not list'):
        remote.unnorm_keys()
    remote.close()


@pytest.mark.ros
def test_vla_node_remote_backend_against_plain_act_server(plain_server, case, processes, probe):
    from conftest import VlaProbe

    c, rgb = case
    processes.start('openvla_ros.nodes.vla_node', '--ros-args',
                    '-p', 'backend:=remote', '-p', f'server_url:={plain_server.url}',
                    '-p', 'server_timeout_s:=60.0', '-p', f'unnorm_key:={c["unnorm_key"]}',
                    '-p', 'model_id:=openvla-7b', '-p', f'instruction:={c["instruction"]}',
                    '-p', 'max_rate_hz:=5.0', '-p', 'max_image_age_s:=30.0')
    vla = VlaProbe(*probe, rgb)
    assert vla.feed_until(lambda: len(vla.actions) >= 2, 120.0), \
        f'no actions from vla_node:\n{processes.log("vla_node")[-3000:]}'
    for a in vla.actions:
        np.testing.assert_array_equal(np.asarray(a.action), c['action'])
        assert list(a.action_token_ids) == []   # a plain server does not report them
    model = vla.actions[-1].model_id
    # the status names what is really serving: the URL and the kind, the YAML's id as a claim
    assert plain_server.url in model and 'plain /act server' in model, model
    assert any(s.model_id == model for s in vla.statuses)
