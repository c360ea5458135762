"""``RemotePolicy``: the :class:`~openvla_ros.engine.api.Policy` interface over HTTP.

Works with any OpenVLA server. The baseline is what upstream's ``vla-scripts/deploy.py`` serves:
``POST /act`` with a json_numpy body ``{"image", "instruction", "unnorm_key"?}``, answered by the
json_numpy action array, or by the JSON string ``"error"`` (status 200) when anything failed.
``openvla-serve`` adds ``GET /info`` (model id, unnorm keys, limits) and ``POST /act/detailed``
(normalized action, tokens, timings); :meth:`RemotePolicy.probe` finds out which of these the
server has, and the client uses them only when present. Against a plain ``/act`` server a
prediction carries the action alone (no normalized action, no token ids).

Every ``predict`` is a fresh request: when the server cannot answer, :class:`RemoteBackendError`
is raised and no earlier action is ever returned in its place.

Retries (``retries`` times, pausing ``backoff_s``, then twice as long, ...) happen only where
repeating cannot hurt: the connection failed (nothing reached the server) or the server said it
is busy (503) or too slow (504). A request that reached the server but got no answer within
``timeout_s`` is not repeated: by the time a second try answered, the image would be old.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import requests

from openvla_ros.engine.api import (InvalidImageError, InvalidInstructionError,
                                    InvalidModelOutputError, OpenVLAError, PredictionResult,
                                    UnknownUnnormKeyError)
from openvla_ros.engine.prompt import validate_instruction
from openvla_ros.policy import numpy_json
from openvla_ros.policy.options import RemoteOptions

_DEFAULTS = RemoteOptions()

RETRY_STATUSES = (503, 504)
ACT_PATH, ACT_DETAILED_PATH, INFO_PATH = '/act', '/act/detailed', '/info'
_ABSENT = (404, 405)   # what an HTTP framework answers for a route it does not have


class RemoteBackendError(OpenVLAError):
    """The inference server is unreachable, refused the request or answered something unusable."""


# The server names the error class in every error answer; these are raised as themselves.
_ERRORS_BY_NAME: dict[str, type[OpenVLAError]] = {
    cls.__name__: cls for cls in (InvalidImageError, InvalidInstructionError,
                                  UnknownUnnormKeyError, InvalidModelOutputError)
}


class RemotePolicy:
    """A policy served at ``server_url`` (e.g. ``http://127.0.0.1:8000``).

    The constructor does not contact the server, so a robot stack may start before it; the
    server's routes are probed on first use (or by :meth:`probe`)."""

    def __init__(self, server_url: str = _DEFAULTS.server_url, timeout_s: float = _DEFAULTS.timeout_s,
                 retries: int = _DEFAULTS.retries, backoff_s: float = _DEFAULTS.backoff_s,
                 token: str | None = _DEFAULTS.token or None):
        if not server_url.startswith(('http://', 'https://')):
            raise ValueError(f'server_url must start with http:// or https://, got {server_url!r}')
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ValueError('timeout_s must be > 0, retries and backoff_s >= 0')
        self.server_url = server_url.rstrip('/')
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self._session = requests.Session()
        self._session.trust_env = False   # no proxy from the environment between robot and server
        if token:
            self._session.headers['Authorization'] = f'Bearer {token}'
        self._info: dict | None = None
        self._detailed: bool | None = None   # None: not probed yet

    @classmethod
    def from_options(cls, options: RemoteOptions) -> RemotePolicy:
        return cls(options.server_url, timeout_s=options.timeout_s, retries=options.retries,
                   backoff_s=options.backoff_s, token=options.token or None)

    def __repr__(self) -> str:   # the token stays out of logs and tracebacks
        return f'RemotePolicy({self.server_url!r}, timeout_s={self.timeout_s})'

    def probe(self) -> dict:
        """Ask the server which routes it has; returns ``{'info': bool, 'detailed': bool}``.

        ``/info`` is read when it answers; ``/act/detailed`` is tried with an empty body, which a
        server that has the route refuses as a bad request (no model call) and one that does not
        answers 404/405. Raises :class:`RemoteBackendError` when the server cannot be reached."""
        if self._detailed is None:
            info = self._request('GET', INFO_PATH, absent_ok=True)
            self._info = info if isinstance(info, dict) else {}
            status = self._status('POST', ACT_DETAILED_PATH, {})
            self._detailed = status not in _ABSENT
        return {'info': bool(self._info), 'detailed': bool(self._detailed)}

    @property
    def server_kind(self) -> str:
        """What the server turned out to be, for status lines."""
        if self._detailed is None:
            return 'not reached yet'
        if self._info:
            return 'openvla-serve' if self._detailed else '/info + plain /act server'
        return 'plain /act server' + (' with /act/detailed' if self._detailed else '')

    # ---- Policy interface ----
    @property
    def model_id(self) -> str:
        """The model id from ``/info``; else ``remote:<url>`` with what the server is."""
        try:
            self.probe()
        except RemoteBackendError:
            return f'remote:{self.server_url}'
        model = (self._info or {}).get('model_id')
        return str(model) if model else f'remote:{self.server_url} ({self.server_kind})'

    def check_instruction(self, instruction: str) -> None:
        """The characters only: the token count is the server's to judge, per request."""
        validate_instruction(instruction)

    def predict(self, image: np.ndarray, instruction: str,
                unnorm_key: str | None = None) -> PredictionResult:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise InvalidImageError(f'image must be an H x W x 3 uint8 array, got '
                                    f'{image.dtype} {image.shape}')
        body: dict[str, Any] = {'image': numpy_json.encode_array(image), 'instruction': instruction}
        if unnorm_key is not None:
            body['unnorm_key'] = unnorm_key
        self.probe()
        started = time.perf_counter()
        if not self._detailed:
            answer = self._request('POST', ACT_PATH, json_body=body)
            action = self._plain_action(answer)
            return PredictionResult(action=action, normalized_action=np.zeros(0),
                                    action_token_ids=np.zeros(0, np.int64),
                                    unnorm_key=unnorm_key or '',
                                    timings={'total': time.perf_counter() - started})
        answer = self._request('POST', ACT_DETAILED_PATH, json_body=body)
        round_trip_s = time.perf_counter() - started
        try:
            action = np.asarray(answer['action'], dtype=np.float64)
            normalized = np.asarray(answer['normalized_action'], dtype=np.float64)
            tokens = np.asarray(answer['action_token_ids'], dtype=np.int64)
            timings = {str(k): float(v) for k, v in answer.get('timings', {}).items()}
            key = str(answer['unnorm_key'])
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteBackendError(f'{self.server_url} sent a malformed answer: {exc}') from None
        _check_action(action)
        timings['total'] = round_trip_s
        return PredictionResult(action=action, normalized_action=normalized,
                                action_token_ids=tokens, unnorm_key=key, timings=timings)

    def _plain_action(self, answer: Any) -> np.ndarray:
        if isinstance(answer, str):
            if answer == 'error':
                # deploy.py's answer to any failure; the reason is only in the server's log.
                raise RemoteBackendError(f'{self.server_url}{ACT_PATH} answered "error" (the '
                                         'server could not process the request; see its log)')
            try:
                answer = numpy_json.loads(answer)   # a double-encoded answer
            except ValueError:
                raise RemoteBackendError(f'{self.server_url}{ACT_PATH} answered the text '
                                         f'{answer[:80]!r}, not an action') from None
        try:
            if isinstance(answer, dict):
                action = numpy_json.decode_array(answer).astype(np.float64)
            else:
                action = np.asarray(answer, dtype=np.float64)
        except (numpy_json.PayloadError, TypeError, ValueError) as exc:
            raise RemoteBackendError(f'{self.server_url}{ACT_PATH} sent a malformed action: '
                                     f'{exc}') from None
        _check_action(action)
        return action

    def predict_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                      unnorm_keys: Sequence[str | None]) -> list[PredictionResult]:
        # The server batches concurrent requests itself; one at a time keeps errors per item.
        if not len(images) == len(instructions) == len(unnorm_keys):
            raise ValueError('images, instructions and unnorm_keys must have the same length')
        return [self.predict(i, t, k) for i, t, k in zip(images, instructions, unnorm_keys)]

    def unnorm_keys(self) -> dict[str, int]:
        """From ``/info``; a server without it cannot list them (:class:`RemoteBackendError`)."""
        self.probe()
        if not self._info:
            raise RemoteBackendError(f'{self.server_url} is a {self.server_kind}: it does not list '
                                     'its unnorm keys, so each request is checked by the server')
        return {str(k): int(v) for k, v in self._info.get('unnorm_keys', {}).items()}

    def describe(self) -> dict:
        self.probe()
        info = dict(self._info or {})
        info.setdefault('model_id', self.model_id)
        info.update(backend='remote', server_url=self.server_url, server_kind=self.server_kind,
                    routes=[ACT_DETAILED_PATH if self._detailed else ACT_PATH]
                    + ([INFO_PATH] if self._info else []))
        return info

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- HTTP ----
    def _status(self, method: str, path: str, json_body: dict) -> int:
        """The status code of a request whose answer does not matter (route probing)."""
        try:
            response = self._session.request(method, self.server_url + path,
                                             data=numpy_json.dumps(json_body).encode(),
                                             headers={'Content-Type': 'application/json'},
                                             timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise RemoteBackendError(f'cannot reach inference server {self.server_url}: '
                                     f'{type(exc).__name__}') from None
        if response.status_code == 401:
            raise RemoteBackendError(f'{self.server_url}{path}: unauthorized (missing or wrong token)')
        return response.status_code

    def _request(self, method: str, path: str, json_body: dict | None = None,
                 absent_ok: bool = False) -> Any:
        url = self.server_url + path
        data = numpy_json.dumps(json_body).encode() if json_body is not None else None
        headers = {'Content-Type': 'application/json'} if data is not None else None
        attempts = self.retries + 1
        last_problem = ''
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._session.request(method, url, data=data, headers=headers,
                                                 timeout=self.timeout_s)
            except requests.ConnectionError as exc:   # includes connect timeouts
                last_problem = f'cannot connect ({type(exc).__name__})'
                continue
            except requests.Timeout:
                raise RemoteBackendError(f'inference server {self.server_url} did not answer '
                                         f'{path} within {self.timeout_s:g} s') from None
            except requests.RequestException as exc:
                raise RemoteBackendError(f'request to {url} failed: {exc}') from None
            if response.status_code in RETRY_STATUSES:
                last_problem = f'HTTP {response.status_code}: {_detail(response)}'
                continue
            if absent_ok and response.status_code in _ABSENT:
                return None
            if response.status_code != 200:
                raise _error_for(response, url)
            try:
                return response.json()
            except ValueError:
                raise RemoteBackendError(f'{url} answered something that is not JSON') from None
        raise RemoteBackendError(f'inference server {self.server_url} is unavailable: '
                                 f'{last_problem} ({attempts} attempt(s))')


def _check_action(action: np.ndarray) -> None:
    if action.ndim != 1 or not action.size or not np.all(np.isfinite(action)):
        raise InvalidModelOutputError(f'server sent an invalid action {action.tolist()}')


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and 'detail' in body:
        return str(body['detail'])
    return str(body)[:200]


def _error_for(response: requests.Response, url: str) -> OpenVLAError:
    detail = _detail(response)
    try:
        name = response.json().get('error', '')
    except (ValueError, AttributeError):
        name = ''
    cls = _ERRORS_BY_NAME.get(name)
    if cls is not None:
        return cls(detail)
    if response.status_code == 401:
        return RemoteBackendError(f'{url}: unauthorized (missing or wrong token)')
    return RemoteBackendError(f'{url}: HTTP {response.status_code}: {detail}')
