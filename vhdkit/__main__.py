"""The `vhdkit` program (``python -m vhdkit``, and the installed script)."""
import vhdkit.interrupts as interrupts


def run():
    # SIGINT/SIGTERM from the first moment: held through the imports, then
    # raised where the command can clean up (vhdkit.cli._common.VhdkitGroup).
    interrupts.install(hold=True)
    from vhdkit.cli import main

    return main(prog_name="vhdkit")


if __name__ == "__main__":
    run()
