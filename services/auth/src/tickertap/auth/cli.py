"""Operator commands of the auth service, run with the service's own environment:

    python deploy/local/stack.py exec auth -- python -m tickertap.auth.cli grant-role EMAIL admin
    python deploy/local/stack.py exec auth -- python -m tickertap.auth.cli revoke-role EMAIL admin
    python deploy/local/stack.py exec auth -- python -m tickertap.auth.cli rotate-signing-key
    python deploy/local/stack.py exec auth -- python -m tickertap.auth.cli set-client \\
        portfolio-reconcile --scope ledger:read --role support --secret-file FILE

`set-client` provisions a machine client (client-credentials grant) for a deployment:
made if new, else given a new secret, which is written to FILE (mode 0600), never
printed.

The first administrator can only be made this way (nobody can grant it over
HTTP yet). Each change is audited with the operator (`$USER`, or `--operator`) as
the actor and published as a role event. Exit 0 on success, 1 when the user is
unknown or the role is not one of the service's, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path

from tickertap.auth.domain import AuthError
from tickertap.auth.handlers import Auth
from tickertap.auth.main import create_app
from tickertap.auth.settings import AuthSettings


def write_secret(path: Path, secret: str) -> None:
    """Write `secret` to `path`, readable by its owner only from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


async def _run(args: argparse.Namespace) -> int:
    settings = AuthSettings()  # type: ignore[call-arg]  # from the environment
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        auth = app.state.runtime.state["auth"]
        assert isinstance(auth, Auth)
        try:
            if args.command == "rotate-signing-key":
                print(json.dumps({"kid": (await auth.keys.rotate()).kid}))
                return 0
            if args.command == "set-client":
                secret, created = await auth.set_client(
                    args.client_id, args.scope, args.role or [], args.operator
                )
                write_secret(args.secret_file, secret)
                print(json.dumps({"client_id": args.client_id, "created": created}))
                return 0
            view = await auth.set_role_by_email(
                args.email, args.role, args.command == "grant-role", args.operator
            )
        except AuthError as error:
            print(f"{error.code}: {error.detail}", file=sys.stderr)
            return 1
        print(json.dumps({"id": str(view.id), "roles": sorted(view.roles)}))
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tickertap.auth.cli",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--operator", default=getpass.getuser(), help="who runs this (audit)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("grant-role", "revoke-role"):
        command = commands.add_parser(name)
        command.add_argument("email")
        command.add_argument("role")
    commands.add_parser("rotate-signing-key")
    client = commands.add_parser("set-client")
    client.add_argument("client_id")
    client.add_argument("--scope", action="append", required=True, help="repeatable")
    client.add_argument("--role", action="append", help="repeatable")
    client.add_argument("--secret-file", type=Path, required=True, help="written 0600")
    return asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
