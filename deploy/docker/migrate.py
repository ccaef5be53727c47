"""Bring one service's schema to its newest migration, then exit: the Helm chart's
pre-install/pre-upgrade Job (`python /opt/tickertap/ops/migrate.py`, in the service's image).

The services migrate at start as well (replicas take turns on an advisory lock); running the
migrations first means a failing one stops the upgrade before any pod is replaced, and the
new pods start on a schema that is already there. It logs in exactly as the service does
(AppRole, then short-lived database credentials revoked on the way out), with the service's
own settings (`TICKERTAP_*`), so it needs nothing the service does not.

The service is the package named by TICKERTAP_MODULE (set in the image), e.g. tickertap.ledger.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
from pathlib import Path

from tickertap.db import upgrade_to_head
from tickertap.runtime import ServiceSettings
from tickertap.runtime.login import command_engine


def settings_class(module: str) -> type[ServiceSettings]:
    """The one ServiceSettings subclass that `<module>.settings` defines."""
    settings_module = importlib.import_module(f"{module}.settings")
    found = [
        value
        for value in vars(settings_module).values()
        if inspect.isclass(value)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
        and value.__module__ == settings_module.__name__
    ]
    if len(found) != 1:
        raise SystemExit(f"{module}.settings defines {len(found)} settings classes, expected 1")
    return found[0]


def migrations_dir(module: str) -> Path:
    package = importlib.import_module(module)
    assert package.__file__ is not None
    path = Path(package.__file__).parent / "migrations"
    if not path.is_dir():
        raise SystemExit(f"{module} has no migrations folder")
    return path


async def migrate(module: str) -> str:
    settings = settings_class(module)()  # type: ignore[call-arg]  # from the environment
    async with command_engine(settings, f"{module}-migrate") as engine:
        await upgrade_to_head(engine, migrations_dir(module), settings.db_schema)
    return settings.db_schema


def main() -> int:
    module = os.environ.get("TICKERTAP_MODULE", "")
    if not module.startswith("tickertap."):
        print("migrate: set TICKERTAP_MODULE, e.g. tickertap.ledger", file=sys.stderr)
        return 2
    schema = asyncio.run(migrate(module))
    print(f"migrate: schema {schema} is at head")
    return 0


if __name__ == "__main__":
    sys.exit(main())
