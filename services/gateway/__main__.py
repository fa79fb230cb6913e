"""``python -m services.gateway --host H --port P --data-dir D``: what the supervisor runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.gateway import create_app, load_password
from services.gateway.handoff import RawWebSocketProtocol
from services.gateway.proxy import Upstreams
from services.gateway.tokens import ensure_key
from shared.config import GatewaySettings, RackSettings
from shared.serve import serve


def main() -> None:
    gateway = GatewaySettings()
    parser = argparse.ArgumentParser(prog="python -m services.gateway")
    parser.add_argument("--host", default=gateway.host)
    parser.add_argument("--port", type=int, default=gateway.port)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--socket", type=Path, help="Serve plain HTTP on this unix socket too (mode 0600).")
    parser.add_argument("--certfile", type=Path, help="Serve HTTPS with this certificate (PEM).")
    parser.add_argument("--keyfile", type=Path, help="The certificate's private key (PEM).")
    args = parser.parse_args()
    settings = RackSettings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    secret = settings.internal_secret.get_secret_value()
    if not secret:
        sys.exit("ERROR: RACK_INTERNAL_SECRET is not set")
    key = ensure_key(settings.data_dir)
    app = create_app(load_password(settings.data_dir), Upstreams.for_rack(settings.run_dir, secret), key)
    serve(
        app,
        host=args.host,
        port=args.port,
        certfile=args.certfile,
        keyfile=args.keyfile,
        ws=RawWebSocketProtocol,
        plain_uds=args.socket,
    )


main()
