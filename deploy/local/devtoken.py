"""Print an access token signed with the local stack's dev key, for curl and scripts.

    python deploy/local/devtoken.py --roles customer            # a new customer id
    python deploy/local/devtoken.py --sub <uuid> --roles ops

    curl -H "Authorization: Bearer $(python deploy/local/devtoken.py --roles ops)" ...

Only for the local stack: real tokens come from the auth service.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from config import StackConfig
from devkeys import mint, private_key_path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sub", default=None, help="the subject (a user id); default: a new UUID")
    parser.add_argument("--roles", default="customer", help="comma-separated roles")
    parser.add_argument("--scopes", default="", help="space- or comma-separated scopes")
    parser.add_argument("--ttl-s", type=int, default=900)
    args = parser.parse_args()
    cfg = StackConfig.from_env()
    if not private_key_path(cfg).exists():
        print("no dev key yet: start the stack first (make up)", file=sys.stderr)
        return 1
    roles = [r for r in args.roles.split(",") if r]
    scopes = [s for s in args.scopes.replace(",", " ").split() if s]
    print(mint(private_key_path(cfg), args.sub or str(uuid.uuid4()), roles, scopes, args.ttl_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
