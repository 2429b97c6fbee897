"""The `txpy` command: parses arguments, calls Repository/Session, prints with rich."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import load
from .errors import TxpyError
from .humanize import size, when
from .model import Commit
from .remote import TransferStats, add_remote, get_remote
from .remote import clone as remote_clone
from .remote import pull as remote_pull
from .remote import push as remote_push
from .repo import Repository, find_store

console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """User mistakes become one clean line, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TxpyError as e:
            raise click.ClickException(str(e)) from None

    return wrapper  # type: ignore[return-value]


store_option = click.option(
    "--store", "store", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="The store directory (default: the .txpy/ in this directory or a parent).")
history_option = click.option(
    "--history", "-H", "history", default=None,
    help="Which history of the store (default: the only one, when there is one).")


def _open(store: Path | None) -> Repository:
    return Repository.open(store if store is not None else find_store())


def _history(repo: Repository, history: str | None) -> str | None:
    if history is not None:
        if history not in repo.histories():
            raise TxpyError(f"no history {history!r} in this store; it has: "
                            f"{', '.join(repo.histories()) or 'none'}")
        return history
    histories = repo.histories()
    return histories[0] if len(histories) == 1 else None


def _histories(store: Path | None, history: str | None) -> tuple[Repository, list[str]]:
    """The store, and the histories a command shows: the one named, or all of them."""
    repo = _open(store)
    _history(repo, history)
    return repo, [history] if history else repo.histories()


def _resolve(repo: Repository, history: str | None, ref: str) -> Commit:
    name = _history(repo, history)
    if name is None and (ref == "HEAD" or not _looks_like_id(ref)):
        raise TxpyError(f"{ref!r} is ambiguous: this store has several histories; pass -H NAME")
    return repo.resolve(name, ref)


def _looks_like_id(ref: str) -> bool:
    return len(ref) >= 4 and all(c in "0123456789abcdef" for c in ref.lower())


def _changes(repo: Repository, commit: Commit, most: int = 4) -> str:
    """'+new ~changed -gone' names against the first parent (everything new for a root)."""
    if commit.parents:
        d = repo.diff(repo.commit(commit.parents[0]), commit)
        marked = ([f"+{n}" for n in d.added] + [f"~{n}" for n in d.changed]
                  + [f"-{n}" for n in d.removed])
    else:
        marked = [f"+{n}" for n in sorted(repo.tree(commit).names)]
    marked = [m for m in marked if not m[1:].startswith("__")]  # txpy's own (__txpy_loop__)
    shown = " ".join(marked[:most])
    return shown + (f" (+{len(marked) - most} more)" if len(marked) > most else "")


def _first_line(commit: Commit) -> str:
    text = commit.message or (commit.code or "").strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= 60 else line[:57] + "..."


@click.group()
@click.version_option(package_name="txpy")
def main() -> None:
    """txpy — Transactional Python: durable, atomic, replicable, time-versioned sessions."""


@main.command()
@click.argument("name", required=False)
@store_option
@history_option
@_friendly
def log(name: str | None, store: Path | None, history: str | None) -> None:
    """List commits, newest first, with the branches pointing at them (of history NAME, e.g.
    `txpy log train.py`, or of every history)."""
    repo, histories = _histories(store, name or history)
    for name in histories:
        refs: dict[str, list[str]] = {}
        for branch, cid in repo.meta.branches(name).items():
            refs.setdefault(cid, []).append(branch)
        head_branch, head = repo.meta.head(name)
        table = Table(title=f"history {name}", title_justify="left", box=box.SIMPLE_HEAD,
                      padding=(0, 1))
        for col in ("commit", "refs", "time", "kind", "new data"):
            table.add_column(col, no_wrap=True)
        table.add_column("names", ratio=1, overflow="fold")
        wide = console.width >= 110  # room for the message or first line of code
        if wide:
            table.add_column("what", overflow="ellipsis", ratio=1)
        for c in repo.log(name):
            marks = refs.get(c.id, [])
            if c.id == head:
                marks = [f"HEAD -> {b}" if b == head_branch else b for b in marks] or ["HEAD"]
            row = [c.short, ", ".join(marks), when(c.time, short=True), c.kind,
                   size(c.stats.get("bytes_new", 0)), _changes(repo, c)]
            table.add_row(*row, *([_first_line(c)] if wide else []))
        console.print(table)
    if not histories:
        console.print("the store has no commits yet")


@main.command()
@click.argument("commit")
@store_option
@history_option
@_friendly
def show(commit: str, store: Path | None, history: str | None) -> None:
    """Show a commit: its variables, what was not stored, its code and environment."""
    repo = _open(store)
    c = _resolve(repo, history, commit)
    tree = repo.tree(c)
    console.print(f"[bold]commit {c.id}[/bold]\nhistory {c.history}   parents "
                  f"{', '.join(p[:12] for p in c.parents) or '-'}   {when(c.time)}   {c.kind}")
    if c.message:
        console.print(c.message)
    table = Table("name", "component", "buffers")
    for name, key in sorted(tree.components.items()):
        manifest = repo.manifest(key)
        table.add_row(name, key[:12], size(sum(b.nbytes for b in manifest.buffers)))
    for name, u in sorted(tree.unstored.items()):
        table.add_row(name, "[red]not stored[/red]", f"{u.type_name}: {u.reason}")
    console.print(table)
    if c.code:
        console.print("[bold]code[/bold]\n" + c.code)
    console.print(f"python {c.env.get('python')} on {c.env.get('platform')}; packages: "
                  + ", ".join(f"{k} {v}" for k, v in c.env.get("packages", {}).items()))


@main.command()
@click.argument("a")
@click.argument("b")
@store_option
@history_option
@_friendly
def diff(a: str, b: str, store: Path | None, history: str | None) -> None:
    """Names added, removed and changed from commit A to commit B."""
    repo = _open(store)
    d = repo.diff(_resolve(repo, history, a), _resolve(repo, history, b))
    if not d:
        console.print("no differences")
    for sign, color, names in (("+", "green", d.added), ("-", "red", d.removed),
                               ("~", "yellow", d.changed)):
        for n in names:
            console.print(f"[{color}]{sign} {n}[/{color}]")


@main.command()
@store_option
@history_option
@_friendly
def branch(store: Path | None, history: str | None) -> None:
    """List branches of each history; * marks HEAD's."""
    repo, histories = _histories(store, history)
    for name in histories:
        head_branch, head = repo.meta.head(name)
        console.print(f"[bold]{name}[/bold]")
        for b, cid in repo.meta.branches(name).items():
            console.print(f"{'*' if b == head_branch else ' '} {b:20} {cid[:12]}")
        if head_branch is None and head:
            console.print(f"* (HEAD detached at {head[:12]})")


@main.command()
@store_option
@_friendly
def gc(store: Path | None) -> None:
    """Delete chunks that no commit refers to (e.g. left by a crash)."""
    removed, freed = _open(store).gc()
    console.print(f"removed {removed} unreferenced chunks, freed {size(freed)}")


@main.command()
@store_option
@_friendly
def fsck(store: Path | None) -> None:
    """Verify every commit, record and chunk against its hash and signature."""
    repo = _open(store)
    with console.status("checking...") as status:
        report = repo.fsck(lambda i, n: status.update(f"checking commit {i + 1}/{n}"))
    for d in report.damage:
        names = f" — affects {', '.join(d.names)}" if d.names else ""
        console.print(f"[red]commit {d.commit[:12]} ({d.history}): {d.what}{names}[/red]")
    console.print(f"{report.commits} commits, {report.chunks} records and chunks checked: "
                  + ("ok" if report.ok else f"{len(report.damage)} problems"))
    if not report.ok:
        sys.exit(1)


@main.command()
@click.argument("commit", default="HEAD")
@store_option
@history_option
@_friendly
def shell(commit: str, store: Path | None, history: str | None) -> None:
    """An interactive Python whose globals are the state of COMMIT (IPython if installed)."""
    repo = _open(store)
    c = _resolve(repo, history, commit)
    state = load(repo.path, c.history, c.id)
    banner = f"txpy: state of commit {c.short} ({c.history}): {', '.join(sorted(state))}"
    try:
        from IPython import start_ipython
    except ImportError:
        import code

        code.interact(banner=banner, local=state)
        return
    print(banner)
    start_ipython(argv=[], user_ns=state)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Where to put the demo's store (default: a temporary dir).")
@_friendly
def demo(directory: Path | None) -> None:
    """A short scripted tour: commit training state, log, diff, rollback, checkout."""
    from .demo import run

    run(directory, console)


# --- remotes: push / pull / clone (remote.py) ---------------------------------------------------
endpoint_option = click.option(
    "--endpoint-url", default=None,
    help="Endpoint of an S3-compatible server (else botocore's usual configuration).")


def _options(endpoint_url: str | None) -> dict[str, Any]:
    return {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else {}


@contextmanager
def _progress(verb: str) -> Iterator[Callable[[str, int, int], None]]:
    with Progress(TextColumn(f"{verb} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        tasks: dict[str, Any] = {}

        def update(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield update


def _stats_line(verb: str, stats: TransferStats) -> str:
    moved = f"; branches: {', '.join(stats.branches)}" if stats.branches else ""
    return (f"{verb} {stats.commits} commits, {stats.objects} chunks, "
            f"{size(stats.bytes)}{moved}")


@main.group()
def remote() -> None:
    """Remotes that push, pull and clone copy histories to and from (any fsspec URL)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@endpoint_option
@store_option
@_friendly
def remote_add(name: str, url: str, endpoint_url: str | None, store: Path | None) -> None:
    """Remember URL (s3://bucket/prefix, file:///path, memory://…) as remote NAME."""
    add_remote(_open(store), name, url, _options(endpoint_url))
    console.print(f"remote {name} -> {url}")


@remote.command("list")
@store_option
@_friendly
def remote_list(store: Path | None) -> None:
    """List remotes."""
    for name, (url, _) in _open(store).meta.remotes().items():
        console.print(f"{name:12} {url}")


@main.command()
@click.argument("remote_name", required=False)
@click.argument("history", required=False)
@store_option
@_friendly
def push(remote_name: str | None, history: str | None, store: Path | None) -> None:
    """Copy commits and missing chunks to a remote (default: origin), then move its branches."""
    repo = _open(store)
    name, target = get_remote(repo, remote_name)
    _history(repo, history)
    with _progress(f"push to {name}:") as progress:
        stats = remote_push(repo, target, [history] if history else None, progress)
    console.print(_stats_line(f"pushed to {name}:", stats))


@main.command()
@click.argument("remote_name", required=False)
@click.option("--trust", is_flag=True, help="Trust the keys that signed the remote's commits.")
@store_option
@_friendly
def pull(remote_name: str | None, trust: bool, store: Path | None) -> None:
    """Fetch a remote's new commits (verified) and fast-forward branches."""
    repo = _open(store)
    name, source = get_remote(repo, remote_name)
    with _progress(f"pull from {name}:") as progress:
        stats = remote_pull(repo, source, name, trust=trust, progress=progress)
    console.print(_stats_line(f"pulled from {name}:", stats))


@main.command()
@click.argument("url")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--trust", is_flag=True,
              help="Trust the keys that signed its commits (loading runs pickled code).")
@endpoint_option
@_friendly
def clone(url: str, directory: Path, trust: bool, endpoint_url: str | None) -> None:
    """Copy every history of a remote into DIRECTORY/.txpy (origin = URL)."""
    directory.mkdir(parents=True, exist_ok=True)
    with _progress("clone:") as progress:
        store, stats = remote_clone(url, directory, trust=trust,
                                    options=_options(endpoint_url), progress=progress)
    console.print(_stats_line(f"cloned into {store}:", stats))


@main.command()
@click.argument("key_id", required=False)
@store_option
@_friendly
def trust(key_id: str | None, store: Path | None) -> None:
    """Trust commits signed by KEY_ID (hex); without it, list the trusted keys."""
    repo = _open(store)
    if key_id:
        if len(key_id) != 64 or any(c not in "0123456789abcdef" for c in key_id):
            raise TxpyError("a key id is 64 hex digits (as shown by `txpy trust` in its store)")
        repo.trust(key_id, "trusted by hand")
    console.print(f"this store's key: {repo.signer.key_id}")
    for k, label in repo.trusted_keys().items():
        console.print(f"  {k}  {label}")


# --- txpy run (frontends/runner.py) ------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": True,
                                "allow_interspersed_args": False})
@click.argument("script", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--fresh", is_flag=True, help="Start over instead of resuming the last run.")
@click.option("--commit-interval", type=float, default=2.0, show_default=True,
              help="Commit at most every this many seconds of work (0: at every statement "
                   "and loop iteration).")
@store_option
@_friendly
def run(script: Path, args: tuple[str, ...], fresh: bool, commit_interval: float,
        store: Path | None) -> None:
    """Run SCRIPT (.py or .ipynb) like python, durably: if it dies, run it again to resume."""
    from .frontends.runner import run as run_program

    sys.exit(run_program(script, args, store=store, fresh=fresh,
                         commit_interval=commit_interval))
