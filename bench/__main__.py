"""`python -m bench`: runs the workloads, prints the table, writes bench/results.json.

    python -m bench [--messages 1000000] [--runs 3]
                    [--only relay,ingest,ceiling,kpis,stats,abuse]
                    [--quick] [--profile DIR]

PostgreSQL is the embedded server (tools.embedded_pg) unless DATABASE_URL is set; each
run creates its own database there (the role needs CREATEDB) and drops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from rich.console import Console

from bench import ceiling, environment, report
from bench.profiling import Profiler
from bench.run import MIX, STAGES, Config, Run, Stalled
from tools.processes import REPO_ROOT, ServerProcessError

RESULTS = Path(__file__).resolve().parent / "results.json"
QUICK_MESSAGES = 50_000


def _stages(text: str) -> frozenset[str]:
    names = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = names - set(STAGES)
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--only takes a comma-separated list of {', '.join(STAGES)}"
        )
    return names


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--messages", type=_positive, default=1_000_000, help="N (default 1,000,000)")
    p.add_argument("--runs", type=_positive, default=3, help="runs; figures are their median")
    p.add_argument(
        "--only", type=_stages, default=frozenset(STAGES), help=f"some of {','.join(STAGES)}"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke check: {QUICK_MESSAGES:,} messages, 1 run; not the benchmark's figures",
    )
    p.add_argument(
        "--small", type=_positive, default=10_000, help="the small delivery, for GetKpis"
    )
    p.add_argument("--kpis-calls", type=_positive, default=10_000, help="GetKpis calls per size")
    p.add_argument("--body-bytes", type=_positive, default=4096, help="HTML body of each message")
    p.add_argument("--stage-timeout", type=float, default=3600.0, help="seconds, per workload")
    p.add_argument(
        "--stall-timeout", type=float, default=180.0, help="seconds without progress: failure"
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record py-spy profiles of both services during relay and ingest into DIR",
    )
    p.add_argument(
        "--ceiling-parts",
        type=_positive,
        default=ceiling.PARTS,
        help=f"connections applying the ceiling's parts at once (default: cores, {ceiling.PARTS})",
    )
    p.add_argument("--output", type=Path, default=RESULTS, help="the JSON results file")
    p.add_argument("--keep-database", action="store_true", help="do not drop each run's database")
    p.add_argument(
        "--no-feed-consumer",
        action="store_true",
        help="no event feed consumer during the ingest (its figures are then absent)",
    )
    return p.parse_args(argv)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds through the runs' finally blocks: processes stopped, database dropped.
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console(stderr=False)
    messages: int = QUICK_MESSAGES if args.quick else args.messages
    runs: int = 1 if args.quick else args.runs
    if args.quick:
        console.print(
            f"[bold yellow]QUICK smoke check: {messages:,} messages, 1 run. "
            "These are not the benchmark's figures.[/bold yellow]"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = REPO_ROOT / ".data" / "bench" / stamp
    config = Config(
        messages=messages,
        small_messages=args.small,
        kpis_calls=args.kpis_calls,
        stages=args.only,
        body_bytes=args.body_bytes,
        stage_timeout=args.stage_timeout,
        stall_timeout=args.stall_timeout,
        log_dir=log_dir,
        keep_database=args.keep_database,
        ceiling_parts=args.ceiling_parts,
        feed_consumer=not args.no_feed_consumer,
    )
    profiler = Profiler(args.profile)
    server, where = environment.server_url()
    machine = environment.machine_info(server, where)
    console.print(
        f"{machine['nproc']} cores, {machine['memory_mb']:,} MB, PostgreSQL "
        f"{machine['postgresql']} ({where}); service logs in {log_dir}"
    )
    results: list[dict[str, Any]] = []
    try:
        for index in range(runs):
            console.rule(f"run {index + 1} of {runs}: {messages:,} messages")
            name = f"bench_{os.getpid()}_{index + 1}"
            got = Run(config, server, name, console, profiler).execute()
            results.append({"figures": got.figures, "info": got.info})
    except (Stalled, ServerProcessError, TimeoutError, RuntimeError, grpc.RpcError) as err:
        console.print(f"[red]run failed: {err}[/red]\nservice and stub logs: {log_dir}")
        return 1
    rows = report.summarize([r["figures"] for r in results], messages, args.small, set(args.only))
    title = (
        f"{'QUICK smoke check, ' if args.quick else ''}median of {runs} run(s), "
        f"{machine['nproc']} cores shared by the services, PostgreSQL and the benchmark"
    )
    report.print_table(console, rows, title)
    ingests = [r["info"]["ingest"] for r in results if "ingest" in r["info"]]
    if ingests:
        console.print(f"feedback events per message (the mix): {ingests[0]['events_per_message']}")
    if any(i["overlapped_with_relay"] for i in ingests):
        console.print(
            "[yellow]The stub ignored hold_feedback: relay and ingest overlapped; the ingest "
            "figure is events / (relay start to last event committed).[/yellow]"
        )
    document = {
        "date": environment.now_iso(),
        "git": environment.git_info(),
        "machine": machine,
        "quick": args.quick,
        "config": {
            "messages": messages,
            "runs": runs,
            "stages": sorted(args.only),
            "small_messages": args.small,
            "kpis_calls": args.kpis_calls,
            "body_bytes": args.body_bytes,
            "mix": {f.name: getattr(MIX, f.name) for f in MIX.DESCRIPTOR.fields},
            "stub_retry_interval_ms": environment.RETRY_INTERVAL_MS,
            "stub_engagement_delay_ms": environment.ENGAGEMENT_DELAY_MS,
            "profiled": args.profile is not None,
            "ceiling_parts": args.ceiling_parts,
        },
        "summary": {row.figure.key: row.as_json() for row in rows},
        "runs": results,
        "profiles": profiler.summaries,
        "markdown": report.markdown(rows),
    }
    report.write_json(args.output, document)
    console.print(f"written: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
