"""``dspex registry``: list, show and find modules in the module registry, as readable tables, and
register a user module by import path (saved to the registry file, so every later process sees it)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dspex.exceptions import RegistryError
from registry import ModuleInfo, default_registry

__all__ = ["app"]

_SOURCES = ("core", "discovered", "user", "dspex")

app = typer.Typer(
    name="registry",
    help="Query the DSPy module registry: what exists, and where it runs.",
    no_args_is_help=True,
    add_completion=False,
)


def _console() -> Console:
    # Built per command, not at import, so the terminal width (COLUMNS) is read when printing.
    return Console()


def _fail(error: RegistryError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1)


def _modules_table(title: str, modules: list[ModuleInfo]) -> Table:
    table = Table(title=title)
    # Names and short fields never wrap; the capability list takes what room is left.
    table.add_column("name", no_wrap=True)
    table.add_column("category", no_wrap=True)
    table.add_column("pool", no_wrap=True)
    table.add_column("base ms", justify="right", no_wrap=True)
    table.add_column("native", justify="center", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("capabilities", overflow="fold")
    for info in modules:
        table.add_row(
            escape(info.name),
            info.category.value,
            info.pool_type.value,
            f"{info.estimated_duration_ms:,}",
            "yes" if info.native_available else "no",
            info.metadata.source,
            escape(", ".join(info.capabilities)),
        )
    return table


@app.command("list")
def list_command(
    source: str | None = typer.Option(None, "--source", help="Only modules from core, discovered or user."),
) -> None:
    """List every registered module."""
    try:
        modules = default_registry().list_modules()
    except RegistryError as error:
        raise _fail(error) from error
    if source is not None and source not in _SOURCES:
        typer.echo(f"error: unknown source {source!r}; valid sources: {', '.join(_SOURCES)}", err=True)
        raise typer.Exit(code=2)
    if source is not None:
        modules = [m for m in modules if m.metadata.source == source]
    _console().print(_modules_table(f"DSPy module registry ({len(modules)} modules)", modules))


@app.command("show")
def show_command(
    name: str = typer.Argument(..., help="The module's registry name, e.g. dspy.Predict."),
) -> None:
    """Show one module: its record, duration estimates and usage statistics."""
    try:
        registry = default_registry()
        info = registry.get_module(name)
        estimates = {
            size: registry.estimate(name, size) for size in ("small", "normal", "large", "very_large")
        }
        stats = registry.usage_stats(name)
    except RegistryError as error:
        raise _fail(error) from error
    table = Table(title=escape(info.name), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("category", info.category.value),
        ("capabilities", ", ".join(info.capabilities) or "-"),
        ("pool", info.pool_type.value),
        (
            "requirements",
            f"memory {info.requirements.memory}, compute {info.requirements.compute}, "
            f"gpu {'yes' if info.requirements.gpu else 'no'}",
        ),
        ("base duration", f"{info.estimated_duration_ms:,} ms"),
        ("native available", "yes" if info.native_available else "no"),
        ("source", info.metadata.source),
        ("import path", info.metadata.import_path or "-"),
        ("version", info.metadata.version or "-"),
        ("description", info.metadata.description or "-"),
        ("deprecated", "yes" if info.metadata.deprecated else "no"),
    ]
    rows += [
        (f"estimate ({size})", f"{est.ms:,} ms ({est.source}, {est.samples} samples)")
        for size, est in estimates.items()
    ]
    p50 = "-" if stats.p50_ms is None else f"{stats.p50_ms:,.1f} ms"
    p95 = "-" if stats.p95_ms is None else f"{stats.p95_ms:,.1f} ms"
    rows.append(("usage", f"{stats.calls} calls, {stats.failures} failures, p50 {p50}, p95 {p95}"))
    rows += [("example", example) for example in info.examples]
    for label, value in rows:
        table.add_row(label, escape(value))  # descriptions and examples are users' text, not markup
    _console().print(table)


@app.command("find")
def find_command(
    capability: str | None = typer.Option(None, "--capability", "-c", help="A capability, e.g. reasoning."),
    category: str | None = typer.Option(None, "--category", "-k", help="A category, e.g. optimization."),
) -> None:
    """Find modules by capability and/or category (both given: modules matching both)."""
    if capability is None and category is None:
        typer.echo("error: give --capability, --category or both", err=True)
        raise typer.Exit(code=2)
    try:
        registry = default_registry()
        names: list[str] | None = None
        if capability is not None:
            names = registry.find_by_capability(capability)
        if category is not None:
            in_category = registry.find_by_category(category)
            names = in_category if names is None else [n for n in names if n in set(in_category)]
        modules = [registry.get_module(n) for n in names or []]
    except RegistryError as error:
        raise _fail(error) from error
    criteria = " and ".join(
        part
        for part in (
            f"capability {capability!r}" if capability is not None else "",
            f"category {category!r}" if category is not None else "",
        )
        if part
    )
    if not modules:
        typer.echo(f"no module matches {criteria}")
        return
    _console().print(_modules_table(f"Modules with {criteria} ({len(modules)})", modules))


@app.command("register")
def register_command(
    import_path: str = typer.Argument(..., help="The module's import path, 'pkg.mod:Class' (not imported)."),
    category: str = typer.Option("custom", "--category", "-k", help="Its category, e.g. reasoning."),
    capability: list[str] = typer.Option([], "--capability", "-c", help="A capability; repeat for more."),
    pool: str = typer.Option(
        "general", "--pool", "-p", help="The pool that serves it: general, optimizer, gpu."
    ),
    duration_ms: int = typer.Option(1000, "--duration-ms", help="Typical duration of one call, in ms."),
    description: str = typer.Option("", "--description", help="One line saying what it does."),
    version: str | None = typer.Option(None, "--version", help="The version of the package providing it."),
) -> None:
    """Register a user module by import path and save it to the registry file."""
    try:
        registry = default_registry()
        info = registry.register_user_module(
            import_path,
            category=category,
            capabilities=capability,
            pool_type=pool,
            estimated_duration_ms=duration_ms,
            metadata={"description": description, "version": version},
        )
        path = registry.save()
    except RegistryError as error:
        raise _fail(error) from error
    _console().print(_modules_table(escape(f"Registered (saved to {path})"), [info]))
