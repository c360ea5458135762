"""``openvla-serve``: load a checkpoint and serve it over HTTP (see ``app.py`` for the API).

The token comes from ``--token-file`` or the ``OPENVLA_SERVER_TOKEN`` environment variable, never
from the command line (other users can read command lines). Binding to anything but a loopback
address without a token is refused.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from openvla_ros import defaults
from openvla_ros.policy.options import (CHECKPOINT_DEFAULT, add_checkpoint_argument, add_policy_arguments,
                                        add_unnorm_key_argument, policy_options)
from openvla_ros.server.app import ServerConfig, create_app

TOKEN_ENV = 'OPENVLA_SERVER_TOKEN'
LOOPBACK_NAMES = ('localhost',)

# The serving limits, one flag each: (flag, ServerConfig field, flag type, the field's units per
# flag unit, help). An int flag must be >= 1, a float flag > 0.
LIMIT_FLAGS = (
    ('--max-batch', 'max_batch', int, 1, 'most requests run as one batch'),
    ('--queue-size', 'queue_size', int, 1, 'requests that may wait; more get 503'),
    ('--request-timeout-s', 'request_timeout_s', float, 1,
     'seconds from arrival to answer, queue wait included; then 504'),
    ('--max-body-mb', 'max_body_bytes', float, 2 ** 20, 'largest request body in MiB; larger gets 413'),
    ('--max-image-pixels', 'max_image_pixels', int, 1, 'largest image (H x W); larger gets 413'),
    ('--keep-alive-timeout-s', 'keep_alive_timeout_s', float, 1,
     'close an idle keep-alive connection after this long'),
    ('--header-timeout-s', 'header_timeout_s', float, 1,
     'close a connection whose request line and headers are not complete within this long'),
    ('--max-header-kb', 'max_header_bytes', float, 1024,
     'largest request line + headers in KiB; larger gets 400'),
)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(
        prog='openvla-serve',
        description='Serve an OpenVLA checkpoint over HTTP (POST /act compatible with upstream '
                    'deploy.py; /act/detailed, /healthz, /info).')
    add_checkpoint_argument(p)
    add_policy_arguments(p)   # --dtype, --device, --quantization, ... as every engine tool
    p.add_argument('--self-test', action='store_true',
                   help='at load, check that the image changes the logits (refuse to serve a '
                        'model that ignores the image)')
    add_unnorm_key_argument(p, CHECKPOINT_DEFAULT, flag='--unnorm-key-default',
                            help_prefix='for requests that name none: ')
    p.add_argument('--host', default=defaults.DEFAULT_SERVER_HOST,
                   help='address to bind (default %(default)s; non-loopback needs a token)')
    p.add_argument('--port', type=int, default=defaults.DEFAULT_SERVER_PORT)
    p.add_argument('--token-file', type=Path, default=None,
                   help=f'file holding the bearer token (else ${TOKEN_ENV}; unset = no auth)')
    for flag, field, kind, unit, text in LIMIT_FLAGS:
        p.add_argument(flag, type=kind, default=kind(getattr(d, field) / unit),
                       help=f'{text} (default %(default)s)')
    p.add_argument('--extra-latency-s', type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument('--log-level', default='info',
                   choices=('critical', 'error', 'warning', 'info', 'debug'))
    return p


def bounded_h11_protocol(header_timeout_s: float):
    """uvicorn's h11 protocol with a deadline for every request's line and headers.

    uvicorn bounds only the idle time between requests (``timeout_keep_alive``); a client that
    sends its headers one byte at a time, or opens a connection and sends part of a request,
    would hold the connection for ever. Here each request (the first one on a connection, and
    each one after a keep-alive answer) must have its headers complete within
    ``header_timeout_s``, or the connection is closed."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class BoundedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state is not h11.IDLE:   # the headers are in (or it failed)
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            self._arm_header_timer()   # before the parent handles any pipelined request
            super().on_response_complete()

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.logger.info('closing a connection from %s: no complete request headers within '
                                 '%g s', self.client, header_timeout_s)
                self.transport.close()

    return BoundedH11Protocol


def server_limits(args: argparse.Namespace) -> dict:
    """The ServerConfig fields of the limit flags in ``args``, in the fields' units and types;
    ``ValueError`` names the first flag out of range."""
    d, limits = ServerConfig(), {}
    for flag, field, kind, unit, _ in LIMIT_FLAGS:
        value = getattr(args, flag[2:].replace('-', '_'))
        if kind is int and value < 1:
            raise ValueError(f'{flag} must be >= 1')
        if kind is float and not value > 0:
            raise ValueError(f'{flag} must be > 0')
        limits[field] = type(getattr(d, field))(value * unit)
    return limits


def uvicorn_config(app, config: ServerConfig, host: str, port: int, log_level: str = 'info'):
    """The uvicorn configuration that serves ``app`` with ``config``'s connection limits."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None,
                          timeout_graceful_shutdown=5, http=bounded_h11_protocol(config.header_timeout_s),
                          timeout_keep_alive=config.keep_alive_timeout_s,
                          h11_max_incomplete_event_size=config.max_header_bytes)


def read_token(token_file: Path | None) -> str | None:
    """The bearer token from the file or the environment; ``None`` when neither is set."""
    if token_file is not None:
        token = token_file.read_text().strip()
        if not token:
            raise ValueError(f'token file {token_file} is empty')
        return token
    token = os.environ.get(TOKEN_ENV, '').strip()
    return token or None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    log = logging.getLogger('openvla_ros.server')
    try:
        token = read_token(args.token_file)
    except (OSError, ValueError) as exc:
        print(f'openvla-serve: cannot read the token: {exc}', file=sys.stderr)
        return 2
    if token is None and not is_loopback(args.host):
        print(f'openvla-serve: refusing to bind to {args.host} without a token: anyone who can '
              f'reach it could drive the robot. Set --token-file or ${TOKEN_ENV}, or bind to '
              f'{defaults.DEFAULT_SERVER_HOST}.', file=sys.stderr)
        return 2
    try:
        limits = server_limits(args)
    except ValueError as exc:
        print(f'openvla-serve: {exc}', file=sys.stderr)
        return 2
    config = ServerConfig(unnorm_key_default=args.unnorm_key_default, token=token, **limits)

    import uvicorn

    from openvla_ros.engine import load_policy
    from openvla_ros.engine.api import OpenVLAError

    options = policy_options(args, max_instruction_chars=config.max_instruction_chars,
                             self_test=args.self_test, extra_latency_s=args.extra_latency_s)
    log.info('loading %s (%s, %s, quantization %s)', args.checkpoint, args.dtype, args.device,
             args.quantization)
    try:
        policy = load_policy(args.checkpoint, options)
    except (OpenVLAError, OSError, ValueError) as exc:
        print(f'openvla-serve: cannot load {args.checkpoint}: {exc}', file=sys.stderr)
        return 1
    try:
        app = create_app(policy, config)
    except OpenVLAError as exc:
        print(f'openvla-serve: {exc}', file=sys.stderr)
        policy.close()
        return 2
    server = uvicorn.Server(uvicorn_config(app, config, host=args.host, port=args.port,
                                           log_level=args.log_level))
    try:
        server.run()
    except KeyboardInterrupt:
        pass   # uvicorn re-raises SIGINT after its graceful shutdown: a normal stop
    finally:
        policy.close()
    return 0 if server.started else 1


if __name__ == '__main__':
    sys.exit(main())
