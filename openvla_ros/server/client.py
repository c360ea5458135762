"""``RemotePolicy``: the :class:`~openvla_ros.engine.api.Policy` interface over HTTP.

Talks to ``openvla-serve`` (``/act/detailed`` and ``/info``), so vla_node and the offline tools
can use a model on another machine exactly like a local one. Every ``predict`` is a fresh request:
when the server cannot answer, :class:`RemoteBackendError` is raised and no earlier action is ever
returned in its place.

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
from openvla_ros.server import numpy_json

RETRY_STATUSES = (503, 504)


class RemoteBackendError(OpenVLAError):
    """The inference server is unreachable, refused the request or answered something unusable."""


# The server names the error class in every error answer; these are raised as themselves.
_ERRORS_BY_NAME: dict[str, type[OpenVLAError]] = {
    cls.__name__: cls for cls in (InvalidImageError, InvalidInstructionError,
                                  UnknownUnnormKeyError, InvalidModelOutputError)
}


class RemotePolicy:
    """A policy served by ``openvla-serve`` at ``server_url`` (e.g. ``http://127.0.0.1:8000``).

    The constructor does not contact the server, so a robot stack may start before it."""

    def __init__(self, server_url: str, timeout_s: float = 2.0, retries: int = 2,
                 backoff_s: float = 0.2, token: str | None = None):
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

    def __repr__(self) -> str:   # the token stays out of logs and tracebacks
        return f'RemotePolicy({self.server_url!r}, timeout_s={self.timeout_s})'

    # ---- Policy interface ----
    @property
    def model_id(self) -> str:
        """The server's model id; while the server has never been reached, ``remote:<url>``."""
        if self._info is None:
            try:
                self._fetch_info()
            except RemoteBackendError:
                return f'remote:{self.server_url}'
        return str(self._info.get('model_id', ''))

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
        started = time.perf_counter()
        answer = self._request('POST', '/act/detailed', json_body=body)
        round_trip_s = time.perf_counter() - started
        try:
            action = np.asarray(answer['action'], dtype=np.float64)
            normalized = np.asarray(answer['normalized_action'], dtype=np.float64)
            tokens = np.asarray(answer['action_token_ids'], dtype=np.int64)
            timings = {str(k): float(v) for k, v in answer.get('timings', {}).items()}
            key = str(answer['unnorm_key'])
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteBackendError(f'{self.server_url} sent a malformed answer: {exc}') from None
        if action.ndim != 1 or not np.all(np.isfinite(action)):
            raise InvalidModelOutputError(f'server sent an invalid action {action.tolist()}')
        timings['total'] = round_trip_s
        return PredictionResult(action=action, normalized_action=normalized,
                                action_token_ids=tokens, unnorm_key=key, timings=timings)

    def predict_batch(self, images: Sequence[np.ndarray], instructions: Sequence[str],
                      unnorm_keys: Sequence[str | None]) -> list[PredictionResult]:
        # The server batches concurrent requests itself; one at a time keeps errors per item.
        if not len(images) == len(instructions) == len(unnorm_keys):
            raise ValueError('images, instructions and unnorm_keys must have the same length')
        return [self.predict(i, t, k) for i, t, k in zip(images, instructions, unnorm_keys)]

    def unnorm_keys(self) -> dict[str, int]:
        info = self._info if self._info is not None else self._fetch_info()
        return {str(k): int(v) for k, v in info.get('unnorm_keys', {}).items()}

    def describe(self) -> dict:
        info = dict(self._fetch_info())
        info['backend'] = 'remote'
        info['server_url'] = self.server_url
        return info

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- HTTP ----
    def _fetch_info(self) -> dict:
        info = self._request('GET', '/info')
        if not isinstance(info, dict):
            raise RemoteBackendError(f'{self.server_url}/info did not answer a JSON object')
        self._info = info
        return info

    def _request(self, method: str, path: str, json_body: dict | None = None) -> Any:
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
            if response.status_code != 200:
                raise _error_for(response, url)
            try:
                return response.json()
            except ValueError:
                raise RemoteBackendError(f'{url} answered something that is not JSON') from None
        raise RemoteBackendError(f'inference server {self.server_url} is unavailable: '
                                 f'{last_problem} ({attempts} attempt(s))')


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
