"""The report judges a multi-round run on each figure's median over the rounds."""

from __future__ import annotations

from tests.bench.report import judge, langgraph_ratios, ratios
from tests.bench.scenarios import Result


def _rounds(
    target: str, scenario: str, key: str, values: list[float], **cell: object
) -> list[Result]:
    return [
        {"target": target, "scenario": scenario, key: value, "round": round_, **cell}
        for round_, value in enumerate(values)
    ]


def test_langgraph_ratios_divide_the_medians_of_the_rounds() -> None:
    results = [
        *_rounds(
            "runplane-postgres",
            "langgraph",
            "throughput_per_s",
            [214, 190, 182],
            measure="end_to_end",
        ),
        *_rounds(
            "langgraph", "langgraph", "throughput_per_s", [142, 129, 134], measure="end_to_end"
        ),
        *_rounds("runplane-postgres", "langgraph", "p50_ms", [5.8, 4.8, 5.0], measure="pickup"),
        *_rounds("langgraph", "langgraph", "p50_ms", [979, 978, 980], measure="pickup"),
    ]
    figures = langgraph_ratios(results)["runplane-postgres"]
    assert figures == {
        "create_16_vs_langgraph": None,  # not measured
        "end_to_end_16_vs_langgraph": round(190 / 134, 2),  # the last round alone: 1.36
        "pickup_p50_ms": {"runplane": 5.0, "langgraph": 979},
    }


def test_goals_and_echo_ratios_take_the_median_round() -> None:
    unary = {"rpc": "get", "concurrency": 32}
    results = [
        *_rounds("echo", "unary", "throughput_per_s", [5000, 4000, 4500], **unary),
        *_rounds("runplane-postgres", "unary", "throughput_per_s", [2000, 3000, 2900], **unary),
        *_rounds("runplane-postgres", "create_to_claim", "p50_ms", [9.0, 4.0, 4.5], backlog=0),
        *_rounds("runplane-postgres", "create_to_claim", "p50_ms", [9.9, 4.4, 4.95], backlog=100),
    ]
    assert ratios(results) == {"runplane-postgres": {"get_32_vs_echo": round(2900 / 4500, 3)}}
    goals = judge(results, ["runplane-postgres"])
    assert goals["create_to_claim_p50_max_ms"] == {
        "threshold": 5,
        "results": {"runplane-postgres": {"value": 4.5, "pass": True}},  # round 0: 9.0, missed
    }
    assert goals["create_to_claim_100k_backlog_vs_none_max"] == {
        "threshold": 1.5,
        "results": {"runplane-postgres": {"value": 1.1, "pass": True}},
    }


def test_scale_goals_take_the_worst_call_and_stage_of_each_round() -> None:
    results: list[Result] = [
        {
            "target": "runplane-postgres",
            "scenario": "scale",
            "round": round_,
            "p50_growth": {"get": get, "claim": 1.0},
            "metadata_vs_thread_p50": {"10000": 1.2, "100000": metadata},
            "storage": {"event_json_per_run_json": 1.013},
        }
        for round_, (get, metadata) in enumerate([(2.1, 1.4), (0.9, 3.5), (1.2, 1.5)])
    ]
    goals = judge(results, ["runplane-postgres"])
    assert goals["scale_p50_growth_max"]["results"] == {  # type: ignore[index]
        "runplane-postgres": {"value": 1.2, "pass": True}  # worst calls 2.1, 1.0, 1.2
    }
    assert goals["scale_metadata_vs_thread_p50_max"]["results"] == {  # type: ignore[index]
        "runplane-postgres": {"value": 1.5, "pass": True}  # worst stages 1.4, 3.5, 1.5
    }
    assert goals["event_bytes_vs_run_max"]["results"] == {  # type: ignore[index]
        "runplane-postgres": {"value": 1.013, "pass": True}
    }
