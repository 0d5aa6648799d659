"""Runs a pccl master: ``python -m pccl.master --listen-address 0.0.0.0:48148``.

Stops on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Optional, Sequence

from pccl._pccl import MasterNode, PCCLError


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pccl.master", description=__doc__)
    parser.add_argument(
        "--listen-address",
        default="0.0.0.0:48148",
        help="ip:port to listen on (default 0.0.0.0:48148; port 0 picks a free port)",
    )
    args = parser.parse_args(argv)
    master = MasterNode(args.listen_address)
    master.run()
    # The actual address (port 0 resolved), for scripts that start a master on port 0.
    print(f"pccl master listening on {master.listen_address}", flush=True)

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
