#!/usr/bin/env python
import codecs
import os
import sys


def argv_error(argv: list[str]) -> str:
    """Why the command line cannot be run ("" when it can). Python turns argument bytes that are not valid in the
    system's encoding into lone surrogates ("\\udcff"); every command would fail on them later, wherever the text
    is written (the database, a log, a request), with a traceback instead of a reason."""
    encoding = sys.getfilesystemencoding()
    name = "UTF-8" if codecs.lookup(encoding).name == "utf-8" else encoding
    for position, argument in enumerate(argv[1:], start=1):
        try:
            argument.encode(encoding)
        except UnicodeEncodeError:
            return f"argument {position} ({os.fsencode(argument)!r}) is not valid {name} text"
    return ""


def main() -> None:
    error = argv_error(sys.argv)
    if error:
        # Checked before Django starts, so it holds for every command, ours and Django's. Exit status 2, as for
        # any other unusable command line.
        sys.stderr.write(f"CommandError: {error}\n")
        sys.exit(2)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "timmy_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
