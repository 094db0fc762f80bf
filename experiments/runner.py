"""Run a recipe and make its table: ``experiments run`` and ``experiments show``.

A trained recipe is a fixed-point study of the search engine (``search.Search``): every
(row, seed) is one trial, counted, measured and trained by the engine's workers within the
budget, reused when the work directory already holds the same training (architecture, data
set, epochs, seed), logged as a child run of the study's MLflow parent run, and resumable
with ``python -m search resume``. The table is then read back from the study and the work
directory's caches, so ``show`` prints the same table for a finished study and what there is
of an interrupted one. Recipes that train nothing (``measure: attention``) are measured in
this process and stored on an Optuna study of their own, with an MLflow parent run and a
child run per row.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import optuna

from litv2.files import atomic_write
from search.engine.cache import CACHE_FILE, ThroughputCache
from search.engine.candidate import COUNT, MEASURE, TRAIN
from search.engine.driver import Search
from search.core.record import TrialRecord
from search.core.repeats import interval
from search.study.studies import RUN_ID_ATTR, SETTINGS_ATTR, open_study
from search.study.settings import SearchSettings
from search.study.storage import default_storage_url, open_storage
from search.core.target import Target
from search.engine.tracking import ARTIFACTS_DIR, StudyTracker
from space import arch_id

from .options import RunOptions, settings_for
from .recipes import Recipe, load_recipe, row_label
from .intervals import BOOTSTRAP_FROM, MIN_SEEDS_TO_SEPARATE, difference_interval, mean_interval, separated, \
    too_few_seeds_note
from .paper import PAPER_COLUMNS, PAPER_IMG_SIZE, paper_verdicts, verdict_lines
from .table import Column, Dots, Row, Series, bases, csv_text, exact, fixed, giga, latex, markdown, plot_dots, \
    plot_panels, seeds_csv, significant, write_text

ATTENTION_ROWS_ATTR = "experiment_rows"  # on studies of recipes that train nothing
CSV_EXTRA = ("side", "batch", "x", "arch_id", "versus", "top1_seeds", "top1_values", "top1_std", "top1_interval",
             "device_s")  # row keys the CSV has beside its columns
TrialState = optuna.trial.TrialState


@dataclass(frozen=True)
class Outcome:
    """What a run or a show produced: the exit code, the study and the table's rows and files."""

    code: int
    study: str
    rows: list[Row]
    files: list[Path]


def run_recipe(recipe: Recipe, options: RunOptions, out: TextIO | None = None,
               executor: Callable[[Search], Any] | None = None) -> Outcome:
    """Run ``recipe`` to its table; ``executor`` is the search's (tests pass an in-process one)."""
    out = out or sys.stdout
    settings = settings_for(recipe, options)
    if recipe.attention is not None:
        return _run_attention(recipe, settings, options, out)
    code = Search(settings, out=out, executor=executor).run()
    study = open_study(settings.run.storage, settings.search.study)
    rows, files = _publish_trained(recipe, settings, study, _out_dir(options.out, settings), out)
    if code:
        _say(out, f"the experiment was interrupted: continue it with 'python -m search resume --study {settings.search.study}'"
                  f" and print its table with 'python -m experiments show --study {settings.search.study}'")
    return Outcome(code, settings.search.study, rows, files)


def show(study_name: str, workdir: str = ".", storage: str | None = None, out_dir: str | None = None,
         out: TextIO | None = None) -> Outcome:
    """Print (and write) the table of a finished or interrupted experiment."""
    out = out or sys.stdout
    storage_url = storage or default_storage_url(Path(workdir))
    study = open_study(storage_url, study_name)
    if SETTINGS_ATTR not in study.user_attrs:
        raise ValueError(f"study {study_name!r} is not an experiment (it has no settings)")
    settings = SearchSettings.from_json(study.user_attrs[SETTINGS_ATTR])
    settings = settings.with_run(settings.run.moved_to(workdir, storage, None))
    recipe = load_recipe(settings.search.space)
    where = _out_dir(out_dir, settings)
    if recipe.attention is not None:
        rows = study.user_attrs[ATTENTION_ROWS_ATTR]
        files = _publish_attention(recipe, settings, rows, study, where, out)
    else:
        rows, files = _publish_trained(recipe, settings, study, where, out)
    return Outcome(0, study_name, rows, files)


# ---------------------------------------------------------------------- trained tables
def trained_rows(recipe: Recipe, settings: SearchSettings, study: optuna.Study, cache: ThroughputCache,
                 say: Callable[[str], None] = print) -> list[Row]:
    """One row per recipe row: full-size figures from the work directory's caches (params, FLOPs,
    peak memory and the extra resolutions counted or measured here when missing), the proxy
    top-1 of every seed that completed with its mean and 95 % interval, the change against the
    compared row (:mod:`experiments.intervals`) and the device-seconds the row's jobs cost."""
    target = settings.search.target
    trials: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False):
        if TrialRecord.of(trial).duplicate_of is None and trial.params:
            trials.setdefault(row_label(trial.params), []).append(trial)
    rows: list[Row] = []
    for params, config in zip(recipe.space.grid_params(), recipe.space.enumerate()):
        label, arch = row_label(params), arch_id(config)
        mine = trials.get(label, [])
        records = [TrialRecord.of(t) for t in mine]
        done = sorted((t for t in mine if t.state == TrialState.COMPLETE and t.values),
                      key=lambda t: TrialRecord.of(t).seed or 0)
        row: Row = dict(row=label, arch_id=arch, x=params.get(recipe.sweep), **_seed_figures(done),
                        **_costs(records))
        if rows:  # the row its changes are against, named in every row (and the CSV)
            row["versus"] = rows[-1]["row"] if recipe.compare == "previous" else rows[0]["row"]
        row.update(_static_figures(config, arch, target.img_size, cache))
        measured = next((r for r in records if r.throughput is not None), TrialRecord())
        row.update(throughput=measured.throughput, throughput_spread=measured.throughput_spread,
                   throughput_low=measured.throughput_low, throughput_high=measured.throughput_high,
                   peak_memory_mb=_peak_memory(config, arch, target, measured, cache, say))
        for height, width in recipe.resolutions:
            row.update(_dense_figures(config, arch, height, width, target, cache, say))
        row["note"] = _note(records, settings.search.seeds - row["seeds"], settings.search.seeds)
        rows.append(row)
    for row, base in zip(rows, bases(rows)):
        if base is not row and row["top1_values"] and base["top1_values"]:
            change = difference_interval(row["top1_values"], base["top1_values"])
            row.update(top1_change=change.mean, top1_change_low=change.low, top1_change_high=change.high,
                       top1_separated=separated(change, row["seeds"], base["seeds"]))
    return rows


def _note(records: list[TrialRecord], missing: int, seeds: int) -> str:
    """What a reader of the row must know: seeds the budget left untrained, and trainings
    reused from other studies (which this row's cost columns do not count)."""
    notes = []
    if missing > 0:
        why = " (budget)" if any(r.not_trained for r in records) else ""
        notes.append(f"{missing} of {seeds} seeds not trained{why}")
    reused = [r.training_reused_from for r in records if r.training_reused_from]
    if reused:
        notes.append(f"seeds reused from {', '.join(sorted(set(reused)))}: {len(reused)}")
    return "; ".join(notes)


def _seed_figures(done: list[optuna.trial.FrozenTrial]) -> Row:
    """Each seed's top-1 and their mean with its 95 % interval (none without a complete seed)."""
    values = [t.values[0] for t in done]
    figures: Row = dict(seeds=len(values), top1_values=values, top1_seeds=[TrialRecord.of(t).seed for t in done],
                        top1_trials=[t.number for t in done])
    if values:
        mean = mean_interval(values)
        figures.update(top1=mean.mean, top1_low=mean.low, top1_high=mean.high, top1_interval=mean.method,
                       top1_std=statistics.stdev(values) if len(values) > 1 else None)
    return figures


def _costs(records: list[TrialRecord]) -> Row:
    """Device-seconds the row's jobs were charged: training, and counting plus measuring."""
    spent = {kind: sum(r.costs.get(kind, 0.0) for r in records) for kind in (COUNT, MEASURE, TRAIN)}
    return dict(train_device_s=spent[TRAIN], measure_device_s=spent[COUNT] + spent[MEASURE],
                device_s=sum(r.device_seconds for r in records))


def _peak_memory(config, arch: str, target: Target, measured: TrialRecord, cache: ThroughputCache,
                 say: Callable[[str], None]) -> float | None:
    """Peak memory of an inference at the target: the CUDA allocator's peak the measurement
    recorded, or on a CPU the resident-set peak of a fresh process (:mod:`litv2.memory`:
    a warm worker's reused heap reads nothing), measured once per architecture and target."""
    if target.device == "cuda":
        return measured.peak_memory_mb
    if target.device != "cpu" or target.runtime != "eager":  # litv2.memory runs eager PyTorch only
        return None
    figures = cache.get_memory(arch, target.key)
    if figures is None:
        from litv2.memory import inference_peak_mb

        say(f"{arch}: measuring the peak memory of an inference on {target.key} in a fresh process")
        try:
            peak = inference_peak_mb(config, target.batch_size, target.img_size, target.precision, target.threads)
        except RuntimeError as error:  # the child died (e.g. out of memory): no figure, the table goes on
            say(f"{arch}: no peak memory: {error}")
            return None
        figures = {"peak_mb": None} if peak is None else peak.to_dict()  # None: this system has no such figure
        cache.put_memory(arch, target.key, figures)
    return figures["peak_mb"]


def trained_columns(recipe: Recipe, settings: SearchSettings) -> list[Column]:
    target = settings.search.target
    columns = [Column("params", "params", exact), Column("flops", f"GFLOPs@{target.img_size}", giga),
               Column("throughput", f"img/s {target.key}", fixed(1), interval=("throughput_low", "throughput_high"),
                      show_interval=True),
               Column("peak_memory_mb", "peak MB" + ("" if target.device == "cuda" else " (RSS)"), fixed(0))]
    for height, width in recipe.resolutions:
        key = f"{height}x{width}"
        columns += [Column(f"flops_{key}", f"GFLOPs@{width}x{height}", giga),
                    Column(f"throughput_{key}", f"img/s@{width}x{height}", fixed(2), spread=f"throughput_{key}_spread",
                           interval=(f"throughput_{key}_low", f"throughput_{key}_high"))]
    columns += [Column("top1", f"proxy top-1 % ({settings.search.dataset}, {settings.search.epochs} ep)", fixed(2),
                       change="points", count="seeds", interval=("top1_low", "top1_high"), show_interval=True),
                Column("train_device_s", "train dev-s", exact, change=None),
                Column("measure_device_s", "measure dev-s", exact, change=None)]
    return columns


def _static_figures(config, arch: str, img_size: int, cache: ThroughputCache) -> dict[str, Any]:
    """Params and FLOPs of the full-size network: the search's count, or counted here for a
    row the budget did not reach (they need no training)."""
    figures = cache.get_figures(arch, img_size)
    if figures is None:
        from search.engine.measuring import count_architecture

        figures = count_architecture(config.to_json(), img_size)
        cache.put_figures(arch, img_size, figures)
    return figures


def _dense_figures(config, arch: str, height: int, width: int, target: Target, cache: ThroughputCache,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """FLOPs and throughput of the full-size network on a ``height x width`` input, cached
    in the work directory like the search's own figures."""
    key = target.key_at(height, width)
    from litv2.measure import device_fingerprint

    figures = cache.get(arch, key, device_fingerprint(target.device))  # measured in this process
    if figures is None:
        import torch

        from litv2 import build_model, count_flops

        from .measuring import measure_forward

        say(f"{arch}: measuring at {width}x{height} on {key}")
        torch.manual_seed(0)
        model = build_model(config, num_classes=1000, img_size=(height, width))
        figures = dict(flops=count_flops(model, (3, height, width)),
                       **measure_forward(model, torch.randn(target.batch_size, 3, height, width), target))
        cache.put(arch, key, figures)
    name = f"{height}x{width}"
    low, high = interval(figures)
    return {f"flops_{name}": figures["flops"], f"throughput_{name}": figures["throughput"],
            f"throughput_{name}_spread": figures["throughput_spread"], f"throughput_{name}_low": low,
            f"throughput_{name}_high": high}


def _publish_trained(recipe: Recipe, settings: SearchSettings, study: optuna.Study, where: Path,
                     out: TextIO) -> tuple[list[Row], list[Path]]:
    cache = ThroughputCache(settings.run.workdir / CACHE_FILE)
    rows = trained_rows(recipe, settings, study, cache, lambda line: _say(out, line))
    columns = trained_columns(recipe, settings)
    verdicts = paper_verdicts(rows, columns, recipe.paper) if recipe.paper else []
    shown = [*columns, *(PAPER_COLUMNS if recipe.paper else [])]
    lines = [f"{recipe.name} ({settings.search.study}): {recipe.description}", markdown(rows, shown),
             *_reading(rows, recipe, settings), *verdict_lines(verdicts, recipe.paper), _cost_line(rows, settings)]
    if recipe.sweep:
        plot = lambda path: _plot_sweep(path, recipe, settings, rows)  # noqa: E731
    else:
        plot = lambda path: _plot_rows(path, recipe, settings, rows)  # noqa: E731
    return rows, _publish(recipe, settings, study, rows, shown, lines, plot, where, out,
                          extra={f"{recipe.name}-seeds.csv": seeds_csv(rows)})


def _reading(rows: list[Row], recipe: Recipe, settings: SearchSettings) -> list[str]:
    """How to read the table: the intervals, the separation rule and its verdicts."""
    versus = "the row above" if recipe.compare == "previous" else "the first row"
    lines = [f"proxy top-1: mean over seeds [95 % interval: t for n < {BOOTSTRAP_FROM}, bootstrap from "
             f"{BOOTSTRAP_FROM}]; (change against {versus} [its 95 % interval: Welch's t, or bootstrap]); a change "
             f"is separated when its interval excludes 0. img/s: median [95 % interval], separated when the "
             f"intervals do not overlap. {_memory_note(settings.search.target)}"]
    trained = [row["seeds"] for row in rows if row["seeds"]]
    changed = [row for row in rows if row.get("top1_change") is not None]
    if trained and max(trained) < MIN_SEEDS_TO_SEPARATE:
        lines.append(too_few_seeds_note(max(trained)))
    elif changed:
        short = [row["row"] for row in rows if 0 < row["seeds"] < MIN_SEEDS_TO_SEPARATE]
        if short:
            lines.append(f"rows with fewer than {MIN_SEEDS_TO_SEPARATE} seeds get no verdict: {', '.join(short)}")
        called = [f"{row['row']} vs {row['versus']} {row['top1_change']:+.2f} "
                  f"[{row['top1_change_low']:+.2f}, {row['top1_change_high']:+.2f}]"
                  for row in changed if row.get("top1_separated")]
        lines.append("separated top-1 changes: " + ("; ".join(called) or "none"))
    return lines


def _memory_note(target: Target) -> str:
    if target.device == "cpu" and target.runtime != "eager":
        return f"peak MB: not measured for the {target.runtime} runtime (the fresh-process figure is eager PyTorch's)."
    if target.device == "cuda":
        return "peak MB: the CUDA allocator's peak during the throughput measurement (weights, input, activations)."
    if target.device == "cpu":
        return ("peak MB (RSS): the peak resident set an inference added in a fresh process (weights, input, "
                "activations, allocator slack).")
    return f"peak MB: not measured on {target.device}."


def _cost_line(rows: list[Row], settings: SearchSettings) -> str:
    train = sum(row["train_device_s"] for row in rows)
    measure = sum(row["measure_device_s"] for row in rows)
    total = sum(row["device_s"] for row in rows)
    budget = settings.search.budget
    return (f"device-seconds: trainings {train:,.0f}, counting and measuring {measure:,.0f}, in all {total:,.0f} "
            f"({budget.kind}-seconds; the budget: {budget.seconds:,.0f})")


def _plot_sweep(path: Path, recipe: Recipe, settings: SearchSettings, rows: list[Row]) -> None:
    target = settings.search.target
    xs = [row["x"] for row in rows]
    giga_of = lambda values: [None if v is None else v / 1e9 for v in values]  # noqa: E731
    speed = [Series(target.key, xs, [r.get("throughput") for r in rows], _errors(rows, "throughput"))]
    flops = [Series(f"{target.img_size} px", xs, giga_of([r.get("flops") for r in rows]))]
    for height, width in recipe.resolutions:
        key = f"{height}x{width}"
        speed.append(Series(f"{width}x{height}", xs, [r.get(f"throughput_{key}") for r in rows],
                            [r.get(f"throughput_{key}_spread") for r in rows]))
        flops.append(Series(f"{width}x{height}", xs, giga_of([r.get(f"flops_{key}") for r in rows])))
    accuracy_panel = f"proxy top-1 % ({settings.search.dataset})"
    accuracy = [Series("mean [95 % interval] over seeds", xs, [r.get("top1") for r in rows], _errors(rows, "top1"))]
    paper = {}
    if recipe.paper:
        theirs = [recipe.paper.value(r["row"], "flops") for r in rows]
        if any(v is not None for v in theirs) and target.img_size == PAPER_IMG_SIZE:  # ours share their scale
            flops.append(Series(f"paper, {target.img_size} px", xs, giga_of(theirs)))
        top1 = [recipe.paper.value(r["row"], "top1") for r in rows]
        if any(v is not None for v in top1):  # ImageNet top-1 and the proxy's do not: an axis of its own
            paper[accuracy_panel] = Series("paper top-1 % (ImageNet-1K)", xs, top1)
    plot_panels(path, f"{recipe.name} ({settings.search.study})", recipe.sweep, {
        accuracy_panel: accuracy, "img/s (median [95 % interval])": speed, "GFLOPs": flops,
    }, log_y=("img/s (median [95 % interval])", "GFLOPs") if recipe.resolutions else (), paper=paper)


def _plot_rows(path: Path, recipe: Recipe, settings: SearchSettings, rows: list[Row]) -> None:
    labels = [row["row"] for row in rows]
    paper = recipe.paper

    def paper_values(metric: str) -> list[float | None] | None:
        values = [paper.value(label, metric) for label in labels] if paper else []
        return values if any(v is not None for v in values) else None

    plot_dots(path, f"{recipe.name} ({settings.search.study})", labels, [
        Dots(f"proxy top-1 % ({settings.search.dataset}, {settings.search.epochs} ep)",
             [r.get("top1") for r in rows], [r.get("top1_low") for r in rows], [r.get("top1_high") for r in rows],
             each=[r["top1_values"] for r in rows], paper=paper_values("top1"), paper_label="paper top-1 % (ImageNet)"),
        Dots(f"img/s {settings.search.target.key}", [r.get("throughput") for r in rows],
             [r.get("throughput_low") for r in rows], [r.get("throughput_high") for r in rows],
             paper=paper_values("throughput"), paper_label="paper img/s (RTX 3090, bs 64)"),
    ])


def _errors(rows: list[Row], key: str) -> list[tuple[float, float] | None]:
    """Per row the distance from the value down to its interval's low end and up to its high end."""
    return [(r[key] - r[f"{key}_low"], r[f"{key}_high"] - r[key])
            if r.get(key) is not None and r.get(f"{key}_low") is not None and r.get(f"{key}_high") is not None
            else None for r in rows]


# ---------------------------------------------------------------------- tables that train nothing
def _run_attention(recipe: Recipe, settings: SearchSettings, options: RunOptions, out: TextIO) -> Outcome:
    from search.core.constraints import parse_count

    from .attention import attention_rows, available_memory

    target = settings.search.target
    limit = int(parse_count(options.max_memory, "--max-memory")) if options.max_memory else available_memory(
        target.device)
    storage = open_storage(settings.run.storage)
    if settings.search.study in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        raise ValueError(f"study {settings.search.study!r} already exists; pick another --study")
    _say(out, f"study {settings.search.study}: {recipe.name} on {target.key}, memory limit {limit / 2**20:,.0f} MB; "
              f"storage {settings.run.storage}")
    rows = attention_rows(recipe, target, limit, lambda line: _say(out, line))
    study = optuna.create_study(study_name=settings.search.study, storage=storage)
    study.set_user_attr(SETTINGS_ATTR, settings.to_json())
    study.set_user_attr(ATTENTION_ROWS_ATTR, rows)
    tracker = StudyTracker(settings.run.tracking_uri, settings.run.workdir / ARTIFACTS_DIR)
    run_id = tracker.start(settings.search.study, {**settings.as_params(), "max_memory_bytes": limit})
    study.set_user_attr(RUN_ID_ATTR, run_id)
    for number, label in enumerate(recipe.labels):
        mine = [row for row in rows if row["label"] == label]
        metrics = {f"{key}_{row['side']}": row[key] for row in mine
                   for key in ("params", "flops", "throughput", "throughput_spread", "peak_memory_mb") if row.get(key)}
        tracker.log_trial(number, {"row": label, "kind": mine[0]["kind"]}, metrics,
                          {"row": label, "status": "measured"})
    try:
        files = _publish_attention(recipe, settings, rows, study, _out_dir(options.out, settings), out)
    finally:
        tracker.finish()
    return Outcome(0, settings.search.study, rows, files)


ATTENTION_COLUMNS = [Column("params", "params", exact), Column("flops", "GFLOPs/map", giga),
                     Column("throughput", "maps/s", significant(3), spread="throughput_spread",
                            interval=("throughput_low", "throughput_high")),
                     Column("peak_memory_mb", "peak MB", fixed(0))]


def _publish_attention(recipe: Recipe, settings: SearchSettings, rows: list[Row], study: optuna.Study, where: Path,
                       out: TextIO) -> list[Path]:
    from .attention import speedup_lines

    lines = [f"{recipe.name} ({settings.search.study}) on {settings.search.target}: {recipe.description}",
             markdown(rows, ATTENTION_COLUMNS, label="attention, token map"),
             "throughput against the first row, per side:", *speedup_lines(rows)]
    return _publish(recipe, settings, study, rows, ATTENTION_COLUMNS, lines,
                    lambda path: _plot_attention(path, recipe, settings, rows), where, out)


def _plot_attention(path: Path, recipe: Recipe, settings: SearchSettings, rows: list[Row]) -> None:
    panels: dict[str, list[Series]] = {"maps/s (median +- spread)": [], "GFLOPs per map": [], "peak MB": []}
    for label in recipe.labels:
        mine = [row for row in rows if row["label"] == label]
        sides = [row["side"] for row in mine]
        panels["maps/s (median +- spread)"].append(Series(label, sides, [r.get("throughput") for r in mine],
                                                          [r.get("throughput_spread") for r in mine]))
        panels["GFLOPs per map"].append(Series(label, sides, [r["flops"] / 1e9 for r in mine]))
        panels["peak MB"].append(Series(label, sides, [r.get("peak_memory_mb") for r in mine]))
    plot_panels(path, f"{recipe.name} on {settings.search.target} ({settings.search.study})", "token-map side", panels,
                log_y=("maps/s (median +- spread)", "GFLOPs per map"), log_x=True)


# ---------------------------------------------------------------------- output
def _publish(recipe: Recipe, settings: SearchSettings, study: optuna.Study, rows: list[Row], columns: list[Column],
             lines: list[str], plot: Callable[[Path], None] | None, where: Path, out: TextIO,
             extra: dict[str, str] | None = None) -> list[Path]:
    """Print the table; write it as Markdown, CSV and LaTeX (the plot and the ``extra`` files
    by name) to ``where``; attach them to the study's MLflow parent run."""
    text = "\n\n".join(lines)
    _say(out, "\n" + text)
    paths = [write_text(where / f"{recipe.name}.md", text),
             write_text(where / f"{recipe.name}.csv", csv_text(rows, columns, extra=CSV_EXTRA)),
             write_text(where / f"{recipe.name}.tex", latex(rows, columns)),
             *(write_text(where / name, text) for name, text in (extra or {}).items())]
    if plot is not None:
        paths.append(atomic_write(where / f"{recipe.name}.png", plot))
    run_id = study.user_attrs.get(RUN_ID_ATTR)
    if run_id:
        StudyTracker(settings.run.tracking_uri, settings.run.workdir / ARTIFACTS_DIR).log_artifacts(paths, run_id)
    _say(out, f"\nwrote {', '.join(str(p) for p in paths)}" + (f"; logged to MLflow run {run_id}" if run_id else ""))
    return paths


def _out_dir(out: str | None, settings: SearchSettings) -> Path:
    return Path(out) if out else settings.run.workdir / "results" / settings.search.study


def _say(out: TextIO, line: str) -> None:
    print(line, file=out, flush=True)
