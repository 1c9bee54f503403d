"""The `vhdkit` program (``python -m vhdkit``, and the installed script)."""
import sys

import vhdkit.interrupts as interrupts


def run():
    # SIGINT/SIGTERM from the first moment: held through the imports, then
    # raised where the command can clean up (vhdkit.cli._plain.failure).
    interrupts.install(hold=True)
    from vhdkit.cli._fast import run as fast

    status = fast(sys.argv[1:])   # the per-image commands, without click; None: click's to run
    if status is not None:
        return status
    from vhdkit.cli import main

    return main(prog_name="vhdkit")


if __name__ == "__main__":
    sys.exit(run())
