"""How the command-line scripts end: bad input is one line on stderr and exit status 2.

The library raises ValueError / OSError (FileNotFoundError, ...) / FloatingPointError with
messages that name the file or flag and what was expected; a researcher should see that
line, not a traceback through the package. DFB_TRACEBACK=1 shows the traceback as well.
"""
import os
import sys

INPUT_ERRORS = (ValueError, OSError, FloatingPointError)
EXIT_BAD_INPUT = 2


def one_line(error):
    """The message of `error` on one line. Errors re-raised from DataLoader workers carry the
    worker's traceback in their message; its last line is the original message."""
    text = str(error).strip() or type(error).__name__
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def run_cli(run, args, program):
    """run(args); on bad input print `error (<program>): <message>` and exit with status 2."""
    try:
        return run(args)
    except INPUT_ERRORS as error:
        if os.environ.get("DFB_TRACEBACK"):
            raise
        print(f"error ({program}): {one_line(error)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
