"""Figures of the benchmark and the tuner (matplotlib, the optional ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from einops import rearrange

from common.image_io import centre_crop, load_image
from evaluation import harness
from evaluation.benchmark_report import column_name
from evaluation.benchmarking import DefenseRun, pair_key


def require_matplotlib() -> None:
    """``ValueError`` naming the ``plot`` extra if matplotlib is missing (check before work)."""
    _figure_class()


def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ValueError("figures need matplotlib: pip install -e '.[plot]'") from err
    return Figure


def draw_grid(
    runs: Mapping[str, DefenseRun],
    grid_pairs: Sequence[Any],
    path: str | Path,
    crop: int | None = 160,
) -> Path:
    """PNG grid: one row per pair; columns reference, attacked, then each defense's output
    (``none`` omitted: it is the attacked image). Titles give f, Gain and Quality of the whole
    image; tiles show centre crops of ``crop`` px, outputs of another size resized to the
    reference's first. Needs matplotlib (the ``plot`` extra)."""
    Figure = _figure_class()
    columns = [n for n in runs if n != "none"]
    fig = Figure(
        figsize=(2.3 * (2 + len(columns)), 2.8 * len(grid_pairs) + 0.4),
        dpi=100,
        layout="constrained",
    )
    axes = fig.subplots(len(grid_pairs), 2 + len(columns), squeeze=False)
    for row, pair in enumerate(grid_pairs):
        key = pair_key(pair)
        reference, attacked = load_image(pair.reference), load_image(pair.attacked)
        any_run = next(run for run in runs.values() if key in run.pair_keys())
        source = any_run.record(key).source_score
        attacked_score = any_run.record(key).attacked_score
        psnr, ssim = harness.fidelity(reference[None], attacked[None])[0]
        tiles = [
            (reference, f"reference\n{pair.reference.stem}\nf={source:.2f}"),
            (
                attacked,
                f"attacked: {pair.attack}\nf={attacked_score:.2f} "
                f"gain {harness.gain_score(source, attacked_score):.1f}%\n"
                f"Q={harness.quality_score(psnr, ssim):.3f}",
            ),
        ]
        for name in columns:
            run = runs[name]
            if key in run.captured:
                rec = run.record(key)
                # a smaller output (the half-size baseline) is shown as PSNR/SSIM see it
                shown = harness.resized_to(run.captured[key][None], reference.shape[-2:])[0]
                tiles.append(
                    (
                        shown,
                        f"{column_name(run)}\nf={rec.defense_score:.2f} "
                        f"gain {rec.gain:.1f}%\nQ={rec.quality:.3f}",
                    )
                )
            else:
                tiles.append((None, f"{column_name(run)}\n(not run on this image)"))
        for ax, (image, title) in zip(axes[row], tiles, strict=True):
            ax.set_axis_off()
            ax.set_title(title, fontsize=7)
            if image is not None:
                tile = rearrange(centre_crop(image, crop), "c h w -> h w c").numpy()
                ax.imshow(tile, interpolation="nearest")
    crop_note = f"centre crops of {crop} px" if crop else "whole images"
    fig.suptitle(f"Tiles: {crop_note}; scores: whole images (f = metric, Q = quality)", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def draw_pareto(
    trials: Sequence[Any],
    path: str | Path,
    *,
    budget: float,
    min_quality: float,
    chosen: Any | None = None,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Gain vs Quality of the tuner's measured trials, coloured by time ratio.

    ``trials`` have ``gain``, ``quality``, ``time_ratio``, ``skipped`` (skipped ones are left
    out); over-budget trials are drawn as crosses; the Pareto front (lower gain, higher
    quality) as a line; ``chosen`` as a red star; ``baselines`` (name -> figures with
    ``gain``/``quality``) as grey squares; the undefended Quality as a dashed line.
    """
    from evaluation.tuning import pareto_front

    measured = [t for t in trials if not t.skipped]
    if not measured:
        raise ValueError("no measured trial to plot")
    Figure = _figure_class()
    fig = Figure(figsize=(7.0, 5.0), dpi=110, layout="constrained")
    ax = fig.subplots()
    ratios = [t.time_ratio for t in measured]
    vmin, vmax = min(ratios), max(max(ratios), min(ratios) + 1e-9)
    within = [t for t in measured if t.time_ratio <= budget]
    over = [t for t in measured if t.time_ratio > budget]
    points = None
    for group, marker in ((within, "o"), (over, "x")):
        if group:
            points = ax.scatter(
                [t.gain for t in group],
                [t.quality for t in group],
                c=[t.time_ratio for t in group],
                cmap="viridis",
                vmin=vmin,
                vmax=vmax,
                marker=marker,
                label="within budget" if marker == "o" else "over budget",
            )
    front = pareto_front(within)
    if len(front) > 1:
        ax.plot([t.gain for t in front], [t.quality for t in front], "k-", lw=0.8, label="Pareto")
    for name, values in (baselines or {}).items():
        ax.scatter([values["gain"]], [values["quality"]], marker="s", color="0.6")
        ax.annotate(
            name,
            (values["gain"], values["quality"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.axhline(min_quality, color="0.4", ls="--", lw=0.8, label="undefended Quality")
    if chosen is not None:
        ax.scatter(
            [chosen.gain],
            [chosen.quality],
            marker="*",
            s=220,
            color="red",
            label="chosen",
            zorder=3,
        )
        c = chosen.config
        ax.annotate(
            f"t*={c.t_star} steps={c.steps} {c.sampler}\nens={c.ensemble} "
            f"unsharp={c.unsharp_amount:g}",
            (chosen.gain, chosen.quality),
            fontsize=7,
            xytext=(6, -18),
            textcoords="offset points",
        )
    if points is not None:
        fig.colorbar(points, ax=ax, label="time per image / one Linearity forward")
    ax.set_xlabel("Gain on attacked images (%), lower is better")
    ax.set_ylabel("Quality on attacked images, higher is better")
    ax.set_title(f"Tuning trials (budget {budget:g}x Linearity)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
