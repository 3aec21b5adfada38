"""The overlay benchmark reports the §9 keys. It runs the benchmark itself, small: real
devices and relays on loopback TCP for the sibling-delivery figure, so it is a system test."""

from __future__ import annotations


def test_overlay_bench_reports_the_design_keys() -> None:
    from benchmarks.overlay_bench import run_overlay_bench

    figures = run_overlay_bench(
        quick=True,
        rounds=256,
        builds=3,
        onion_ops=5,
        deliveries=5,
        introset_rounds=2,
        slow_link_ms=1.0,
    )
    assert set(figures) == {
        "hops",
        "messages_per_s",
        "cpu_us_per_message",
        "floor_cpu_us_per_message",
        "ratio",
        "rtt_p50_ms",
        "rtt_p99_ms",
        "path_build_ms_p50",
        "onion_ops",
        "onion_path_setup_ms_p50",
        *(
            f"{route}_{op}_{figure}"
            for route in ("direct", "onion")
            for op in ("store", "retrieve")
            for figure in ("ms_p50", "ms_p99", "cpu_us_p50")
        ),
        "introset",
        "sibling_delivery",
        "sibling_delivery_slow_link",
        "load_avg_start",
        "load_avg_end",
    }
    assert figures["hops"] == 3 and figures["ratio"] > 0
