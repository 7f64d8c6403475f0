"""Turns result records into the comparisons the project's performance goals are written in.

Goals are judged here and reported as booleans in the JSON; they never fail a test run,
because timings on a shared 2-core machine are evidence, not a verdict. With ``--rounds``
every cell is measured once per round, and each figure here is the median over the rounds
(a ratio: of the two medians), so one round on a noisy minute does not decide it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tests.bench.langgraph_compare import SCENARIO as LANGGRAPH
from tests.bench.langgraph_compare import TARGET as LANGGRAPH_SERVER
from tests.bench.scenarios import Result

REFERENCE = "echo"


def _cells(results: Iterable[Result], target: str, scenario: str, **match: object) -> list[Result]:
    """The cells of ``scenario`` measured on ``target`` whose fields equal ``match``: one
    per round."""
    return [
        result
        for result in results
        if result.get("scenario") == scenario
        and result["target"] == target
        and all(result.get(key) == value for key, value in match.items())
    ]


def _number(cell: Result, key: str) -> float | None:
    value = cell.get(key)
    return float(value) if isinstance(value, int | float) else None


def _median_of(cells: Iterable[Result], key: str) -> float | None:
    """``key``'s median over ``cells``; None if none of them has it (a failed cell)."""
    values = [value for cell in cells if (value := _number(cell, key)) is not None]
    return statistics.median(values) if values else None


def _median(
    results: Iterable[Result], target: str, scenario: str, key: str, **match: object
) -> float | None:
    return _median_of(_cells(results, target, scenario, **match), key)


def _unary_medians(results: list[Result], target: str) -> dict[str, dict[str, float]]:
    """Per ``{rpc}_{concurrency}`` cell, in the order first measured: median throughput and
    server CPU per call over the rounds (cells with a figure missing leave it out)."""
    cells: dict[str, list[Result]] = {}
    for cell in _cells(results, target, "unary"):
        cells.setdefault(f"{cell['rpc']}_{cell['concurrency']}", []).append(cell)
    return {
        name: {
            key: value
            for key in ("throughput_per_s", "server_cpu_us_per_call")
            if (value := _median_of(rounds, key)) is not None
        }
        for name, rounds in cells.items()
    }


def ratios(results: list[Result]) -> dict[str, dict[str, float | None]]:
    """Per runplane target: its unary throughput over the echo server's, cell by cell."""
    by_target: dict[str, dict[str, float | None]] = {}
    echo = _unary_medians(results, REFERENCE)
    measured = dict.fromkeys(str(r["target"]) for r in results if r.get("scenario") == "unary")
    for target in (target for target in measured if target != REFERENCE):
        for name, figures in _unary_medians(results, target).items():
            mine = figures.get("throughput_per_s")
            theirs = echo.get(name, {}).get("throughput_per_s")
            ratio = round(mine / theirs, 3) if mine is not None and theirs else None
            by_target.setdefault(target, {})[f"{name}_vs_echo"] = ratio
    return by_target


def langgraph_ratios(results: list[Result]) -> dict[str, object]:
    """Per runplane target: its create and end-to-end throughput over LangGraph Server's
    (above 1: runplane is faster) and both pickup p50s; or why LangGraph was skipped."""
    for result in results:
        if result.get("scenario") == LANGGRAPH and "skipped" in result:
            return {"skipped": result["skipped"], "install": result["install"]}
    measured = dict.fromkeys(
        str(r["target"]) for r in results if r.get("scenario") == LANGGRAPH and "measure" in r
    )
    report: dict[str, object] = {}
    for target in (target for target in measured if target != LANGGRAPH_SERVER):
        figures: dict[str, object] = {}
        for measure in ("create", "end_to_end"):
            ours = _median(results, target, LANGGRAPH, "throughput_per_s", measure=measure)
            other = _median(
                results, LANGGRAPH_SERVER, LANGGRAPH, "throughput_per_s", measure=measure
            )
            figures[f"{measure}_16_vs_langgraph"] = (
                round(ours / other, 2) if ours is not None and other else None
            )
        figures["pickup_p50_ms"] = {
            "runplane": _median(results, target, LANGGRAPH, "p50_ms", measure="pickup"),
            "langgraph": _median(results, LANGGRAPH_SERVER, LANGGRAPH, "p50_ms", measure="pickup"),
        }
        report[target] = figures
    return report


def variant_cost(
    results: list[Result], baselines: Mapping[str, str]
) -> dict[str, dict[str, object]]:
    """Per variant target (a feature on): each unary cell's median throughput and server CPU
    per call against its baseline's (the feature off), and the throughput ratio."""
    report: dict[str, dict[str, object]] = {}
    for variant, baseline in baselines.items():
        mine, theirs = _unary_medians(results, variant), _unary_medians(results, baseline)
        cells: dict[str, object] = {}
        for cell, figures in mine.items():
            base = theirs.get(cell, {})
            on, off = figures.get("throughput_per_s"), base.get("throughput_per_s")
            cells[cell] = {
                "throughput_per_s": {"on": on, "off": off},
                "throughput_ratio": round(on / off, 3) if on and off else None,
                "server_cpu_us_per_call": {
                    "on": figures.get("server_cpu_us_per_call"),
                    "off": base.get("server_cpu_us_per_call"),
                },
            }
        report[variant] = {"baseline": baseline, "unary": cells}
    return report


def _cost_32(results: list[Result], target: str) -> float | None:
    """The larger share of GetRun/CreateRun throughput at 32 in flight that a variant loses
    against its baseline (0.1: 10 % fewer calls per second), over the rounds' medians."""
    baseline = target.rsplit("-", 1)[0]
    if target.endswith("-tls-auth"):
        baseline = target.removesuffix("-tls-auth")
    mine, theirs = _unary_medians(results, target), _unary_medians(results, baseline)
    costs = [
        1 - on / off
        for cell in ("get_32", "create_32")
        if (on := mine.get(cell, {}).get("throughput_per_s"))
        and (off := theirs.get(cell, {}).get("throughput_per_s"))
    ]
    return round(max(costs), 3) if costs else None


@dataclass(frozen=True)
class Goal:
    """A threshold on one figure of a target; ``applies`` picks the targets it judges."""

    name: str
    threshold: float
    at_least: bool
    figure: Callable[[list[Result], str], float | None]
    applies: Callable[[str], bool]


def _get_32_ratio(results: list[Result], target: str) -> float | None:
    return ratios(results).get(target, {}).get("get_32_vs_echo")


def _create_32_throughput(results: list[Result], target: str) -> float | None:
    return _median(results, target, "unary", "throughput_per_s", rpc="create", concurrency=32)


def _create_1_p99(results: list[Result], target: str) -> float | None:
    return _median(results, target, "unary", "p99_ms", rpc="create", concurrency=1)


def _create_to_claim_p50(results: list[Result], target: str) -> float | None:
    return _median(results, target, "create_to_claim", "p50_ms", backlog=0)


def _create_to_claim_backlog_ratio(results: list[Result], target: str) -> float | None:
    """Create-to-claim p50 behind a backlog of other runs over the same without one."""
    empty = _create_to_claim_p50(results, target)
    cells = _cells(results, target, "create_to_claim")
    behind = _median_of((cell for cell in cells if cell.get("backlog")), "p50_ms")
    return round(behind / empty, 3) if behind is not None and empty else None


def _heartbeat_database_cpu(results: list[Result], target: str) -> float | None:
    return _median(results, target, "heartbeat", "database_cpu_percent")


def _watch_1000_p99_vs_echo(results: list[Result], target: str) -> float | None:
    mine = _median(results, target, "watch_latency", "p99_ms", watchers=1000)
    echo = _median(results, REFERENCE, "watch_latency", "p99_ms", watchers=1000)
    return round(mine / echo, 3) if mine is not None and echo else None


def _watch_idle_rss(results: list[Result], target: str) -> float | None:
    return _median(results, target, "watch_idle", "rss_mb")


def _watch_cross_replica_p50(results: list[Result], target: str) -> float | None:
    return _median(results, target, "watch_cross_replica", "p50_ms")


def _end_to_end_16(results: list[Result], target: str) -> float | None:
    return _median(results, target, "end_to_end", "throughput_per_s", clients=16)


def _scale_worst(key: str) -> Callable[[list[Result], str], float | None]:
    """The largest of a scale cell's figures under ``key`` (one per call, or per stage),
    its median over the rounds."""

    def figure(results: list[Result], target: str) -> float | None:
        worst = [
            max(figures.values())
            for cell in _cells(results, target, "scale")
            if isinstance(figures := cell.get(key), dict) and figures
        ]
        return statistics.median(worst) if worst else None

    return figure


def _event_bytes_vs_run(results: list[Result], target: str) -> float | None:
    storage = [
        stored
        for cell in _cells(results, target, "scale")
        if isinstance(stored := cell.get("storage"), dict)
    ]
    return _median_of(storage, "event_json_per_run_json")


GOALS = (
    Goal("metrics_cost_32_max", 0.05, False, _cost_32, lambda t: t.endswith("-metrics")),
    Goal(
        "tls_auth_cost_32_max",
        0.15,
        False,
        _cost_32,
        lambda t: t.endswith(("-tls", "-auth", "-tls-auth")),
    ),
    Goal("get_32_ratio_min", 0.6, True, _get_32_ratio, lambda t: t != REFERENCE),
    Goal(
        "create_32_sqlite_min_per_s",
        1000,
        True,
        _create_32_throughput,
        lambda t: t == "runplane-sqlite",
    ),
    Goal("create_1_p99_max_ms", 10, False, _create_1_p99, lambda t: t != REFERENCE),
    Goal("create_to_claim_p50_max_ms", 5, False, _create_to_claim_p50, lambda t: t != REFERENCE),
    Goal(
        "create_to_claim_100k_backlog_vs_none_max",
        1.5,
        False,
        _create_to_claim_backlog_ratio,
        lambda t: t != REFERENCE,
    ),
    Goal(
        "heartbeat_10k_database_cpu_max_percent",
        30,
        False,
        _heartbeat_database_cpu,
        lambda t: t == "runplane-postgres",
    ),
    Goal("end_to_end_16_min_per_s", 300, True, _end_to_end_16, lambda t: t != REFERENCE),
    Goal(
        "watch_1000_p99_vs_echo_max",
        1.5,
        False,
        _watch_1000_p99_vs_echo,
        lambda t: t != REFERENCE,
    ),
    Goal("watch_idle_5000_rss_max_mb", 350, False, _watch_idle_rss, lambda t: t != REFERENCE),
    # Contract section 14: each call's p50 at the most runs stored within 1.5x of 10,000's.
    Goal("scale_p50_growth_max", 1.5, False, _scale_worst("p50_growth"), lambda t: t != REFERENCE),
    Goal(
        "scale_metadata_vs_thread_p50_max",
        3,
        False,
        _scale_worst("metadata_vs_thread_p50"),
        lambda t: t != REFERENCE,
    ),
    Goal("event_bytes_vs_run_max", 1.1, False, _event_bytes_vs_run, lambda t: t != REFERENCE),
    Goal(
        "watch_cross_replica_p50_max_ms",
        20,
        False,
        _watch_cross_replica_p50,
        lambda t: t == "runplane-postgres",
    ),
)


def judge(results: list[Result], targets: Iterable[str]) -> dict[str, object]:
    """Each goal with its threshold and, per target it applies to, value and pass.

    ``pass`` is None when the figure was not measured (another --concurrency, a failed
    cell); ``all_pass`` counts only the figures that were, and is None if there were none.
    """
    report: dict[str, object] = {}
    verdicts: list[bool] = []
    for goal in GOALS:
        per_target: dict[str, dict[str, object]] = {}
        for target in targets:
            if not goal.applies(target):
                continue
            value = goal.figure(results, target)
            passed = None
            if value is not None:
                passed = value >= goal.threshold if goal.at_least else value <= goal.threshold
                verdicts.append(passed)
            per_target[target] = {"value": value, "pass": passed}
        report[goal.name] = {"threshold": goal.threshold, "results": per_target}
    report["all_pass"] = all(verdicts) if verdicts else None
    return report
