"""Operator commands of the auth service, run with the service's own environment:

    python deploy/local/stack.py exec auth -- python -m tickertap.auth.cli grant-role EMAIL admin
    python deploy/local/stack.py exec auth -- python -m tickertap.auth.cli revoke-role EMAIL admin
    python deploy/local/stack.py exec auth -- python -m tickertap.auth.cli rotate-signing-key

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
import sys

from tickertap.auth.domain import AuthError
from tickertap.auth.handlers import Auth
from tickertap.auth.main import create_app
from tickertap.auth.settings import AuthSettings


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
    return asyncio.run(_run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
