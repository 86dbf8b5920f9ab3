"""Keeping a run's lease while its coordinator works (see :mod:`storage.leases`)."""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # storage (SQLAlchemy) loads lazily
    from storage import RunStore
    from storage.leases import Lease

log = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews a run's lease from a daemon thread every third of its duration while the
    block runs, so a long generation never lets it lapse; a renewal that fails (database
    away) is logged and tried again at the next beat, and a lost lease stops the beats
    (the next stored generation then raises :class:`storage.store.LeaseLost`)."""

    def __init__(self, store: RunStore, run_id: int, lease: Lease) -> None:
        self.store, self.run_id, self.lease = store, run_id, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ftprune-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        from storage.store import LeaseLost

        while not self._stop.wait(self.lease.duration_s / 3):
            try:
                self.store.renew_lease(self.run_id, self.lease, retry=False)
            except LeaseLost as exc:
                log.warning("%s", exc)
                return
            except Exception as exc:  # a heartbeat outlives a database outage
                log.warning("lease renewal failed, trying again at the next beat: %s", exc)
