"""The command line's conventions: one-line errors, JSON or text reports, a quiet start.

Every failure becomes one line that says what is wrong and what to do
(`error_text`); `--out` is checked before any work, so nothing a user made
is overwritten (`check_out`); `--json` output is strict JSON
(`print_json`); TensorFlow's C++ start-up lines never reach the user
(`import_tensorflow_quietly`).
"""

import os
import sys


def import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 muted: its C++ start-up lines are not for users."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# Errors that nc-tf raises with a message for the user; other types are unexpected.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError)


def error_text(error):
    """One line for an exception: its message, or what happened and how to see more."""
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    elif isinstance(error, OSError) and error.strerror and error.filename:
        text = f"{error.strerror}: {error.filename}"
    else:
        text = str(error)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if len(text) > 400:
        text = text[:397] + "..."
    if not isinstance(error, USER_ERRORS) or isinstance(error, UnicodeError):
        text = (
            f"unexpected {type(error).__name__}: {text}; rerun with --debug to see where, "
            "and report it"
        )
    return text


def check_out(args):
    """Refuses an --out folder that cannot take this command's files, before any work."""
    from nc_tf.io import check_out_dir

    if args.command in ("scan", "scan-many"):
        record = "results.json" if args.command == "scan" else "summary.json"
        resume = os.path.exists(os.path.join(args.out, record))
        check_out_dir(args.out, resume=resume, hint="empty it")
    else:
        check_out_dir(
            args.out,
            force=args.force,
            resume=getattr(args, "method", None) in ("repair", "unlearn"),
        )


def print_json(obj):
    from nc_tf.io import to_json

    print(to_json(obj))


def print_report(args, report, lines):
    from nc_tf.io import to_json

    if args.json:
        print(to_json(report))
    else:
        print("\n".join(lines))
