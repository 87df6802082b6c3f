"""Exec a command as another user: `python tools/as_user.py UID GID ERROR_FD COMMAND...`.

The embedded PostgreSQL's programs run through this rather than through subprocess's
`user=`/`group=`: those make subprocess fork() the caller instead of vfork(), and in a
caller with gRPC's threads the child then ran gRPC's fork handlers before exec and died
(SIGSEGV in CI). This process starts clean, drops root and execs. If the exec fails, its
errno goes to ERROR_FD (closed by a successful exec), as subprocess does for its own.
"""

import os
import sys


def main(argv: list[str]) -> None:
    uid, gid, error_fd, *command = argv
    errors = int(error_fd)
    os.set_inheritable(errors, False)
    # Group first: after setuid there is no right left to change it.
    os.setgroups([])
    os.setgid(int(gid))
    os.setuid(int(uid))
    try:
        os.execv(command[0], command)
    except OSError as exc:
        os.write(errors, str(exc.errno).encode())
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
