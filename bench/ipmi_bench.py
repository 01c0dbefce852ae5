"""Power state of many BMCs through the IPMI driver, against a sequential ipmitool loop.

    bash lab/boxes.sh up 1 && .venv/bin/python bench/ipmi_bench.py --bmcs 500

Starts ``--bmcs`` lightweight BMCs (``lab.bmcs farm``: pyghmi's BMC server,
one UDP port each on loopback, spread over a few processes so the servers
are not the bottleneck) and reads every one's power state twice in the same
run: through ``IpmiPower`` (one session per BMC, a thread pool, per-BMC
serialisation) and through ``ipmitool -I lanplus -C 3 ... power status``, one
BMC after another, as a cron script would. The driver's second pass reuses
its sessions; both passes are printed. The password reaches ipmitool by the
environment (``-E``), never on its command line.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drivers.base import Power, TemporaryError  # noqa: E402
from drivers.ipmi import Bmc, IpmiPower  # noqa: E402
from orchestrator.secrets.credentials import resolve  # noqa: E402

PASSWORD_FILE = Path("/var/lib/orchestrator-lab/secrets/bmc-password")


@contextmanager
def farm(first: int, count: int, processes: int) -> Iterator[None]:
    share = -(-count // processes)
    started = []
    try:
        for start in range(first, first + count, share):
            server = subprocess.Popen(
                [sys.executable, "-m", "lab.bmcs", "farm", str(start),
                 str(min(share, first + count - start)), str(PASSWORD_FILE)],
                cwd=REPO, stdout=subprocess.PIPE, text=True,
            )
            started.append(server)
            assert server.stdout and server.stdout.readline().strip() == "ready"
        yield
    finally:
        for server in started:
            server.kill()
            server.wait()


def through_driver(power: IpmiPower, hosts: list[str], workers: int) -> tuple[float, int, int]:
    """Elapsed time, BMCs read as off, and reads that needed a second try.

    A read that gets no answer is tried once more, as the orchestrator retries a
    step after a temporary error; the retry's time counts in the total.
    """
    from concurrent.futures import ThreadPoolExecutor

    retried: list[str] = []

    def read(host: str) -> Power:
        try:
            return power.power_state(host)
        except TemporaryError:
            retried.append(host)
            return power.power_state(host)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as callers:
        states = list(callers.map(read, hosts))
    off = sum(state == Power.OFF for state in states)
    return time.perf_counter() - started, off, len(retried)


def through_ipmitool(ports: list[int]) -> tuple[float, int]:
    env = {**os.environ, "IPMI_PASSWORD": PASSWORD_FILE.read_text().strip()}
    started, off = time.perf_counter(), 0
    for port in ports:
        result = subprocess.run(
            ["ipmitool", "-I", "lanplus", "-C", "3", "-H", "127.0.0.1", "-p", str(port),
             "-U", "admin", "-E", "power", "status"],
            capture_output=True, text=True, env=env, timeout=30,
        )
        off += "Chassis Power is off" in result.stdout
    return time.perf_counter() - started, off


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bmcs", type=int, default=500)
    parser.add_argument("--first-port", type=int, default=9400)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    ports = list(range(args.first_port, args.first_port + args.bmcs))
    password = resolve(f"file:{PASSWORD_FILE}", what="bench bmc password")
    hosts = {f"bmc-{port}": Bmc("127.0.0.1", port, "admin", password) for port in ports}
    with farm(args.first_port, args.bmcs, args.processes):
        power = IpmiPower(hosts, timeout=10.0, min_interval=0.0, dead_for=0.0, workers=args.workers)
        cold, cold_off, cold_retried = through_driver(power, list(hosts), args.workers)
        warm, warm_off, warm_retried = through_driver(power, list(hosts), args.workers)
        power.close()
        loop, loop_off = through_ipmitool(ports)
    assert cold_off == warm_off == loop_off == args.bmcs, (cold_off, warm_off, loop_off)
    print(f"bmcs: {args.bmcs} (all read as off by both)")
    print(f"driver, new sessions:      {cold:8.2f} s  ({args.bmcs / cold:7.1f} BMC/s)"
          f"  retried: {cold_retried}")
    print(f"driver, reused sessions:   {warm:8.2f} s  ({args.bmcs / warm:7.1f} BMC/s)"
          f"  retried: {warm_retried}")
    print(f"ipmitool, sequential loop: {loop:8.2f} s  ({args.bmcs / loop:7.1f} BMC/s)")
    print(f"ratio ipmitool / driver (new sessions):    {loop / cold:6.1f}x")
    print(f"ratio ipmitool / driver (reused sessions): {loop / warm:6.1f}x")


if __name__ == "__main__":
    main()
