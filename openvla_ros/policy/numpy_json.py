"""The json_numpy wire format of upstream's ``deploy.py``, without patching the ``json`` module.

An array travels as ``{"__numpy__": <base64 of the raw C-order bytes>, "dtype": <numpy dtype
descriptor, e.g. "|u1" or "<f8">, "shape": [...]}``. Upstream patches ``json.dumps``/``loads``
globally (``json_numpy.patch()``); here the same objects are produced and read explicitly, so no
other code in the process sees a changed ``json`` module.

Decoding request images is strict on purpose: the dtype must be uint8, the shape H x W x 3,
the byte count must match, and the pixel count is checked before the base64 text is decoded.
"""
from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

NUMPY_KEY = '__numpy__'


class PayloadError(ValueError):
    """The request body does not follow the wire format (message says what is wrong)."""


class PayloadTooLargeError(PayloadError):
    """The request carries more data than the server accepts."""


def encode_array(array: np.ndarray | np.generic) -> dict[str, Any]:
    """The json_numpy object of ``array`` (same keys, order and values as json_numpy 2.x)."""
    a = np.asarray(array)
    return {
        NUMPY_KEY: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode('ascii'),
        'dtype': np.lib.format.dtype_to_descr(a.dtype),
        'shape': list(a.shape),
    }


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        return encode_array(obj)
    raise TypeError(f'Object of type {type(obj).__name__} is not JSON serializable')


def dumps(obj: Any, compact: bool = False) -> str:
    """JSON text of ``obj`` with numpy arrays encoded as json_numpy objects.

    ``compact=False`` gives ``json.dumps``'s default separators (what ``json_numpy.dumps``
    writes); ``compact=True`` gives the separators of Starlette's ``JSONResponse``."""
    if compact:
        return json.dumps(obj, default=_default, ensure_ascii=False, allow_nan=False,
                          separators=(',', ':'))
    return json.dumps(obj, default=_default)


def _hook(obj: dict) -> Any:
    if NUMPY_KEY in obj:
        return decode_array(obj)
    return obj


def loads(text: str | bytes) -> Any:
    """Parse JSON text, turning every json_numpy object into an ndarray (no limits; client side)."""
    return json.loads(text, object_hook=_hook)


def decode_array(obj: dict, *, expect_dtype: np.dtype | None = None,
                 max_elements: int | None = None) -> np.ndarray:
    """Decode one json_numpy object, checking dtype, shape and byte count.

    Raises :class:`PayloadError` (or :class:`PayloadTooLargeError` when the declared shape has
    more than ``max_elements`` elements) with a message naming the problem."""
    if not isinstance(obj, dict) or NUMPY_KEY not in obj:
        raise PayloadError('expected a json_numpy object {"__numpy__": base64, "dtype": ..., '
                           '"shape": [...]}')
    data, descr, shape = obj.get(NUMPY_KEY), obj.get('dtype'), obj.get('shape')
    if not isinstance(data, str):
        raise PayloadError('"__numpy__" must be a base64 string')
    if not isinstance(descr, str):
        raise PayloadError('"dtype" must be a numpy dtype descriptor string such as "|u1"')
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f'unknown dtype {descr!r}') from exc
    if dtype.hasobject:
        raise PayloadError(f'dtype {descr!r} is not allowed')
    if expect_dtype is not None and dtype != expect_dtype:
        raise PayloadError(f'dtype must be {np.lib.format.dtype_to_descr(np.dtype(expect_dtype))!r}'
                           f' ({np.dtype(expect_dtype).name}), got {descr!r}')
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise PayloadError('"shape" must be a list of non-negative integers')
    n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if max_elements is not None and n_elements > max_elements:
        raise PayloadTooLargeError(f'array of shape {shape} has {n_elements} elements, '
                                   f'more than the limit of {max_elements}')
    expected_b64_chars = 4 * ((n_elements * dtype.itemsize + 2) // 3)
    if len(data) > expected_b64_chars + 4:   # reject before decoding megabytes of surplus
        raise PayloadError(f'"__numpy__" holds more data than shape {shape} and dtype {descr!r} '
                           'need')
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PayloadError(f'"__numpy__" is not valid base64: {exc}') from exc
    if len(raw) != n_elements * dtype.itemsize:
        raise PayloadError(f'"__numpy__" holds {len(raw)} bytes but shape {shape} with dtype '
                           f'{descr!r} needs {n_elements * dtype.itemsize}')
    array = np.frombuffer(bytearray(raw), dtype=dtype)  # writable, like an array made locally
    return array.reshape(shape) if shape else array[0]
