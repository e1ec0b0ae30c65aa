"""`crmflow bench` — the whole pipeline on generated data, measured. Speed is measured here, never in tests."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from crmflow.exceptions import CrmflowError

err_console = Console(stderr=True)


def bench(
    customers: Annotated[int, typer.Option(min=1, help="Customers to generate (children come with them).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 1,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Processor worker processes.")] = 1,
    sink_workers: Annotated[int | None, typer.Option(
        min=1, max=8, help="Sink processes side by side (default: as many as --workers).")] = None,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per topic.")] = 4,
    keep: Annotated[bool, typer.Option(help="Keep the generated data and the target database.")] = False,
    dedupe: Annotated[bool, typer.Option(help="Deduplicate accounts; score the clusters against the truth.")] = False,
    dedupe_cost: Annotated[int | None, typer.Option(
        min=1, help="Instead: N pairs of runs, plain then --dedupe, one right after the other; the dedupe's cost "
                    "per pair and mean rate against mean rate.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object on stdout.")] = False,
    engine: Annotated[str, typer.Option(help="Processor engine: batch (default) or faust.")] = "batch",
    stage: Annotated[str | None, typer.Option(
        help="'process': fill the raw topics first, then time one processor worker alone, for both engines, "
             "with and without dedupe. 'sink': fill the mapped topics first, then time the sink alone "
             "(--sink-members processes, a fresh group and database per run).")] = None,
    sink_members: Annotated[int, typer.Option(min=1, max=8, help="--stage sink: sink processes in its group.")] = 1,
    sink_batch: Annotated[int, typer.Option(min=1, help="--stage sink: the sink's --batch-size.")] = 5000,
    runs: Annotated[int, typer.Option(min=1, help="--stage sink: timed sink runs on the same topics.")] = 1,
    cdc: Annotated[bool, typer.Option("--cdc", help="Instead: the parallel run (cdc, process, sink) under a change "
                                      "workload; end-to-end latency per change.")] = False,
    rate: Annotated[float, typer.Option(min=1, help="With --cdc: changes/s to drive (with --max: the first step).")
                    ] = 1000,
    seconds: Annotated[float, typer.Option(min=1, help="With --cdc: seconds of workload (per step with --max).")
                       ] = 60,
    max_rate: Annotated[bool, typer.Option("--max", help="With --cdc: step the rate up (x1.5) while crmflow keeps "
                                           "up; report the highest.")] = False,
) -> None:
    """Generate N customers, migrate them end to end on the real stack, and report records/s and memory."""
    from crmflow.pipeline.bench import run_bench, run_stage_bench
    from crmflow.stack import get_stack

    if cdc:
        _bench_cdc(rate, seconds, max_rate=max_rate, customers=customers if customers != 100_000 else 2000,
                   seed=seed, partitions=partitions, keep=keep, as_json=as_json)
        return

    if stage == "sink":
        _sink_stage(customers, seed, partitions, sink_members, sink_batch, runs, as_json)
        return
    if stage is not None:
        if stage != "process":
            err_console.print(f"[red]error:[/red] --stage {stage!r}: only 'process' and 'sink' can be timed alone")
            raise typer.Exit(2)
        try:
            rows = run_stage_bench(get_stack().endpoints(), customers, seed=seed, partitions=partitions)
        except CrmflowError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        if as_json:
            print(json.dumps({"stage": "process", "customers": customers, "runs": [r.to_json() for r in rows]}))
            return
        for r in rows:
            f = r.to_json()
            err_console.print(f"  {f['engine']:6} dedupe={f['dedupe']!s:5} {f['records']:,} records in "
                              f"{f['elapsed_s']:7.2f}s: {f['records_per_second']:>9,.0f} rec/s, "
                              f"{f['records_per_cpu_second']:>9,.0f} rec/CPU-s, peak RSS "
                              f"{f['peak_rss_bytes'] / 2**20:,.0f} MiB")
        return
    from crmflow.evaluation.pandas_baseline import measure

    if dedupe_cost is not None:
        _dedupe_cost(dedupe_cost, customers, as_json=as_json, seed=seed, workers=workers, partitions=partitions,
                     engine=engine, baseline=measure, sink_workers=sink_workers)
        return
    try:
        result = run_bench(get_stack().endpoints(), customers, seed=seed, workers=workers, partitions=partitions,
                           keep=keep, dedupe=dedupe, engine=engine, baseline=measure, sink_workers=sink_workers)
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    figures = result.to_json()
    if as_json:
        print(json.dumps(figures))
        return
    err_console.print(f"{figures['records']:,} records ({customers:,} customers) in {figures['elapsed_s']}s: "
                      f"[bold]{figures['records_per_second']:,.0f} records/s[/bold] end to end, "
                      f"reconciled: {figures['reconciled']}")
    for stage, f in figures["stages"].items():
        err_console.print(f"  {stage:9} done after {f['done_after_s']:7.2f}s  {f['records_per_second']:>10,.0f} rec/s")
    if (q := figures.get("dedupe")) is not None:
        err_console.print(f"  dedupe: precision {q['precision']:.4f}, recall {q['recall']:.4f}, F1 {q['f1']:.4f}; "
                          f"{q['clusters']:,} golden accounts for {q['true_clusters']:,} true customers")
    if (b := figures.get("baseline")) is not None:
        err_console.print(f"  the seeds' pandas script on the same files: {b['rows_per_second']:,.0f} rows/s "
                          f"({b['ratio']}x; no cleansing, no Kafka, no database)")
    else:
        err_console.print("  the seeds' pandas script was not timed: pandas is not installed (pip install pandas)")
    for proc, rss in figures["peak_rss_bytes"].items():
        err_console.print(f"  peak RSS {proc}: {rss / 2**20:,.0f} MiB")


def _dedupe_cost(pairs: int, customers: int, *, as_json: bool, **options: Any) -> None:
    """``--dedupe-cost N``: :func:`~crmflow.pipeline.bench.run_dedupe_cost`."""
    from crmflow.pipeline.bench import run_dedupe_cost
    from crmflow.stack import get_stack

    try:
        figures = run_dedupe_cost(get_stack().endpoints(), customers, pairs, **options).to_json()
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(figures))
        return
    cost = figures["cost_percent"]
    for i, (plain, dedupe) in enumerate(zip(figures["plain_records_per_second"], figures["dedupe_records_per_second"],
                                            strict=True)):
        err_console.print(f"  pair {i + 1}: plain {plain:>9,.0f} rec/s, dedupe {dedupe:>9,.0f} rec/s: "
                          f"cost {cost['per_pair'][i]:.1f}%")
    err_console.print(f"[bold]the dedupe costs {cost['mean_of_rates']:.1f}% of the plain rate[/bold] (mean against "
                      f"mean of {pairs} pair(s); median pair {cost['median_pair']:.1f}%)")
    for i, q in enumerate(figures["dedupe"]):
        if q is not None:
            err_console.print(f"  pair {i + 1} dedupe: precision {q['precision']:.4f}, recall {q['recall']:.4f}")


def _bench_cdc(rate: float, seconds: float, *, max_rate: bool, customers: int, seed: int, partitions: int, keep: bool,
               as_json: bool) -> None:
    from crmflow.pipeline.bench_cdc import run_cdc_bench
    from crmflow.stack import get_stack

    try:
        figures = run_cdc_bench(get_stack().endpoints(), rate, seconds, max_rate=max_rate, customers=customers,
                                seed=seed, partitions=partitions, keep=keep)
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(figures))
        return
    err_console.print(f"initial load ({customers:,} customers) landed in {figures['initial_load_s']}s")
    for step in figures["steps"] if max_rate else [figures["run"]]:
        src, lat, growth = step["source"], step["latency"], step["lag_growth"]
        err_console.print(f"  {step['rate']:,.0f} changes/s asked for {step['seconds']:g}s: source "
                          f"{src['rate']:,.0f}/s{'' if src['reached_rate'] else ' (short of the rate)'}, crmflow "
                          f"{step['crmflow_rate']:,.0f}/s; {step['changes_landed']:,} landed, "
                          f"{step['changes_missing']:,} missing")
        if lat:
            err_console.print(f"    latency p50 {lat['p50_s']:.3f}s  p95 {lat['p95_s']:.3f}s  p99 {lat['p99_s']:.3f}s"
                              f"  max {lat['max_s']:.3f}s; last tenth vs first: {growth['ratio']}x, lag growing: "
                              f"{'yes' if growth['growing'] else 'no'}")
    if max_rate:
        err_console.print(f"  [bold]highest rate kept up with: {figures['max_rate_kept_up']:,.0f} changes/s[/bold] "
                          f"({figures['keeps_up_means']}; limited by {figures['limited_by']})")
    rec = figures["reconcile"]
    err_console.print(f"  target equals source (rows per table): {rec['equal']} {rec['target']}")
    for proc, rss in figures["peak_rss_bytes"].items():
        err_console.print(f"  peak RSS {proc}: {rss / 2**20:,.0f} MiB")


def _sink_stage(customers: int, seed: int, partitions: int, members: int, batch: int, runs: int,
                as_json: bool) -> None:
    """``--stage sink``: the sink alone on filled mapped topics (:mod:`crmflow.pipeline.bench_sink`)."""
    from crmflow.pipeline.bench_sink import run_sink_bench
    from crmflow.stack import get_stack

    try:
        rows = run_sink_bench(get_stack().endpoints(), customers, seed=seed, partitions=partitions, runs=runs,
                              members=members, batch_size=batch)
    except CrmflowError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps({"stage": "sink", "customers": customers, "runs": [r.to_json() for r in rows]}))
        return
    for r in rows:
        f = r.to_json()
        err_console.print(f"  sink x{f['members']} batch {f['batch_size']}: {f['records']:,} records in "
                          f"{f['elapsed_s']:7.2f}s: {f['records_per_second']:>9,.0f} rec/s, "
                          f"{f['records_per_cpu_second']:>9,.0f} rec/CPU-s, peak RSS "
                          f"{f['peak_rss_bytes'] / 2**20:,.0f} MiB")
