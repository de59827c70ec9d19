"""``churn models``: list, show, compare, promote and roll back registered model versions.

Mounted by ``churn/cli.py`` as a sub-app. Settings come from the main command's ``--env`` and
overrides (through ``churn.cli.settings``), the registry from ``registry.*`` settings. Heavy
modules are imported inside the commands so ``churn --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from churn.failures import one_line_errors_for

if TYPE_CHECKING:
    from rich.table import Table

    from churn_core.promotion import GateResult
    from churn_core.registry import AliasEvent, ModelVersion, Registry

app = typer.Typer(
    no_args_is_help=True, help="Inspect, compare, promote and roll back registered model versions."
)

Ref = Annotated[str, typer.Argument(help="A version number (3 or v3) or an alias (champion).")]
AliasOption = Annotated[str, typer.Option("--alias", help="The alias to move.")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why (kept in the alias history).")]


one_line_errors = one_line_errors_for("churn models")


@contextmanager
def _registry() -> Iterator[tuple[Registry, str]]:
    """The configured registry and model name (closed afterwards)."""
    from churn import cli
    from churn_core.registry import open_registry

    s = cli.settings()
    with open_registry(s.registry, s.resolve, encryption=s.encryption) as registry:
        yield registry, s.model_name


def _print(*renderables: Any) -> None:
    from churn import cli

    for renderable in renderables:
        cli.console.print(renderable)


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _aliases_by_version(aliases: dict[str, int]) -> dict[int, list[str]]:
    by_version: dict[int, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(version, []).append(alias)
    return by_version


def _gate_table(results: list[GateResult]) -> Table:
    from rich.table import Table

    table = Table("gate", "result", "detail", title="promotion gates")
    for result in results:
        verdict = "[green]pass[/green]" if result.passed else "[red]FAIL[/red]"
        table.add_row(result.name, verdict, result.message)
    return table


def _event_table(events: list[AliasEvent], title: str) -> Table:
    from rich.table import Table

    table = Table("at", "alias", "action", "from", "to", "actor", "reason", title=title)
    for event in events:
        action = f"{event.action} (forced)" if event.forced else event.action
        table.add_row(
            event.at.isoformat(timespec="seconds"),
            event.alias,
            action,
            "-" if event.from_version is None else f"v{event.from_version}",
            f"v{event.to_version}",
            event.actor,
            event.reason,
        )
    return table


@app.command("list")
@one_line_errors
def list_command() -> None:
    """Registered versions with their headline metrics and aliases."""
    from rich.table import Table

    with _registry() as (registry, name):
        aliases = _aliases_by_version(registry.aliases(name))
        table = Table(
            "version",
            "created",
            "roc_auc",
            "pr_auc",
            "ece",
            "dataset",
            "aliases",
            title=f"{name} ({registry.description})",
        )
        for meta in registry.list(name):
            table.add_row(
                str(meta.version),
                meta.created_at.strftime("%Y-%m-%d %H:%M"),
                _number(meta.metrics.get("roc_auc")),
                _number(meta.metrics.get("pr_auc")),
                _number(meta.metrics.get("ece")),
                str(meta.lineage.get("dataset", "")),
                ",".join(aliases.get(meta.version, [])),
            )
        _print(table)


def _show_tables(meta: ModelVersion, aliases: list[str], registry: Registry) -> list[Any]:
    from rich.table import Table

    summary = Table("field", "value", title=f"{meta.name} v{meta.version}", show_header=False)
    summary.add_row("aliases", ",".join(aliases) or "-")
    summary.add_row("created", meta.created_at.isoformat(timespec="seconds"))
    summary.add_row("registered by", meta.registered_by or "-")
    summary.add_row("artifacts", f"{registry.artifacts.description}/{meta.artifact_dir}")
    for key, value in sorted(meta.lineage.items()):
        summary.add_row(f"lineage.{key}", str(value))
    for key, value in sorted(meta.params.items()):
        summary.add_row(f"params.{key}", str(value))
    metrics = Table("metric", "value", title="metrics")
    for key, value in sorted(meta.metrics.items()):
        metrics.add_row(key, _number(value))
    tables: list[Any] = [summary, metrics]
    if meta.segments:
        keys = sorted({k for values in meta.segments.values() for k in values})
        segments = Table("segment", *keys, title="segments")
        for segment, values in sorted(meta.segments.items()):
            segments.add_row(
                segment,
                *(_number(values.get(k), 0 if k in ("n", "positives") else 4) for k in keys),
            )
        tables.append(segments)
    if meta.feature_importance:
        importance = Table("feature", "importance", title="feature importance (top 10)")
        ranked = sorted(meta.feature_importance.items(), key=lambda kv: -kv[1])[:10]
        for feature, value in ranked:
            importance.add_row(feature, _number(value))
        tables.append(importance)
    files = Table("file", "bytes", "sha256", title="files")
    for entry in meta.files:
        files.add_row(entry.name, str(entry.size), entry.sha256[:16])
    if meta.files:
        tables.append(files)
    history = registry.metric_history(meta.name, meta.version)
    if len(history) > 1:
        measured = Table("at", "source", "metrics", title="metric history")
        for record in history:
            text = ", ".join(f"{k}={v:.4f}" for k, v in sorted(record.metrics.items()))
            measured.add_row(record.at.isoformat(timespec="seconds"), record.source, text)
        tables.append(measured)
    return tables


@app.command("show")
@one_line_errors
def show_command(ref: Ref) -> None:
    """One version: lineage, params, metrics, segments, importance, files, metric history."""
    with _registry() as (registry, name):
        meta = registry.resolve(name, ref)
        aliases = _aliases_by_version(registry.aliases(name)).get(meta.version, [])
        _print(*_show_tables(meta, aliases, registry))


@app.command("compare")
@one_line_errors
def compare_command(
    a: Ref,
    b: Ref,
    segment_metric: Annotated[
        str, typer.Option(help="The segment metric to list (all segments).")
    ] = "roc_auc",
) -> None:
    """Metrics of B against A (delta = B - A), per segment, and the params that differ."""
    from rich.table import Table

    with _registry() as (registry, name):
        diff = registry.compare(name, a, b)
    va, vb = f"v{diff.a}", f"v{diff.b}"
    metrics = Table("metric", va, vb, "delta", title=f"{name}: {vb} against {va}")
    for row in diff.metrics:
        metrics.add_row(row.metric, _number(row.a), _number(row.b), _signed(row.delta))
    tables: list[Any] = [metrics]
    segments = [s for s in diff.segments if s.metric == segment_metric]
    if segments:
        table = Table("segment", va, vb, "delta", title=f"segments: {segment_metric}")
        for row in segments:
            table.add_row(row.segment, _number(row.a), _number(row.b), _signed(row.delta))
        tables.append(table)
    if diff.params:
        params = Table("param", va, vb, title="params that differ")
        for key, (left, right) in diff.params.items():
            params.add_row(key, str(left), str(right))
        tables.append(params)
    _print(*tables)


@app.command("promote")
@one_line_errors
def promote_command(
    ref: Ref,
    alias: AliasOption = "champion",
    reason: ReasonOption = "",
    force: Annotated[
        bool, typer.Option("--force", help="Promote despite failed gates (needs --reason).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show the gate results.")] = False,
) -> None:
    """Move an alias (champion) to a version that passes the promotion gates."""
    from churn import cli
    from churn_core.registry import PromotionRefused

    with _registry() as (registry, name):
        if dry_run:
            results = registry.check_promotion(name, ref, alias)
            _print(_gate_table(results))
            passed = all(r.passed for r in results)
            cli.console.print(f"dry run: {'would promote' if passed else 'would refuse'}")
            return
        try:
            result = registry.promote(name, ref, alias, reason=reason, force=force)
        except PromotionRefused as refused:
            _print(_gate_table(refused.results))
            cli.errors.print(
                f"[red]churn models promote failed:[/red] PromotionRefused: {refused} "
                "(override with --force --reason '...')",
                highlight=False,
            )
            raise typer.Exit(1) from None
    if not result.changed:
        cli.console.print(f"{alias} already points at {name} v{result.version}: nothing to do")
        return
    _print(_gate_table(result.gates))
    was = "none" if result.previous is None else f"v{result.previous}"
    forced = " [yellow](forced past failed gates)[/yellow]" if result.forced else ""
    cli.console.print(
        f"[green]promoted[/green] {name} v{result.version} to {alias} (was {was}){forced}"
    )


@app.command("rollback")
@one_line_errors
def rollback_command(alias: AliasOption = "champion", reason: ReasonOption = "") -> None:
    """Move an alias back to the version it held before its latest move."""
    from churn import cli

    with _registry() as (registry, name):
        event = registry.rollback(name, alias, reason=reason)
    cli.console.print(
        f"[green]rolled back[/green] {name} {alias}: v{event.from_version} -> v{event.to_version}"
    )


@app.command("history")
@one_line_errors
def history_command(
    alias: Annotated[str | None, typer.Option("--alias", help="Only this alias.")] = None,
) -> None:
    """Every recorded alias move: who, when, from, to, why."""
    with _registry() as (registry, name):
        events = registry.alias_history(name, alias)
    _print(_event_table(events, f"{name} alias history"))
