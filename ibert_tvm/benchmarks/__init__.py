"""``ibert-tvm bench``: integer-only TVM against the engines a user would otherwise pick.

    models.py    the benchmarked models (MiniLM, a random BERT-Base, any local HF dir) and
                 their cached calibration
    engines.py   one class per engine: ``prepare`` (build artifacts; runs in a child process)
                 and ``load`` (a runner; runs in the engine's worker process)
    tvm_fp32.py  the FP32 TVM baseline: torch.export -> Relax, optional MetaSchedule tuning
    worker.py    the worker process (one per engine) and the prepare child, JSON over pipes
    profile.py   per-kernel timings of a TVM VM (instrumented calls) and int8 GEMM throughput
    harness.py   the run: prepare, start workers, interleaved timing rounds, sizes, memory
    report.py    statistics, ratios, targets, markdown, PNG chart
    machine.py   machine, load, versions and git commit for the JSON

Every figure of a report comes from one run: ratios are taken between medians measured in
the same interleaved rounds.
"""
