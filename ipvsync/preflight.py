"""Checks that can be made before touching the kernel, without side effects.

Rules of residence: reads /proc and /lib/modules only. What cannot be known beforehand (a module
that fails to load, ENOMEM, a concurrent writer) is covered by apply's rollback instead.
"""

from __future__ import annotations

from ipvsync.config.spec import Config
from ipvsync.kernel.system import scheduler_available
from ipvsync.plan import Observed


def preflight(config: Config, observed: Observed) -> list[str]:
    """Problems that would make an apply fail, each naming the service, the cause and the line."""
    problems: list[str] = []
    verdicts: dict[str, bool | None] = {}
    in_use = {s.attrs.scheduler for s in observed.services.values()}
    for svc in config.services:
        have = observed.services.get(svc.key)
        if have is not None and have.attrs.scheduler == svc.attrs.scheduler:
            continue
        name = svc.attrs.scheduler
        if name in in_use:
            continue  # the kernel already runs this scheduler
        if name not in verdicts:
            verdicts[name] = scheduler_available(name)
        if verdicts[name] is False:
            problems.append(f"{svc.origin.file}:{svc.origin.line}: services.{svc.name}.scheduler: scheduler "
                            f"{name!r} is not available in this kernel (no module ip_vs_{name} in /proc/modules, "
                            "modules.builtin or modules.dep)")
    return problems
