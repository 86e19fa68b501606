"""``placement demo``: the whole pipeline on a trace shipped with the package."""

from __future__ import annotations

from pathlib import Path

import click

from placement.cli._app import (
    cluster_from_options,
    cluster_options,
    directory_output,
    main,
    progress_bar,
)

__all__ = ["demo"]


@main.command("demo", short_help="Run the whole pipeline on a bundled trace.")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              callback=directory_output("plan.json, init_expert_location.json and report/"),
              help="Where to write the files [default: placement-demo-USER in the temporary "
                   "directory, never inside a repository checkout].")
@click.option("--trace", "source", default="bundled:deepseek-v3-workloads", show_default=True,
              help="Trace with 2+ windows: plan on the first half, judge on the rest.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds for the solve, a safety net (the search is bounded by work) "
                   "[default: solve's, 600].")
@click.option("--seed", type=int, default=0, show_default=True)
@cluster_options
def demo(out_dir: Path | None, source: str, time_limit: float | None, seed: int,
         **kwargs: object) -> None:
    """Solve, validate, export and compare on a bundled trace (default cluster: DeepSeek's
    prefill deployment, 4 nodes x 8 GPUs x 9 slots).

    \b
    placement demo
    placement demo -o demo/                        # keep the files here
    placement demo --trace bundled:deepseek-v3     # token-level: traffic too
    placement demo --trace bundled:mixtral --nodes 2 --gpus-per-node 2 --slots-per-gpu 3
    """
    from placement.demo import default_out_dir, format_demo, run_demo
    from placement.solver import SolveOptions

    out_dir = out_dir if out_dir is not None else default_out_dir()
    if not any(kwargs.get(k) for k in ("cluster_file", "cluster_preset", "num_nodes")):
        kwargs["cluster_preset"] = "deepseek-prefill"
    cluster = cluster_from_options(kwargs)
    click.echo(f"cluster: {cluster.summary()}")
    with progress_bar("solving layers") as progress:
        # each step's line ends the bar first (it is up during the solve only)
        result = run_demo(out_dir, source=source, cluster=cluster,
                          options=(SolveOptions(seed=seed) if time_limit is None
                                   else SolveOptions(time_limit=time_limit, seed=seed)),
                          step=progress.echo if progress is not None else click.echo,
                          progress=progress)
    click.echo(format_demo(result))
