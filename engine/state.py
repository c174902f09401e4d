"""Migration status and VM run state: QEMU's vocabularies and the predicates over them."""

from __future__ import annotations

from enum import StrEnum


class MigrationStatus(StrEnum):
    """QAPI ``MigrationStatus``, in QEMU's enum order."""

    NONE = "none"
    SETUP = "setup"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    ACTIVE = "active"
    POSTCOPY_ACTIVE = "postcopy-active"
    POSTCOPY_PAUSED = "postcopy-paused"
    POSTCOPY_RECOVER = "postcopy-recover"
    COMPLETED = "completed"
    FAILED = "failed"
    COLO = "colo"
    PRE_SWITCHOVER = "pre-switchover"
    DEVICE = "device"
    WAIT_UNPLUG = "wait-unplug"


RUNNING_STATES = frozenset(
    {
        MigrationStatus.SETUP,
        MigrationStatus.ACTIVE,
        MigrationStatus.POSTCOPY_ACTIVE,
        MigrationStatus.POSTCOPY_PAUSED,
        MigrationStatus.POSTCOPY_RECOVER,
        MigrationStatus.PRE_SWITCHOVER,
        MigrationStatus.DEVICE,
        MigrationStatus.WAIT_UNPLUG,
        MigrationStatus.CANCELLING,
    }
)

# What a blocking HMP `migrate` waits through: QEMU's hmp_migrate_status_cb polls for setup and
# active; 11.1's `device` (the switchover's device state) is spent under the big lock that
# callback needs, so QEMU's monitor never sees it and waits on.
FOREGROUND_STATES = frozenset(
    {MigrationStatus.SETUP, MigrationStatus.ACTIVE, MigrationStatus.DEVICE}
)

# States whose `info migrate` carries time and RAM figures (QEMU's fill_source_migration_info).
STATS_STATES = frozenset(
    {
        MigrationStatus.ACTIVE,
        MigrationStatus.CANCELLING,
        MigrationStatus.POSTCOPY_ACTIVE,
        MigrationStatus.PRE_SWITCHOVER,
        MigrationStatus.DEVICE,
        MigrationStatus.POSTCOPY_PAUSED,
        MigrationStatus.POSTCOPY_RECOVER,
    }
)


def is_running(status: MigrationStatus) -> bool:
    """QEMU's ``migration_is_running``: blocks `migrate` and capability changes."""
    return status in RUNNING_STATES


class RunState(StrEnum):
    """QAPI ``RunState`` values this product reaches."""

    DEBUG = "debug"
    INMIGRATE = "inmigrate"
    INTERNAL_ERROR = "internal-error"
    PAUSED = "paused"
    POSTMIGRATE = "postmigrate"
    PRELAUNCH = "prelaunch"
    FINISH_MIGRATE = "finish-migrate"
    RUNNING = "running"
    SHUTDOWN = "shutdown"
