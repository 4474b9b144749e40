"""Where a build's tasks run, for `orchestrate build` and `resume`: here, or on Ray.

The cluster is joined before the run folder is made, so a missing Ray or an unreachable
address costs one line and no half-written run; ray is imported only for ``--executor
ray``, keeping every other command's start-up fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrate.llm.models import ModelRouter
    from orchestrate.safety.guards import SafetyGuards
    from orchestrate.scheduler.ray_executor import RayTasks
    from orchestrate.settings import Settings

EXECUTOR_HELP = "Where tasks run: local (threads here) or ray (Ray tasks on a cluster)."
RAY_ADDRESS_HELP = "With --executor ray: the cluster to join (host:port); default: a local one."


def join_cluster(settings: Settings) -> None:
    """Connect to Ray when the build runs there; raises SettingsError when it cannot."""
    if settings.executor == "ray":
        from orchestrate.scheduler.ray_executor import connect_ray

        connect_ray(settings.ray_address)


def ray_tasks(settings: Settings, models: ModelRouter, guards: SafetyGuards) -> RayTasks | None:
    """What carries the run's attempts to the cluster; None for a local run."""
    if settings.executor != "ray":
        return None
    from orchestrate.scheduler.ray_executor import open_ray_tasks

    return open_ray_tasks(settings, models, guards)
