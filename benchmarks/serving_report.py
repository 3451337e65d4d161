"""The serving benchmark's numbers: one wrk window per (round, server, concurrency), summarised
as medians with their spread, ratios of our server to each peer, and the targets met or missed.
Pure functions, unit-tested in tests/unit/test_bench_serving.py; `benchmarks/serving.py` measures.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

OURS = "ours"
LEVELS = (1, 16, 64)


@dataclass
class LoadResult:
    """One wrk window."""

    server: str
    concurrency: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    round: int = 1
    load_average: float = float("nan")  # 1-minute load average when the window ended
    wrk_cpu_share: float = float("nan")  # wrk's CPU seconds / (window x cores)


@dataclass(frozen=True)
class Summary:
    """A server at one concurrency over every round: medians, and req/s min and max."""

    server: str
    concurrency: int
    rounds: int
    requests_per_s: float
    requests_per_s_min: float
    requests_per_s_max: float
    p50_ms: float
    p99_ms: float
    errors: int
    load_average: float
    wrk_cpu_share: float

    @property
    def spread(self) -> str:
        """req/s min-max over the rounds."""
        return f"{self.requests_per_s_min:.0f}-{self.requests_per_s_max:.0f}"


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool


def summarize(results: Iterable[LoadResult]) -> dict[tuple[str, int], Summary]:
    """Medians per (server, concurrency); errors are summed over the rounds."""
    groups: dict[tuple[str, int], list[LoadResult]] = {}
    for result in results:
        groups.setdefault((result.server, result.concurrency), []).append(result)
    return {key: _summary(key, windows) for key, windows in groups.items()}


def _summary(key: tuple[str, int], windows: list[LoadResult]) -> Summary:
    rates = [window.requests_per_s for window in windows]
    return Summary(
        server=key[0],
        concurrency=key[1],
        rounds=len(windows),
        requests_per_s=statistics.median(rates),
        requests_per_s_min=min(rates),
        requests_per_s_max=max(rates),
        p50_ms=statistics.median(window.p50_ms for window in windows),
        p99_ms=statistics.median(window.p99_ms for window in windows),
        errors=sum(window.errors for window in windows),
        load_average=statistics.median(window.load_average for window in windows),
        wrk_cpu_share=statistics.median(window.wrk_cpu_share for window in windows),
    )


def ratio(summaries: dict[tuple[str, int], Summary], peer: str, level: int) -> float:
    """Our median req/s over the peer's at `level`; nan when either was not measured."""
    ours, theirs = summaries.get((OURS, level)), summaries.get((peer, level))
    if ours is None or theirs is None or not theirs.requests_per_s:
        return math.nan
    return ours.requests_per_s / theirs.requests_per_s


def targets(summaries: dict[tuple[str, int], Summary]) -> list[Target]:
    """Issue 26's targets on this machine's medians; a target not measured counts as missed."""
    high, low = summaries.get((OURS, 64)), summaries.get((OURS, 1))
    over_mlserver = ratio(summaries, "mlserver", 64)
    of_limit = ratio(summaries, "limit", 64)
    p99 = high.p99_ms if high else math.nan
    p50 = low.p50_ms if low else math.nan
    return [
        Target("c=64 ours / MLServer req/s >= 3x", f"{over_mlserver:.2f}x", over_mlserver >= 3.0),
        Target("c=64 ours p99 < 50 ms", f"{p99:.1f} ms", p99 < 50.0),
        Target("c=64 ours / limit req/s >= 70%", f"{of_limit:.0%}", of_limit >= 0.70),
        Target("c=1 ours p50 < 3 ms", f"{p50:.2f} ms", p50 < 3.0),
    ]


def format_table(summaries: dict[tuple[str, int], Summary], servers: list[str]) -> str:
    """One line per server and concurrency: medians, req/s spread, errors, load, wrk's CPU."""
    header = (
        f"{'server':<9} {'c':>3} {'rounds':>6} {'req/s':>8} {'min-max':>11} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6} {'load':>5} {'wrk cpu':>7}"
    )
    lines = [header, "-" * len(header)]
    for server in servers:
        for level in LEVELS:
            summary = summaries.get((server, level))
            if summary is None:
                continue
            lines.append(
                f"{server:<9} {level:>3} {summary.rounds:>6} {summary.requests_per_s:>8.1f} "
                f"{summary.spread:>11} {summary.p50_ms:>7.2f} {summary.p99_ms:>7.2f} "
                f"{summary.errors:>6} {summary.load_average:>5.2f} {summary.wrk_cpu_share:>7.1%}"
            )
    return "\n".join(lines)


def format_ratios(summaries: dict[tuple[str, int], Summary], peers: list[str]) -> str:
    """Our median req/s over each peer's, and both p99s, per concurrency."""
    header = f"{'c':>3} " + " ".join(f"{'ours/' + peer:>14} {'p99 ' + peer:>13}" for peer in peers)
    lines = [header + f" {'p99 ours':>9}", "-" * (len(header) + 10)]
    for level in LEVELS:
        cells = []
        for peer in peers:
            theirs = summaries.get((peer, level))
            p99 = f"{theirs.p99_ms:.1f}" if theirs else "-"
            cells.append(f"{ratio(summaries, peer, level):>13.2f}x {p99:>13}")
        ours = summaries.get((OURS, level))
        lines.append(
            f"{level:>3} " + " ".join(cells) + f" {ours.p99_ms if ours else math.nan:>9.1f}"
        )
    return "\n".join(lines)


def format_targets(found: list[Target]) -> str:
    return "\n".join(
        f"  {'met   ' if target.met else 'MISSED'} {target.name:<36} {target.measured}"
        for target in found
    )
