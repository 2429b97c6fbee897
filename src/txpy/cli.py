"""The `txpy` command: parses arguments, calls porcelain (and remote) functions, prints
the lines they return. Nothing is formatted here."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import load, porcelain
from .errors import TxpyError
from .remote import add_remote, fsck_remote, get_remote
from .remote import clone as remote_clone
from .remote import pull as remote_pull
from .remote import push as remote_push
from .repo import Repository, find_store

console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def echo(lines: Iterable[str]) -> None:
    """Print porcelain's lines as they are: they fit in 80 columns already, so rich neither
    re-wraps them nor reads markup or highlights into them."""
    for line in lines:
        console.print(line, soft_wrap=True, highlight=False, markup=False)


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
    repo = _open(store)
    porcelain.history_named(repo, name or history)  # an unknown name is an error
    echo(porcelain.log(repo, name or history))


@main.command()
@click.argument("commit")
@store_option
@history_option
@_friendly
def show(commit: str, store: Path | None, history: str | None) -> None:
    """Show a commit: its variables, what was not stored, its code and environment."""
    echo(porcelain.show(_open(store), history, commit))


@main.command()
@click.argument("a")
@click.argument("b")
@store_option
@history_option
@_friendly
def diff(a: str, b: str, store: Path | None, history: str | None) -> None:
    """Names added, removed and changed from commit A to commit B."""
    echo(porcelain.diff(_open(store), history, a, b))


@main.command()
@store_option
@history_option
@_friendly
def branch(store: Path | None, history: str | None) -> None:
    """List branches of each history; * marks HEAD's."""
    repo = _open(store)
    porcelain.history_named(repo, history)
    echo(porcelain.branches(repo, history))


@main.command()
@store_option
@history_option
@_friendly
def status(store: Path | None, history: str | None) -> None:
    """The store, and each history's branch, last commit and names it could not store."""
    repo = _open(store)
    porcelain.history_named(repo, history)
    echo(porcelain.status(repo, history))


@main.command()
@store_option
@_friendly
def gc(store: Path | None) -> None:
    """Delete chunks that no commit refers to (e.g. left by a crash)."""
    echo(porcelain.gc(_open(store)))


@main.command()
@click.option("--remote", "remote_name", default=None,
              help="Check this remote (every ref, commit record and chunk) instead.")
@store_option
@_friendly
def fsck(remote_name: str | None, store: Path | None) -> None:
    """Verify every commit, record and chunk against its hash and signature."""
    repo = _open(store)
    with console.status("checking...") as progress:
        def update(i: int, n: int) -> None:
            progress.update(f"checking commit {i + 1}/{n}")

        if remote_name is None:
            checked = porcelain.fsck(repo, update)
        else:
            checked = porcelain.Fsck(fsck_remote(get_remote(repo, remote_name)[1], update))
    echo(checked.lines())
    if not checked.ok:
        sys.exit(1)


@main.command()
@click.argument("commit", default="HEAD")
@store_option
@history_option
@_friendly
def shell(commit: str, store: Path | None, history: str | None) -> None:
    """An interactive Python whose globals are the state of COMMIT (IPython if installed)."""
    repo = _open(store)
    c = porcelain.resolve(repo, history, commit)
    state = load(repo.path, c.history, c.id)
    banner = "\n".join(porcelain.names_line(f"txpy: state of commit {c.short} ({c.history}):",
                                            sorted(state)))
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
    echo([f"remote {name} -> {url}"])


@remote.command("list")
@store_option
@_friendly
def remote_list(store: Path | None) -> None:
    """List remotes."""
    echo(porcelain.remotes(_open(store)))


@main.command()
@click.argument("remote_name", required=False)
@click.argument("branch", required=False)
@click.option("--verify", is_flag=True,
              help="Re-check everything the remote holds for these branches; re-send what "
                   "is damaged.")
@store_option
@history_option
@_friendly
def push(remote_name: str | None, branch: str | None, verify: bool, store: Path | None,
         history: str | None) -> None:
    """Copy commits and missing chunks to a remote (default: origin), then move its branches:
    every branch, or only BRANCH; BRANCH:NEW publishes BRANCH as a new remote branch NEW."""
    repo = _open(store)
    name, target = get_remote(repo, remote_name)
    porcelain.history_named(repo, history)
    if branch is not None and porcelain.names_history(repo, branch):
        history, branch = branch, None  # `txpy push origin HISTORY`, as before branches
    with _progress(f"push to {name}:") as progress:
        stats = remote_push(repo, target, [history] if history else None, progress,
                            spec=branch, verify=verify)
    echo(porcelain.transferred(f"pushed to {name}:", stats))


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
    echo(porcelain.transferred(f"pulled from {name}:", stats))


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
    echo(porcelain.transferred(f"cloned into {store}:", stats))


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
    echo(porcelain.trusted(repo))


# --- txpy run (frontends/runner/) ---------------------------------------------------------------
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
