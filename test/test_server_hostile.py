"""openvla-serve against hostile clients: malformed bodies that used to end in 500 + traceback,
and clients that hold connections open (slow or partial headers, idle keep-alive, a stalled
body). Every connection here is to 127.0.0.1, and their number is bounded.
"""
from __future__ import annotations

import base64
import json
import socket
import time

import numpy as np
import pytest
import requests

from openvla_ros.server.process import ServerProcess

HEADER_TIMEOUT_S = 1.0
KEEP_ALIVE_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 3.0
CLOSE_MARGIN_S = 20.0      # generous: a loaded 2-core machine may be slow to run the timer
SLOW_CLIENTS = 4           # of each kind


@pytest.fixture(scope='module')
def server(parity_dir, tmp_path_factory):
    proc = ServerProcess(parity_dir / 'checkpoint', '--cpu-threads', '1', '--max-batch', '1',
                         '--unnorm-key-default', 'bridge_orig',
                         '--header-timeout-s', str(HEADER_TIMEOUT_S),
                         '--keep-alive-timeout-s', str(KEEP_ALIVE_TIMEOUT_S),
                         '--request-timeout-s', str(REQUEST_TIMEOUT_S),
                         log_path=tmp_path_factory.mktemp('hostile') / 'server.log')
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()[-2000:]


def _image_obj() -> dict:
    data = np.zeros((8, 8, 3), np.uint8)
    return {'__numpy__': base64.b64encode(data.tobytes()).decode(), 'dtype': '|u1', 'shape': [8, 8, 3]}


def _post(server, body: bytes, path: str = '/act') -> requests.Response:
    return requests.post(server.url + path, data=body, timeout=60,
                         headers={'Content-Type': 'application/json'})


def _assert_clean_400(r: requests.Response, needle: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()
    assert set(err) == {'detail', 'error'} and 'Traceback' not in err['detail']
    assert needle in err['detail'], err


IMAGE_JSON = json.dumps(_image_obj())
DEPTH = 100_000
MALFORMED = {
    # json.dumps would escape the surrogate the same way; written out to show the bytes sent
    'lone surrogate instruction': ('{"image": %s, "instruction": "pick \\ud800 up"}' % IMAGE_JSON, 'Unicode'),
    'lone low surrogate instruction': ('{"image": %s, "instruction": "\\udfff"}' % IMAGE_JSON, 'Unicode'),
    'lone surrogate unnorm_key': ('{"image": %s, "instruction": "pick", "unnorm_key": "\\ud83d"}' % IMAGE_JSON,
                                  'Unicode'),
    'lone surrogate field name': ('{"image": %s, "instruction": "pick", "\\ud800": 1}' % IMAGE_JSON, 'Unicode'),
    'nested 10^5 deep array': ('[' * DEPTH + ']' * DEPTH, 'deep'),
    'nested 10^5 deep in a field': ('{"image": %s, "instruction": %s}' % (IMAGE_JSON, '[' * DEPTH + ']' * DEPTH),
                                    'deep'),
    'nested 10^5 deep objects': ('{"a":' * DEPTH + '1' + '}' * DEPTH, 'deep'),
}


@pytest.mark.parametrize('case', sorted(MALFORMED))
def test_malformed_bodies_get_400_not_500(server, case):
    text, needle = MALFORMED[case]
    for path in ('/act', '/act/detailed'):
        _assert_clean_400(_post(server, text.encode('ascii'), path), needle)
    # the same inside the double-encoded form
    _assert_clean_400(_post(server, json.dumps({'encoded': text}).encode('ascii')), needle)
    assert 'Traceback' not in server.log()
    assert requests.get(server.url + '/healthz', timeout=10).status_code == 200


def _closed_within(sock: socket.socket, limit_s: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``limit_s``."""
    sock.settimeout(limit_s)
    try:
        while sock.recv(4096):
            pass   # an answer before the close is fine; only the close is asserted
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def _connect(server) -> socket.socket:
    return socket.create_connection(('127.0.0.1', server.port), timeout=10)


def test_slow_and_idle_clients_are_disconnected(server):
    socks = []
    try:
        for _ in range(SLOW_CLIENTS):
            socks.append(('connects and sends nothing', _connect(server)))
        for _ in range(SLOW_CLIENTS):
            s = _connect(server)
            s.sendall(b'POST /act HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl')
            socks.append(('partial headers', s))
        for _ in range(SLOW_CLIENTS):
            s = _connect(server)
            s.sendall(b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n')
            socks.append(('idle after a keep-alive answer', s))
        # one byte at a time, each well within the header timeout: only the total bounds it
        dribbler = _connect(server)
        request = b'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ' + b'a' * 200
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                dribbler.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(HEADER_TIMEOUT_S / 10)
            if time.monotonic() - started > HEADER_TIMEOUT_S + CLOSE_MARGIN_S:
                break
        assert closed or _closed_within(dribbler, CLOSE_MARGIN_S), 'a header dribbler kept its connection'
        dribbler.close()
        for what, s in socks:
            assert _closed_within(s, HEADER_TIMEOUT_S + KEEP_ALIVE_TIMEOUT_S + CLOSE_MARGIN_S), \
                f'the server kept a connection that {what}'
    finally:
        for _, s in socks:
            s.close()
    assert requests.get(server.url + '/healthz', timeout=10).status_code == 200


def test_stalled_body_gets_408_and_the_connection_is_freed(server):
    with _connect(server) as s:
        s.sendall(b'POST /act HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                  b'Content-Length: 1000\r\n\r\n{"image": ')
        s.settimeout(REQUEST_TIMEOUT_S + CLOSE_MARGIN_S)
        answer = b''
        while b'\r\n\r\n' not in answer:
            chunk = s.recv(4096)
            assert chunk, f'closed without an answer: {answer!r}'
            answer += chunk
        assert answer.startswith(b'HTTP/1.1 408'), answer
    assert requests.get(server.url + '/healthz', timeout=10).status_code == 200


def test_info_lists_the_connection_limits(server):
    limits = requests.get(server.url + '/info', timeout=10).json()['limits']
    assert limits['header_timeout_s'] == HEADER_TIMEOUT_S
    assert limits['keep_alive_timeout_s'] == KEEP_ALIVE_TIMEOUT_S
