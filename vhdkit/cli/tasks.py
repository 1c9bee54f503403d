"""CLI commands: task (create, list, show, wait) and worker (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

import json
import sys
import time
from typing import Optional

import click

from . import main
from ._common import caller_of, data_option, emit, identity_options, json_option, open_registry, settings

_TERMINAL = ("success", "failure")


def _identity(f):
    return data_option()(identity_options(f))


def _open(data_dir: Optional[str], account: Optional[str], roles: Optional[str]):
    who = caller_of(account, roles)
    return open_registry(data_dir), who


def _task_line(t: dict) -> str:
    prog = ""
    if t.get("status") == "processing" and t.get("stage"):
        done, total = t.get("bytes_done"), t.get("bytes_total")
        prog = f" stage={t['stage']}" + (f" {done}/{total} bytes" if done is not None and total else "")
    res = f" result={json.dumps(t['result'])}" if t.get("result") else ""
    msg = f" message={t['message']!r}" if t.get("message") else ""
    return f"{t['id']}  {t['type']:<6}  {t['status']:<10}{prog}{res}{msg}"


def _task_dict(t) -> dict:
    d = t.to_dict()
    # progress of a running task (not part of the v2 task schema)
    d.update({"stage": t.stage, "bytes_done": t.bytes_done, "bytes_total": t.bytes_total})
    return d


@main.group("task")
def task() -> None:
    """Import and export tasks (run by `vhdkit worker`).

    \b
    Example:
      vhdkit task create import --from images/disk.vhd --name web --account A --roles admin
    """


@task.command("create")
@click.argument("kind", type=click.Choice(["import", "export"]))
@click.option("--from", "import_from", help="import: CONTAINER/OBJECT in your object store.")
@click.option("--name", help="import: the new image's name.")
@click.option("--format", "import_format", type=click.Choice(["vhd", "vhdx"]), default="vhd", show_default=True,
              help="import: the object's format (a VHDX is converted to a dynamic VHD).")
@click.option("--image", "image_uuid", help="export: the image id.")
@click.option("--container", help="export: the receiving container.")
@click.option("--input", "raw_input", help="The task input as JSON (instead of the options above).")
@_identity
@json_option
def task_create(kind, import_from, name, import_format, image_uuid, container, raw_input, data_dir, account, roles,
                as_json):
    """Create an import or export task.

    \b
    Examples:
      vhdkit task create import --from images/disk.vhd --name web
      vhdkit task create export --image 0b7c… --container exports
    """
    if raw_input:
        try:
            inp = json.loads(raw_input)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"not JSON: {e}", param_hint="--input")
    elif kind == "import":
        if not import_from:
            raise click.UsageError("import needs --from CONTAINER/OBJECT")
        inp = {"import_from": import_from, "import_from_format": import_format,
               "image_properties": {"name": name} if name else {}}
    else:
        if not image_uuid or not container:
            raise click.UsageError("export needs --image ID and --container NAME")
        inp = {"image_uuid": image_uuid, "receiving_swift_container": container}
    reg, caller = _open(data_dir, account, roles)
    t = reg.create_task(caller, kind, inp)
    emit(_task_dict(t), as_json, _task_line)


@task.command("list")
@click.option("--status", type=click.Choice(["pending", "processing", "success", "failure"]))
@click.option("--type", "type_", type=click.Choice(["import", "export"]))
@_identity
@json_option
def task_list(status, type_, data_dir, account, roles, as_json):
    """List your account's tasks, newest first.

    \b
    Example:
      vhdkit task list --status failure --json
    """
    reg, caller = _open(data_dir, account, roles)
    params = {k: v for k, v in (("status", status), ("type", type_)) if v}
    tasks = [_task_dict(t) for t in reg.list_tasks(caller, params).tasks]
    emit({"tasks": tasks}, as_json, lambda d: "\n".join(_task_line(t) for t in d["tasks"]) or "(no tasks)")


@task.command("show")
@click.argument("task_id")
@_identity
@json_option
def task_show(task_id, data_dir, account, roles, as_json):
    """Show a task, with the stage and bytes done while it runs.

    \b
    Example:
      vhdkit task show 5e0c…
    """
    reg, caller = _open(data_dir, account, roles)
    emit(_task_dict(reg.show_task(caller, task_id)), as_json, _task_line)


@task.command("wait")
@click.argument("task_id")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait.")
@_identity
@json_option
def task_wait(task_id, timeout, data_dir, account, roles, as_json):
    """Wait until a task ends; exit 0 on success, 1 on failure.

    \b
    Example:
      vhdkit task wait 5e0c… --timeout 600
    """
    reg, caller = _open(data_dir, account, roles)
    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    while True:
        t = reg.show_task(caller, task_id)
        if t.status in _TERMINAL:
            break
        if time.monotonic() > deadline:
            hint = ("; no worker has claimed it: is `vhdkit worker` running on this data directory?"
                    if t.status == "pending" else "")
            raise click.ClickException(f"task {task_id} still {t.status} after {timeout:g} s{hint}")
        if tty:
            click.echo("\r" + _task_line(_task_dict(t))[:150] + "\x1b[K", err=True, nl=False)
        time.sleep(0.2)
    if tty:
        click.echo("", err=True)
    d = _task_dict(t)
    emit(d, as_json, _task_line)
    if t.status != "success":
        sys.exit(1)


@main.command("worker")
@data_option("Data directory: the SQLite registry shared with the API server and other workers on this "
             "host, or with VHDKIT_DATABASE_URL only this worker's scratch space.")
@click.option("--once", is_flag=True, help="Run one pending task (if any) and exit.")
@click.option("--until-idle", is_flag=True, help="Run tasks until none is pending, then exit.")
@click.option("--poll", type=float, default=1.0, show_default=True, help="Seconds between polls when idle.")
@click.option("--id", "worker_id", help="Worker id (default: host:pid:random).")
@json_option
def worker(data_dir, once, until_idle, poll, worker_id, as_json):
    """Run import/export tasks from the registry in DATA.

    Any number of workers, on any hosts that reach the registry's database
    and the blob store, may run at once; each task runs once.  A worker that
    dies loses its lease and the task is retried once; one stopped by SIGINT
    or SIGTERM gives its task back (claimable at once) and exits 130 or 143.

    \b
    Examples:
      vhdkit worker --data /srv/vhdkit --until-idle
    """
    from .. import native
    from ..tasks.pipeline import PipelineConfig, Worker

    cfg = settings(data_dir=data_dir)
    native.set_options(io_threads=cfg.io_threads)
    reg = open_registry(data_dir)
    w = Worker(reg, PipelineConfig.from_config(reg.config, reg.home), worker_id)
    if once:
        t = w.run_once()
        out = {"worker": w.id, "task": _task_dict(t) if t else None}
        emit(out, as_json, lambda d: _task_line(d["task"]) if d["task"] else "no pending task")
        return
    n = w.run(until_idle=until_idle, poll=poll)  # SIGINT/SIGTERM: the task goes back, exit 130/143
    emit({"worker": w.id, "tasks_run": n}, as_json, lambda d: f"worker {d['worker']}: ran {d['tasks_run']} task(s)")


