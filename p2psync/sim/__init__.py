"""The storage simulation, written against the public API: traces (:mod:`.scenario`), their
replay on real devices under virtual time (:mod:`.replay`, :func:`.runner.run_scenario`),
what the nodes hold (:mod:`.holdings`) and the trace-level model (:mod:`.model`). The
benchmarks and the demo that report on them live in the top-level ``benchmarks`` package."""
