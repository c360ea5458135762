"""REST inference server, wire-compatible with upstream OpenVLA's ``vla-scripts/deploy.py``.

Endpoints
---------
``POST /act``
    Body: a JSON object ``{"image": <json_numpy uint8 H x W x 3 array>, "instruction": str,
    "unnorm_key": str (optional)}`` where the image is
    ``{"__numpy__": <base64 of the raw bytes>, "dtype": "|u1", "shape": [H, W, 3]}`` (what a client
    sends after ``json_numpy.patch()``), or the double-encoded form ``{"encoded": "<that object as a
    JSON string>"}`` for clients without json_numpy. On success the answer is byte-for-byte what
    upstream sends: the action as a json_numpy float64 array (``"dtype": "<f8"``, shape [D]); for
    the double-encoded form, a JSON string holding that json_numpy text.
``POST /act/detailed``
    Same input (either form). Answers a plain JSON object (no json_numpy): ``action``, ``normalized_action``,
    ``action_token_ids``, ``unnorm_key``, ``model_id``, ``batch_size`` and ``timings`` (seconds:
    the engine's stages, ``inference`` for the whole model call, ``queue_wait`` and
    ``server_total``; plus ``batch_size``).
``GET /healthz``
    ``{"status": "ok", "model_loaded": true, "queue_depth": n, ...}``; 503 when the inference
    worker is not running. Needs no token (load balancers poll it); it reveals no model details.
``GET /info``
    Model id, dtype, device, quantization, image pipeline, prompt template, the ``unnorm_key`` s
    with their action dimension, the default key, max batch, queue size and every limit.

Differences from upstream
-------------------------
Successful answers are identical. Upstream answers every failure with HTTP 200 and the JSON
string ``"error"``; this server answers errors with a status code and a JSON object
``{"detail": "<what is wrong>", "error": "<error class>"}`` and never sends a traceback:

=====  ==================================================================================
400    body is not JSON (also: nested too deeply, a string holding a lone surrogate escape);
       missing/extra field; image not a json_numpy uint8 H x W x 3 array; instruction
       empty, not a string or longer than ``MAX_INSTRUCTION_CHARS``
401    token required and missing or wrong (``Authorization: Bearer <token>``)
408    the body did not arrive within ``--request-timeout-s``
413    body larger than ``--max-body-mb``, or image larger than ``--max-image-pixels``
422    well-formed request the loaded model cannot serve: unknown ``unnorm_key``, or none given
       while the model has several and no ``--unnorm-key-default`` is set (the message lists the
       available keys)
500    internal error (details only in the server log)
503    request queue full (``--queue-size``), retry later; or the server is shutting down
504    no answer within ``--request-timeout-s`` (queue wait included)
=====  ==================================================================================

Slow or idle clients cannot hold connections: an idle keep-alive connection is closed after
``--keep-alive-timeout-s``, a connection whose request line and headers are not complete within
``--header-timeout-s`` is closed without an answer, and headers larger than
``--max-header-kb`` are refused (400).

Other differences: the server binds to 127.0.0.1 by default (upstream: 0.0.0.0) and refuses to
bind to any other address without a bearer token; the ``json`` module is not patched; no
OpenAPI/docs pages are served.

Scaling
-------
One ``openvla-serve`` process drives one GPU: requests that arrive together are batched on it
(``--max-batch``), and the bounded queue makes overload visible as 503 instead of as latency.
To serve more robots than one GPU can, run one replica per GPU (``CUDA_VISIBLE_DEVICES=N
openvla-serve --port 800N ...``) behind an existing L7 load balancer; the requests carry the
whole observation, so replicas are stateless and need no session affinity. We recommend
**Envoy** (or HAProxy, equally good for this) with least-request balancing (Envoy
``LEAST_REQUEST``, HAProxy ``balance leastconn``), active health checks on ``/healthz``, a retry
on another replica for 503 (``/act`` has no side effects, so a retry is safe) and TLS terminated
at the proxy. Why not more: with one robot a request and seven action tokens per answer, batches
stay small and continuous-batching engines gain little, while a proxy adds well under a
millisecond and no new numerics. On Kubernetes the same is a Deployment with one GPU per pod, a
readiness probe on ``/healthz`` and a Service in front. Ray Serve is the choice when a cluster
must autoscale replicas with load; vLLM has an OpenVLA model only as an open pull request, so
check its actions against this server's (``/act/detailed`` tokens) before relying on it.
Do not build a home-made scheduler between replicas.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from openvla_ros import defaults
from openvla_ros.engine.api import (InvalidImageError, InvalidInstructionError,
                                    InvalidModelOutputError, OpenVLAError, Policy,
                                    UnknownUnnormKeyError)
from openvla_ros.engine.actions import resolve_unnorm_key
from openvla_ros.engine.prompt import validate_instruction
from openvla_ros.server import numpy_json
from openvla_ros.server.batching import InferenceWorker, QueueFullError, WorkerStoppedError

log = logging.getLogger('openvla_ros.server')

ACT_PATH = '/act'
ACT_DETAILED_PATH = '/act/detailed'
HEALTH_PATH = '/healthz'
INFO_PATH = '/info'


@dataclass
class ServerConfig:
    """Serving limits; the CLI flags of ``openvla-serve`` map one to one onto these fields."""

    max_batch: int = 4
    queue_size: int = 32
    request_timeout_s: float = 10.0
    max_body_bytes: int = 20 * 1024 * 1024       # a 2048 x 2048 RGB image is 16.8 MB in base64
    max_image_pixels: int = 2048 * 2048
    max_instruction_chars: int = defaults.MAX_INSTRUCTION_CHARS
    unnorm_key_default: str | None = None
    token: str | None = field(default=None, repr=False)   # never printed with the config
    # connection limits (uvicorn): idle keep-alive connections are closed after
    # keep_alive_timeout_s; a client gets header_timeout_s for a request's line and headers
    # and request_timeout_s for its body
    keep_alive_timeout_s: float = 5.0
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024


class ApiError(Exception):
    """An error answer: HTTP status, a message for the client, and an error class name."""

    def __init__(self, status: int, detail: str, error: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error = error or {400: 'BadRequest', 401: 'Unauthorized', 408: 'RequestTimeout',
                               413: 'PayloadTooLarge',
                               422: 'UnprocessableRequest', 503: 'ServiceUnavailable',
                               504: 'Timeout'}.get(status, 'InternalError')
        self.headers = headers


@dataclass
class ActRequest:
    image: np.ndarray
    instruction: str
    unnorm_key: str
    double_encoded: bool


def _jsonable(obj: Any) -> Any:
    """``obj`` reduced to JSON types (describe() may hold paths, numpy scalars, tuples)."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic)
                                 else str(o)))


def _is_unicode_text(text: str) -> bool:
    try:
        text.encode('utf-8')
    except UnicodeEncodeError:
        return False
    return True


class _ActParser:
    """Turns a raw /act body into an :class:`ActRequest`, rejecting anything the model must not see."""

    def __init__(self, config: ServerConfig, unnorm_keys: dict[str, int]):
        self.config = config
        self.unnorm_keys = unnorm_keys

    def parse(self, body: bytes) -> ActRequest:
        payload = self._load_json(body, 'body')
        double_encoded = False
        if 'encoded' in payload:
            if len(payload) != 1:
                raise ApiError(400, 'the double-encoded form is {"encoded": "<json string>"} '
                                    'with no other field')
            if not isinstance(payload['encoded'], str):
                raise ApiError(400, '"encoded" must be a JSON string')
            payload = self._load_json(payload['encoded'], '"encoded"')
            double_encoded = True
        unknown = set(payload) - {'image', 'instruction', 'unnorm_key'}
        if unknown:
            raise ApiError(400, f'unknown field(s) {sorted(unknown)}; expected "image", '
                                '"instruction" and optionally "unnorm_key"')
        for name in ('image', 'instruction'):
            if name not in payload:
                raise ApiError(400, f'missing field "{name}"')
        return ActRequest(self._image(payload['image']),
                          self._instruction(payload['instruction']),
                          self._unnorm_key(payload.get('unnorm_key')), double_encoded)

    @staticmethod
    def _load_json(text: bytes | str, what: str) -> dict:
        try:
            payload = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f'{what} is not valid JSON: {exc}') from None
        except RecursionError:
            # the C parser recurses once per nesting level; no valid request nests beyond three
            raise ApiError(400, f'{what} nests JSON arrays/objects too deeply') from None
        if not isinstance(payload, dict):
            raise ApiError(400, f'{what} must be a JSON object, got {type(payload).__name__}')
        for key, value in payload.items():
            # JSON may escape half of a surrogate pair ("\ud800"), which no UTF-8 text can hold
            for text_item, name in ((key, 'a field name'), (value, f'field {key!r}')):
                if isinstance(text_item, str) and key != 'encoded' and not _is_unicode_text(text_item):
                    raise ApiError(400, f'{what}: {name} is not valid Unicode text (it holds a lone '
                                        'surrogate escape such as \\ud800)')
        return payload

    def _image(self, obj: Any) -> np.ndarray:
        if not isinstance(obj, dict) or numpy_json.NUMPY_KEY not in obj:
            raise ApiError(400, '"image" must be a json_numpy array {"__numpy__": base64, '
                                '"dtype": "|u1", "shape": [H, W, 3]}', 'InvalidImageError')
        shape = obj.get('shape')
        if (not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                           for d in shape)):
            raise ApiError(400, f'"image" must have shape [H, W, 3] with H, W > 0, got {shape}',
                           'InvalidImageError')
        pixels = shape[0] * shape[1]
        if pixels > self.config.max_image_pixels:
            raise ApiError(413, f'image of {shape[0]} x {shape[1]} = {pixels} pixels exceeds the '
                                f'limit of {self.config.max_image_pixels} pixels')
        try:
            return numpy_json.decode_array(obj, expect_dtype=np.dtype(np.uint8))
        except numpy_json.PayloadError as exc:
            raise ApiError(400, f'"image": {exc}', 'InvalidImageError') from None

    def _instruction(self, text: Any) -> str:
        try:
            return validate_instruction(text, self.config.max_instruction_chars)
        except InvalidInstructionError as exc:
            raise ApiError(400, f'"instruction": {exc}', 'InvalidInstructionError') from None

    def _unnorm_key(self, key: Any) -> str:
        if key is not None and not isinstance(key, str):
            raise ApiError(400, f'"unnorm_key" must be a string, got {type(key).__name__}')
        try:
            return resolve_unnorm_key(self.unnorm_keys,
                                      self.config.unnorm_key_default if key is None else key)
        except UnknownUnnormKeyError as exc:
            raise ApiError(422, str(exc), 'UnknownUnnormKeyError') from None


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body, refused with 413 as soon as it (or its Content-Length) passes ``limit``,
    and with 408 when it has not fully arrived within ``timeout_s`` (a client that stalls
    mid-body would otherwise hold its connection forever)."""
    try:
        return await asyncio.wait_for(_read_body_unbounded(request, limit), timeout_s)
    except (asyncio.TimeoutError, TimeoutError):
        raise ApiError(408, f'the request body did not arrive within {timeout_s:g} s') from None


async def _read_body_unbounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get('content-length')
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise ApiError(400, 'Content-Length is not an integer') from None
        if declared_bytes > limit:
            raise ApiError(413, f'body of {declared_bytes} bytes exceeds the limit of {limit} bytes')
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f'body exceeds the limit of {limit} bytes')
        chunks.append(chunk)
    return b''.join(chunks)


def _engine_error(exc: BaseException) -> ApiError:
    """Map an error raised while predicting onto the answer the client gets."""
    if isinstance(exc, (InvalidImageError, InvalidInstructionError)):
        return ApiError(400, str(exc), type(exc).__name__)
    if isinstance(exc, UnknownUnnormKeyError):
        return ApiError(422, str(exc), type(exc).__name__)
    if isinstance(exc, InvalidModelOutputError):
        return ApiError(500, f'the model produced an invalid action: {exc}', type(exc).__name__)
    if isinstance(exc, OpenVLAError):
        return ApiError(500, str(exc), type(exc).__name__)
    return ApiError(500, 'internal server error (see the server log)')


def create_app(policy: Policy, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``policy``; its worker thread runs while the app's lifespan does."""
    config = config or ServerConfig()
    unnorm_keys = dict(policy.unnorm_keys())
    if config.unnorm_key_default is not None and config.unnorm_key_default not in unnorm_keys:
        raise UnknownUnnormKeyError(f'default unnorm_key {config.unnorm_key_default!r} is not in '
                                    f'the checkpoint; available: {", ".join(sorted(unnorm_keys))}')
    worker = InferenceWorker(policy, max_batch=config.max_batch, queue_size=config.queue_size)
    parser = _ActParser(config, unnorm_keys)
    info = _jsonable({
        'model_id': policy.model_id,
        **policy.describe(),
        'unnorm_keys': unnorm_keys,
        'unnorm_key_default': config.unnorm_key_default,
        'max_batch': config.max_batch,
        'queue_size': config.queue_size,
        'limits': {
            'request_timeout_s': config.request_timeout_s,
            'max_body_bytes': config.max_body_bytes,
            'max_image_pixels': config.max_image_pixels,
            'max_instruction_chars': config.max_instruction_chars,
            'keep_alive_timeout_s': config.keep_alive_timeout_s,
            'header_timeout_s': config.header_timeout_s,
            'max_header_bytes': config.max_header_bytes,
        },
        'auth_required': config.token is not None,
        'api': 'openvla deploy.py compatible (POST /act); /act/detailed, /healthz, /info',
    })
    expected_auth = f'Bearer {config.token}'.encode() if config.token is not None else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        worker.start()
        log.info('serving %s (max batch %d, queue %d, auth %s)', policy.model_id,
                 config.max_batch, config.queue_size, 'on' if expected_auth else 'off')
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title='openvla_ros inference server', lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.worker = worker
    app.state.config = config

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        level = logging.ERROR if exc.status >= 500 and exc.status not in (503, 504) else logging.INFO
        log.log(level, '%s %s -> %d %s', request.method, request.url.path, exc.status, exc.detail)
        # a detail quoting client text must not fail to encode (lone surrogates)
        detail = exc.detail.encode('utf-8', 'backslashreplace').decode('utf-8')
        return JSONResponse({'detail': detail, 'error': exc.error}, status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception('%s %s failed', request.method, request.url.path)
        return JSONResponse({'detail': 'internal server error (see the server log)',
                             'error': 'InternalError'}, status_code=500)

    def require_token(request: Request) -> None:
        if expected_auth is None:
            return
        given = request.headers.get('authorization', '').encode()
        if not hmac.compare_digest(given, expected_auth):
            raise ApiError(401, 'missing or wrong bearer token (Authorization: Bearer <token>)',
                           headers={'WWW-Authenticate': 'Bearer'})

    async def serve(request: Request) -> tuple[ActRequest, Any]:
        received = time.monotonic()
        body = await _read_body(request, config.max_body_bytes, config.request_timeout_s)
        act = parser.parse(body)
        try:
            future = worker.submit(act.image, act.instruction, act.unnorm_key)
        except QueueFullError as exc:
            raise ApiError(503, str(exc), headers={'Retry-After': '1'}) from None
        except WorkerStoppedError as exc:
            raise ApiError(503, str(exc)) from None
        remaining = config.request_timeout_s - (time.monotonic() - received)
        try:
            # wait_for cancels the future on timeout, so the worker skips it if not yet started.
            served = await asyncio.wait_for(asyncio.wrap_future(future), max(remaining, 0.0))
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(504, f'no answer within the request timeout of '
                                f'{config.request_timeout_s:g} s (queue depth '
                                f'{worker.queue_depth})') from None
        except Exception as exc:
            if isinstance(exc, WorkerStoppedError):
                raise ApiError(503, str(exc)) from None
            error = _engine_error(exc)
            if error.status == 500 and not isinstance(exc, OpenVLAError):
                log.error('prediction failed', exc_info=exc)
            raise error from None
        action = np.asarray(served.result.action, dtype=np.float64)
        if action.ndim != 1 or not np.all(np.isfinite(action)):
            raise ApiError(500, f'the model produced an invalid action {action!r}',
                           'InvalidModelOutputError')
        timings = {('inference' if k == 'total' else k): float(v)
                   for k, v in served.result.timings.items()}
        timings.update(queue_wait=served.queue_wait_s, batch_size=float(served.batch_size),
                       server_total=time.monotonic() - received)
        return act, (served, action, timings)

    @app.post(ACT_PATH, dependencies=[Depends(require_token)])
    async def act(request: Request) -> Response:
        act_request, (_, action, _) = await serve(request)
        text = numpy_json.dumps(action, compact=True)
        if act_request.double_encoded:
            # Upstream returns JSONResponse(json_numpy.dumps(action)): a JSON string.
            text = json.dumps(numpy_json.dumps(action), ensure_ascii=False,
                              separators=(',', ':'))
        return Response(text.encode('utf-8'), media_type='application/json')

    @app.post(ACT_DETAILED_PATH, dependencies=[Depends(require_token)])
    async def act_detailed(request: Request) -> JSONResponse:
        _, (served, action, timings) = await serve(request)
        result = served.result
        return JSONResponse({
            'action': action.tolist(),
            'normalized_action': np.asarray(result.normalized_action, dtype=np.float64).tolist(),
            'action_token_ids': [int(t) for t in result.action_token_ids],
            'unnorm_key': result.unnorm_key,
            'model_id': policy.model_id,
            'batch_size': served.batch_size,
            'timings': timings,
        })

    @app.get(HEALTH_PATH)
    async def healthz() -> JSONResponse:
        ok = worker.alive
        return JSONResponse({
            'status': 'ok' if ok else 'unavailable',
            'model_loaded': True,
            'queue_depth': worker.queue_depth,
            'queue_size': config.queue_size,
            'busy': worker.busy,
            'requests_served': worker.requests_served,
        }, status_code=200 if ok else 503)

    @app.get(INFO_PATH, dependencies=[Depends(require_token)])
    async def get_info() -> JSONResponse:
        return JSONResponse(info)

    return app
