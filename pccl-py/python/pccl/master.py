"""Runs a pccl master: ``python -m pccl.master --listen-address 0.0.0.0:48148``, or
``pccl-master`` (the console script ``pip install`` puts beside python), which also
takes ``--listen`` as the Rust ``pccl-master`` does.

With ``--secret-file PATH`` (or ``PCCL_RUN_SECRET`` / ``PCCL_RUN_SECRET_FILE`` in the
environment) only peers holding the same run secret are admitted; ``--encrypt`` (or
``PCCL_ENCRYPT=1``) also encrypts payloads. ``--http-address 127.0.0.1:9148`` serves the
dashboard, ``/metrics`` and ``/api/run``. Stops on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any, Optional, Sequence

from pccl._pccl import MasterNode, PCCLError


def main(argv: Optional[Sequence[str]] = None) -> int:
    # Named as invoked: the console script, or the module.
    invoked = os.path.basename(sys.argv[0]) if sys.argv else ""
    prog = "pccl-master" if invoked == "pccl-master" else "python -m pccl.master"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument(
        "--listen-address",
        "--listen",
        default="0.0.0.0:48148",
        help="ip:port to listen on (default 0.0.0.0:48148; port 0 picks a free port)",
    )
    parser.add_argument(
        "--secret-file",
        metavar="PATH",
        help="file holding the run secret (default: PCCL_RUN_SECRET or PCCL_RUN_SECRET_FILE "
        "if set; otherwise no secret, PCCL-compatible plain mode)",
    )
    parser.add_argument(
        "--encrypt",
        action="store_true",
        default=None,
        help="encrypt payloads too; needs a run secret (default: PCCL_ENCRYPT)",
    )
    parser.add_argument(
        "--http-address",
        metavar="IP:PORT",
        help="serve the dashboard, /metrics (Prometheus) and /api/run here (default: off); "
        "read-only and unauthenticated: bind loopback or a private network",
    )
    args = parser.parse_args(argv)
    # Only the flags given: absent ones leave the environment (or the default) to decide.
    security: dict[str, Any] = {}
    if args.secret_file is not None:
        security["secret_file"] = args.secret_file
    if args.encrypt is not None:
        security["encrypt"] = args.encrypt
    if args.http_address is not None:
        security["http_address"] = args.http_address
    try:
        master = MasterNode(args.listen_address, **security)
    except PCCLError as e:
        # A refused secret, file or setting: say why, as for any bad argument.
        parser.error(str(e))
    master.run()
    # The actual address (port 0 resolved), for scripts that start a master on port 0.
    print(f"pccl master listening on {master.listen_address}", flush=True)
    if master.http_address is not None:
        print(f"pccl master dashboard: http://{master.http_address}/", flush=True)
    if master.authenticated:
        what = "encrypted" if master.encrypted else "authenticated"
        print(f"pccl master: {what} run (only holders of the run secret are admitted)", flush=True)

    def stop(_signum: int, _frame: object) -> None:
        master.interrupt()

    signal.signal(signal.SIGTERM, stop)
    try:
        try:
            master.await_termination()
        except KeyboardInterrupt:
            master.interrupt()
            master.await_termination()
    except PCCLError as e:
        # The master crashed (a bug, already logged): fail the process so it is noticed.
        print(f"pccl master: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
