"""CLI commands: cleanup (see vhdkit/cli/__init__.py)."""
from __future__ import annotations

import sys

import click

from . import main
from ._common import data_option, emit, json_option, open_registry


def _human(d: dict) -> str:
    verb = "would remove" if d["dry_run"] else "removed"
    reg = d["registry"]
    lines = []
    if d["dry_run"]:
        lines.append(f"registry: would reset {len(reg['reset_uploads'])} dead upload(s), remove "
                     f"{len(reg['removed_parts'])} upload lock file(s), empty {len(reg['trash'])} trash item(s)")
    else:
        lines.append(f"registry: reset {reg.get('reset_uploads', 0)} dead upload(s), removed "
                     f"{reg.get('removed_parts', 0)} upload lock file(s) and {reg.get('removed_blobs', 0)} "
                     "trashed blob(s)")
    for key, what in (("failed_tasks", "remain(s) of failed tasks"), ("swift_blobs", "unreferenced image blob(s) in Swift"),
                      ("local_blobs", "unreferenced local blob(s)"),
                      ("work_dirs", "stale task work dir(s)"), ("temp_files", "temporary file(s)")):
        items = d[key]
        extra = f" ({d['swift_objects']} objects)" if key == "swift_blobs" and items else ""
        lines.append(f"{verb} {len(items)} {what}{extra}" + "".join(f"\n  {x}" for x in items))
    lines.append(f"kept {d['kept_young']} unreferenced item(s) younger than {d['grace_seconds']:g} s")
    lines += [f"error: {e}" for e in d["errors"]]
    return "\n".join(lines)


@main.command("cleanup")
@data_option("Data directory (registry host).")
@click.option("--grace", type=click.FloatRange(min=0), default=3600.0, show_default=True,
              help="Seconds: unreferenced data, work dirs and temp files younger than this are kept.")
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@json_option
def cleanup(data_dir, grace, dry_run, as_json):
    """Remove what dead or killed operations left behind.

    Fails tasks whose worker died for the last time and removes what every
    failed task left (its image, unpublished export segments, work dir),
    runs the registry's cleanup (uploads whose process died, upload lock
    files, the trash of deleted images), then removes image data in Swift
    and local blob files that no image references, work dirs of tasks that
    are not running and temporary files (.*.part, .*.tmp) of killed
    operations, all older than --grace.  Run it on the registry host, with the
    same VHDKIT_BLOB_STORE and Swift settings as the API server.  Exit 1 if
    a part of it failed (listed under errors).

    \b
    Example:
      vhdkit cleanup --data /srv/vhdkit --dry-run --json
    """
    from ..tasks.maintenance import cleanup as run

    # cleanup=False: opening must not clean already (a dry run changes nothing; the report counts all)
    reg = open_registry(data_dir, cleanup=False)
    rep = run(reg, reg.home, grace=grace, dry_run=dry_run)
    d = rep.to_dict()
    emit(d, as_json, _human)
    if rep.errors:
        sys.exit(1)
