"""openvla-serve over real HTTP on 127.0.0.1: upstream wire compatibility, batching, errors.

One server process (the parity checkpoint, float32 CPU) serves every test of this module; its
answers are compared with upstream's reference actions and with the engine loaded in-process.
"""
from __future__ import annotations

import base64
import contextlib
import json
import threading

import numpy as np
import pytest
import requests
from PIL import Image

from openvla_ros import defaults
from openvla_ros.engine import InvalidInstructionError, PolicyOptions, UnknownUnnormKeyError, load_policy
from openvla_ros.server.client import RemoteBackendError, RemotePolicy
from openvla_ros.server.process import ServerProcess, free_port

MAX_BODY_MB = 5
MAX_IMAGE_PIXELS = 1_000_000
KEY = 'bridge_orig'


@pytest.fixture(scope='module')
def checkpoint(parity_dir):
    return parity_dir / 'checkpoint'


@pytest.fixture(scope='module')
def server(checkpoint, tmp_path_factory):
    proc = ServerProcess(checkpoint, '--max-batch', '4', '--queue-size', '16', '--cpu-threads', '1',
                         '--max-body-mb', str(MAX_BODY_MB), '--max-image-pixels', str(MAX_IMAGE_PIXELS),
                         log_path=tmp_path_factory.mktemp('server') / 'server.log')
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.log()[-2000:]


@pytest.fixture(scope='module')
def engine(checkpoint, single_torch_thread):
    policy = load_policy(checkpoint, PolicyOptions())
    yield policy
    policy.close()


@pytest.fixture(scope='module')
def parity_cases(parity_dir):
    expected = json.loads((parity_dir / 'expected.json').read_text())['cases']
    return [(np.asarray(Image.open(parity_dir / 'images' / f'case_{i:02d}.png').convert('RGB')), c)
            for i, c in enumerate(expected)]


@contextlib.contextmanager
def upstream_json():
    """``json_numpy.patch()`` as upstream's client does, undone afterwards (it is process-wide)."""
    saved = (json.dumps, json.loads, json.dump, json.load)
    import json_numpy

    json_numpy.patch()
    try:
        yield
    finally:
        json.dumps, json.loads, json.dump, json.load = saved


def _hand_encoded(image: np.ndarray) -> dict:
    """The json_numpy object built without json_numpy (what a client in another language sends)."""
    return {'__numpy__': base64.b64encode(image.tobytes()).decode(), 'dtype': '|u1',
            'shape': list(image.shape)}


def _healthy(server) -> bool:
    r = requests.get(server.url + '/healthz', timeout=5)
    return r.status_code == 200 and r.json()['status'] == 'ok'


def test_upstream_client_gets_upstream_reference_actions(server, parity_cases, engine):
    local = [engine.predict(image, c['instruction'], c['unnorm_key']).action for image, c in parity_cases]
    answers = []
    with upstream_json():  # the client exactly as deploy.py's docstring shows it
        for image, case in parity_cases:
            answers.append(requests.post(server.url + '/act', json={
                'image': image, 'instruction': case['instruction'], 'unnorm_key': case['unnorm_key']},
                timeout=30).json())
    for answer, (_, case), mine in zip(answers, parity_cases, local):
        assert isinstance(answer, np.ndarray) and answer.dtype == np.float64
        np.testing.assert_array_equal(answer, np.asarray(case['action'], dtype=np.float64))
        np.testing.assert_array_equal(answer, mine)


def test_double_encoded_form_without_json_numpy(server, parity_cases):
    import json_numpy  # only to build upstream's exact answer text for comparison

    for image, case in parity_cases[:3]:
        inner = {'image': _hand_encoded(image), 'instruction': case['instruction'],
                 'unnorm_key': case['unnorm_key']}
        r = requests.post(server.url + '/act', json={'encoded': json.dumps(inner)}, timeout=30)
        assert r.status_code == 200
        text = r.json()
        assert isinstance(text, str)
        obj = json.loads(text)
        assert obj['dtype'] == '<f8' and obj['shape'] == [len(case['action'])]
        action = np.frombuffer(base64.b64decode(obj['__numpy__']), dtype='<f8')
        np.testing.assert_array_equal(action, case['action'])
        # Byte-for-byte what deploy.py sends: JSONResponse(json_numpy.dumps(action)).
        assert r.content == json.dumps(json_numpy.dumps(action), ensure_ascii=False,
                                       separators=(',', ':')).encode()


def test_plain_answer_is_byte_identical_to_upstream(server, parity_cases):
    import json_numpy

    image, case = parity_cases[1]
    body = {'image': _hand_encoded(image), 'instruction': case['instruction'], 'unnorm_key': KEY}
    r = requests.post(server.url + '/act', json=body, timeout=30)
    action = np.frombuffer(base64.b64decode(r.json()['__numpy__']), dtype='<f8')
    assert r.headers['content-type'] == 'application/json'
    assert r.content == json.dumps(json_numpy.default(action), ensure_ascii=False,
                                   separators=(',', ':')).encode()


def test_detailed_answer_matches_engine(server, parity_cases, engine):
    image, case = parity_cases[0]
    r = requests.post(server.url + '/act/detailed', json={
        'image': _hand_encoded(image), 'instruction': case['instruction'],
        'unnorm_key': 'fixture_no_mask'}, timeout=30)
    assert r.status_code == 200, r.text
    d = r.json()
    local = engine.predict(image, case['instruction'], 'fixture_no_mask')
    assert d['action'] == local.action.tolist() and len(d['action']) == 8
    assert d['normalized_action'] == local.normalized_action.tolist()
    assert d['action_token_ids'] == local.action_token_ids.tolist()
    assert d['unnorm_key'] == 'fixture_no_mask'
    assert d['batch_size'] >= 1
    for key in ('queue_wait', 'inference', 'server_total', 'batch_size'):
        assert key in d['timings'], d['timings']
    assert d['timings']['server_total'] >= d['timings']['inference'] > 0


def test_info_and_health(server, engine):
    info = requests.get(server.url + '/info', timeout=5).json()
    assert info['unnorm_keys'] == engine.unnorm_keys()
    assert info['dtype'] == 'float32' and info['device'] == 'cpu' and info['quantization'] == 'none'
    assert info['max_batch'] == 4 and info['queue_size'] == 16
    assert info['limits']['max_body_bytes'] == MAX_BODY_MB * 2 ** 20
    assert info['limits']['max_image_pixels'] == MAX_IMAGE_PIXELS
    assert info['limits']['max_instruction_chars'] == defaults.MAX_INSTRUCTION_CHARS
    assert info['prompt_template'] == 'openvla' and info['image_pipeline'] == 'processor'
    health = requests.get(server.url + '/healthz', timeout=5).json()
    assert health['status'] == 'ok' and health['model_loaded'] is True
    assert health['queue_depth'] == 0


def test_concurrent_clients_get_their_own_answers_and_batches_equal_singles(server, engine):
    rng = np.random.default_rng(7)
    n = 8
    images = [rng.integers(0, 256, (96 + 8 * i, 128, 3), dtype=np.uint8) for i in range(n)]
    instructions = [f'put the object {i} in the bowl' for i in range(n)]
    expected = [engine.predict(img, text, KEY) for img, text in zip(images, instructions)]
    # The check is only meaningful if the answers differ between requests.
    assert len({tuple(e.action_token_ids) for e in expected}) > 1

    seen_batch_sizes = set()
    for _round in range(5):
        answers: list = [None] * n
        barrier = threading.Barrier(n)

        def client(i: int) -> None:
            body = {'image': _hand_encoded(images[i]), 'instruction': instructions[i], 'unnorm_key': KEY}
            barrier.wait()
            answers[i] = requests.post(server.url + '/act/detailed', json=body, timeout=60)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for i, r in enumerate(answers):
            assert r.status_code == 200, r.text
            d = r.json()
            assert d['action_token_ids'] == expected[i].action_token_ids.tolist(), i
            assert d['action'] == expected[i].action.tolist(), i
            seen_batch_sizes.add(d['batch_size'])
        if max(seen_batch_sizes) > 1:
            break
    assert max(seen_batch_sizes) > 1, f'no request was batched: {seen_batch_sizes}'


def _image_obj(shape, dtype='|u1') -> dict:
    data = np.zeros(shape, dtype=np.dtype(dtype))
    return {'__numpy__': base64.b64encode(data.tobytes()).decode(), 'dtype': dtype,
            'shape': list(shape)}


BAD_REQUESTS = {
    'not json': (400, b'{"image": [1, 2', None),
    'not an object': (400, b'[1, 2, 3]', None),
    'missing instruction': (400, {'image': _image_obj((8, 8, 3))}, 'instruction'),
    'missing image': (400, {'instruction': 'pick'}, 'image'),
    'unknown field': (400, {'image': _image_obj((8, 8, 3)), 'instruction': 'x', 'foo': 1}, 'foo'),
    'image as nested list': (400, {'image': [[[0, 0, 0]]], 'instruction': 'x'}, 'json_numpy'),
    'float32 image': (400, {'image': _image_obj((8, 8, 3), '<f4'), 'instruction': 'x'}, "'<f4'"),
    'grayscale image': (400, {'image': _image_obj((8, 8)), 'instruction': 'x'}, 'shape'),
    'rgba image': (400, {'image': _image_obj((8, 8, 4)), 'instruction': 'x'}, 'shape'),
    'empty image': (400, {'image': _image_obj((0, 8, 3)), 'instruction': 'x'}, 'shape'),
    'short data': (400, {'image': {**_image_obj((4, 4, 3)), 'shape': [8, 8, 3]}, 'instruction': 'x'},
                   'bytes'),
    'bad base64': (400, {'image': {**_image_obj((4, 4, 3)), '__numpy__': '!!!!'}, 'instruction': 'x'},
                   'base64'),
    'instruction not text': (400, {'image': _image_obj((8, 8, 3)), 'instruction': 5}, 'string'),
    'empty instruction': (400, {'image': _image_obj((8, 8, 3)), 'instruction': '  '}, 'empty'),
    'long instruction': (400, {'image': _image_obj((8, 8, 3)),
                               'instruction': 'a' * (defaults.MAX_INSTRUCTION_CHARS + 1)}, 'limit'),
    'encoded not a string': (400, {'encoded': {'image': 1}}, 'encoded'),
    'encoded not json': (400, {'encoded': '{nope'}, 'JSON'),
    'encoded plus fields': (400, {'encoded': '{}', 'instruction': 'x'}, 'encoded'),
    'unknown unnorm_key': (422, {'image': _image_obj((8, 8, 3)), 'instruction': 'x',
                                 'unnorm_key': 'nope'}, 'bridge_orig, fixture_all_masked, fixture_no_mask'),
    'no unnorm_key, several in model': (422, {'image': _image_obj((8, 8, 3)), 'instruction': 'x'},
                                        'bridge_orig, fixture_all_masked, fixture_no_mask'),
    # Refused from the declared shape, before any of the data is decoded.
    'image over pixel limit': (413, {'image': {**_image_obj((4, 4, 3)), 'shape': [1000, 1001, 3]},
                                     'instruction': 'x'}, 'pixels'),
}


@pytest.mark.parametrize('case', sorted(BAD_REQUESTS))
def test_bad_requests_get_clear_errors_and_server_stays_up(server, case):
    status, body, needle = BAD_REQUESTS[case]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    for path in ('/act', '/act/detailed'):
        r = requests.post(server.url + path, data=data, timeout=30,
                          headers={'Content-Type': 'application/json'})
        assert r.status_code == status, (path, r.text)
        err = r.json()
        assert set(err) == {'detail', 'error'}
        assert 'Traceback' not in err['detail']
        if needle:
            assert needle in err['detail'], err
    assert _healthy(server)


def test_oversized_bodies_get_413(server):
    limit = MAX_BODY_MB * 2 ** 20
    r = requests.post(server.url + '/act', data=b' ' * (limit + 1), timeout=30,
                      headers={'Content-Type': 'application/json'})
    assert r.status_code == 413 and 'limit' in r.json()['detail']

    def chunks():  # chunked transfer: no Content-Length, so the body itself must be counted
        for _ in range(MAX_BODY_MB + 1):
            yield b' ' * 2 ** 20

    r = requests.post(server.url + '/act', data=chunks(), timeout=30)
    assert r.status_code == 413
    assert _healthy(server)


def test_unknown_paths_and_methods(server):
    assert requests.get(server.url + '/act', timeout=5).status_code == 405
    assert requests.get(server.url + '/docs', timeout=5).status_code == 404


def test_remote_policy_matches_engine(server, parity_cases, engine):
    with RemotePolicy(server.url, timeout_s=30.0) as remote:
        assert remote.unnorm_keys() == engine.unnorm_keys()
        assert remote.model_id == engine.model_id
        assert remote.describe()['dtype'] == 'float32'
        for image, case in parity_cases[:4]:
            result = remote.predict(image, case['instruction'], case['unnorm_key'])
            local = engine.predict(image, case['instruction'], case['unnorm_key'])
            np.testing.assert_array_equal(result.action, local.action)
            np.testing.assert_array_equal(result.normalized_action, local.normalized_action)
            np.testing.assert_array_equal(result.action_token_ids, local.action_token_ids)
            assert result.unnorm_key == case['unnorm_key']
            assert result.timings['total'] >= result.timings['server_total'] > 0
            assert 'queue_wait' in result.timings
        batch = remote.predict_batch([c[0] for c in parity_cases[:2]],
                                     [c[1]['instruction'] for c in parity_cases[:2]], [KEY, KEY])
        assert [r.action.tolist() for r in batch] == [
            engine.predict(c[0], c[1]['instruction'], KEY).action.tolist() for c in parity_cases[:2]]
        with pytest.raises(UnknownUnnormKeyError, match='fixture_no_mask'):
            remote.predict(parity_cases[0][0], 'pick', 'nope')
        with pytest.raises(InvalidInstructionError):
            remote.predict(parity_cases[0][0], '', KEY)


def test_remote_policy_against_no_server_raises_and_never_returns_an_action():
    url = f'http://127.0.0.1:{free_port()}'
    remote = RemotePolicy(url, timeout_s=1.0, retries=2, backoff_s=0.01)
    assert remote.model_id == f'remote:{url}'   # no exception: a node may start before the server
    with pytest.raises(RemoteBackendError, match=r'unavailable.*3 attempt'):
        remote.predict(np.zeros((8, 8, 3), np.uint8), 'pick', KEY)
    with pytest.raises(RemoteBackendError):
        remote.unnorm_keys()
    remote.close()


def test_worker_batches_waiting_requests_and_isolates_a_failing_one(engine, parity_cases):
    """The worker alone, on the real engine: requests queued together run as one batch; when one
    of them fails inside the engine, the others still get their own answers."""
    from concurrent.futures import wait

    from openvla_ros.server.batching import InferenceWorker, QueueFullError

    cases = parity_cases[:3]
    worker = InferenceWorker(engine, max_batch=4, queue_size=3)
    try:
        good = [worker.submit(img, c['instruction'], c['unnorm_key']) for img, c in cases]
        with pytest.raises(QueueFullError, match='busy'):
            worker.submit(cases[0][0], 'pick', KEY)
        worker.start()   # all three are waiting: one batch
        wait(good, timeout=60)
        for fut, (img, c) in zip(good, cases):
            served = fut.result()
            assert served.batch_size == 3
            np.testing.assert_array_equal(served.result.action, c['action'])
    finally:
        worker.stop()

    worker = InferenceWorker(engine, max_batch=4, queue_size=3)
    try:
        mixed = [worker.submit(cases[0][0], cases[0][1]['instruction'], KEY),
                 worker.submit(cases[1][0], 'pick', 'not_a_key'),   # fails inside the engine
                 worker.submit(cases[1][0], cases[1][1]['instruction'], KEY)]
        worker.start()
        wait(mixed, timeout=60)
        np.testing.assert_array_equal(mixed[0].result().result.action, cases[0][1]['action'])
        with pytest.raises(UnknownUnnormKeyError):
            mixed[1].result()
        np.testing.assert_array_equal(mixed[2].result().result.action, cases[1][1]['action'])
        assert mixed[0].result().batch_size == 1   # served one by one after the batch failed
    finally:
        worker.stop()
