"""Faults of the database or its disk: the operator's problem, not the caller's.

A full disk, a database that is locked past its timeout, no free connection in time, a lost
connection or a schema that went away are answered UNAVAILABLE with a retry delay (503 with
Retry-After at the gateway), never INTERNAL: the call was fine and may well succeed shortly, on
this replica or another. Each back end says which of its driver's errors are such faults; this
module turns them into the one domain error.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from services.editor import metrics
from services.toolkit.errors import FabulaError, Unavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0
DATABASE_FAULT = "DATABASE_UNAVAILABLE"
DISK_FULL = "DISK_FULL"

# OSErrors that mean the volume, not the request, is at fault.
_DISK_ERRNOS = {errno.ENOSPC: DISK_FULL, errno.EDQUOT: DISK_FULL, errno.EIO: DATABASE_FAULT,
                errno.EROFS: DATABASE_FAULT}

Classifier = Callable[[BaseException], str | None]
"""A back end's judgement of one exception: the fault's reason, or None when it is no fault."""


def os_fault(error: BaseException) -> str | None:
    if isinstance(error, OSError) and error.errno in _DISK_ERRNOS:
        return _DISK_ERRNOS[error.errno]
    return None


def unavailable(reason: str, error: BaseException | str) -> Unavailable:
    """The answer to a fault; `error` (what happened) goes to the log, never to the caller."""
    description = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    log.warning("database fault answered UNAVAILABLE (%s): %s", reason, description)
    metrics.DATABASE_FAULTS.labels(reason).inc()
    what = "the editor's disk is full" if reason == DISK_FULL else "the editor's database is unavailable"
    return Unavailable(f"{what}; the call did not complete, retry shortly", reason=reason, retry_after_s=RETRY_AFTER_S)


@contextmanager
def faults_as_unavailable(classify: Classifier) -> Iterator[None]:
    """Re-raise the faults `classify` recognises (and disk errors) as Unavailable."""
    try:
        yield
    except FabulaError:
        raise
    except Exception as error:
        reason = classify(error) or os_fault(error)
        if reason is None:
            raise
        raise unavailable(reason, error) from error
