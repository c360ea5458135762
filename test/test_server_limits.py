"""openvla-serve under pressure and with a token: 401, 503 (queue full), 504 (timeout), no token
in the log, and no non-loopback bind without a token.

The server here is made slow on purpose (``--extra-latency-s``, the engine's test hook) so queue
and timeout behaviour is deterministic: every prediction takes longer than the request timeout.
"""
from __future__ import annotations

import base64
import secrets
import threading
import time

import numpy as np
import pytest
import requests

from openvla_ros import runtime_env
from openvla_ros.server import cli
from openvla_ros.server.client import RemoteBackendError, RemotePolicy
from openvla_ros.server.process import ServerProcess

EXTRA_LATENCY_S = 2.0
REQUEST_TIMEOUT_S = 0.8
TOKEN = 'tok-' + secrets.token_hex(16)


@pytest.fixture(scope='module')
def slow_server(parity_dir, tmp_path_factory):
    env = runtime_env.loopback_env()
    env[cli.TOKEN_ENV] = TOKEN
    proc = ServerProcess(parity_dir / 'checkpoint', '--extra-latency-s', str(EXTRA_LATENCY_S),
                         '--request-timeout-s', str(REQUEST_TIMEOUT_S), '--queue-size', '1',
                         '--max-batch', '1', '--unnorm-key-default', 'bridge_orig', '--cpu-threads', '1',
                         log_path=tmp_path_factory.mktemp('slow') / 'server.log', env=env)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()[-2000:]


def _body() -> dict:
    image = np.full((32, 32, 3), 90, np.uint8)
    return {'image': {'__numpy__': base64.b64encode(image.tobytes()).decode(), 'dtype': '|u1',
                      'shape': [32, 32, 3]}, 'instruction': 'pick up the spoon'}


def _auth(token: str) -> dict:
    return {'Authorization': f'Bearer {token}'}


def _wait_health(server, predicate, timeout_s: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        h = requests.get(server.url + '/healthz', timeout=5).json()
        if predicate(h):
            return h
        time.sleep(0.02)
    raise AssertionError(f'health never matched: {h}')


def test_token_is_required_on_model_endpoints(slow_server):
    url = slow_server.url
    assert requests.get(url + '/healthz', timeout=5).status_code == 200   # for load balancers
    for headers in ({}, _auth('wrong'), _auth(TOKEN + 'x'), {'Authorization': TOKEN}):
        for method, path in (('GET', '/info'), ('POST', '/act'), ('POST', '/act/detailed')):
            r = requests.request(method, url + path, json=_body(), headers=headers, timeout=5)
            assert r.status_code == 401, (path, headers, r.text)
            assert r.headers['www-authenticate'] == 'Bearer'
            assert 'token' in r.json()['detail']
    info = requests.get(url + '/info', headers=_auth(TOKEN), timeout=5).json()
    assert info['auth_required'] is True and info['unnorm_key_default'] == 'bridge_orig'
    assert TOKEN not in str(info)


def test_slow_prediction_gets_504_and_full_queue_gets_503(slow_server):
    url = slow_server.url
    _wait_health(slow_server, lambda h: not h['busy'] and h['queue_depth'] == 0)
    answers = {}

    def post(name: str) -> None:
        answers[name] = requests.post(url + '/act', json=_body(), headers=_auth(TOKEN), timeout=30)

    first = threading.Thread(target=post, args=('first',))
    first.start()
    _wait_health(slow_server, lambda h: h['busy'])            # the worker is on the first one
    second = threading.Thread(target=post, args=('second',))
    second.start()
    _wait_health(slow_server, lambda h: h['queue_depth'] == 1)  # the second one waits
    started = time.monotonic()
    third = requests.post(url + '/act', json=_body(), headers=_auth(TOKEN), timeout=30)
    assert third.status_code == 503, third.text
    assert time.monotonic() - started < EXTRA_LATENCY_S       # refused at once, not queued
    assert 'busy' in third.json()['detail'] and third.headers['retry-after'] == '1'
    first.join()
    second.join()
    for name in ('first', 'second'):
        r = answers[name]
        assert r.status_code == 504, (name, r.text)
        assert f'{REQUEST_TIMEOUT_S:g} s' in r.json()['detail']
    # The second request was cancelled while queued: once the first finishes the worker is idle.
    h = _wait_health(slow_server, lambda h: not h['busy'] and h['queue_depth'] == 0)
    assert h['status'] == 'ok'


def test_remote_policy_with_token_retries_then_reports_the_server_busy(slow_server):
    with RemotePolicy(slow_server.url, token=TOKEN, timeout_s=10.0, retries=1, backoff_s=0.05) as remote:
        assert remote.unnorm_keys()['bridge_orig'] == 7
        assert TOKEN not in repr(remote)
        started = time.monotonic()
        with pytest.raises(RemoteBackendError, match=r'unavailable: HTTP 504.*2 attempt'):
            remote.predict(np.zeros((32, 32, 3), np.uint8), 'pick up the spoon')
        assert time.monotonic() - started < 4 * REQUEST_TIMEOUT_S + EXTRA_LATENCY_S
    with RemotePolicy(slow_server.url, retries=0) as anonymous:
        with pytest.raises(RemoteBackendError, match='unauthorized'):
            anonymous.unnorm_keys()
    _wait_health(slow_server, lambda h: h['status'] == 'ok')


def test_log_never_contains_the_token(slow_server):
    # Runs last in this module: by now the log holds accepted, refused and timed-out requests.
    requests.get(slow_server.url + '/info', headers=_auth(TOKEN), timeout=5)
    requests.get(slow_server.url + '/info', headers=_auth(TOKEN[:-1]), timeout=5)
    log = slow_server.log()
    assert '/info' in log and '401' in log and '504' in log   # the log does record requests
    assert TOKEN not in log and TOKEN[:-1] not in log


def test_refuses_non_loopback_bind_without_token(monkeypatch, capsys, parity_dir):
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    code = cli.main(['--checkpoint', str(parity_dir / 'checkpoint'), '--host', '0.0.0.0',
                     '--port', '1'])
    assert code == 2
    assert 'refusing to bind to 0.0.0.0 without a token' in capsys.readouterr().err


def test_loopback_names():
    assert cli.is_loopback('127.0.0.1') and cli.is_loopback('::1') and cli.is_loopback('localhost')
    assert not cli.is_loopback('0.0.0.0') and not cli.is_loopback('192.168.1.5')
    assert not cli.is_loopback('example.org')


def test_token_file(tmp_path, monkeypatch):
    f = tmp_path / 'token'
    f.write_text(f'  {TOKEN}\n')
    monkeypatch.setenv(cli.TOKEN_ENV, 'from-env')
    assert cli.read_token(f) == TOKEN           # the file wins over the environment
    assert cli.read_token(None) == 'from-env'
    f.write_text('\n')
    with pytest.raises(ValueError, match='empty'):
        cli.read_token(f)
