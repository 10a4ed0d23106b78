"""The `cadyq` command's entry point: SIGINT and SIGTERM are answered from its first instruction, before the command
line module and torch load (`cadyq.interrupt`), and an interrupted run leaves at once: everything it wrote was
cleaned up on the way out, so it does not wait for a native call to return or for torch's threads to finish."""
import os
import sys

from . import interrupt


def main(argv=None) -> int:
    with interrupt.handle_signals():
        try:
            from .cli import main as command

            code = command(argv)
        except KeyboardInterrupt as e:  # while the command line module loaded
            print(interrupt.message(e), file=sys.stderr)
            code = interrupt.exit_code(e)
        except Exception:  # noqa: BLE001
            if not interrupt.requested():
                raise
            # a consequence of the signal: a library that swallowed it can fail later in its own way (numpy, whose
            # interrupted first import makes the next one fail with "cannot load module more than once per process")
            e = interrupt.stopped()
            print(interrupt.message(e), file=sys.stderr)
            code = interrupt.exit_code(e)
    if interrupt.requested():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
