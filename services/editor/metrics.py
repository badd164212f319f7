"""The editor's own Prometheus metrics (beside the toolkit's per-RPC ones, on the same page)."""

from __future__ import annotations

from prometheus_client import Counter

OBJECT_WRITES = Counter("fabula_editor_object_writes_total", "Objects written, by type and operation",
                        ["type", "operation"])
BYTES_WRITTEN = Counter("fabula_editor_bytes_written_total", "Encrypted bytes written to storage", ["type"])
STALE_WRITES = Counter("fabula_editor_stale_writes_total",
                       "Writes refused because their change index was stale", ["what"])
QUOTA_REFUSALS = Counter("fabula_editor_quota_refusals_total", "Writes refused by a quota", ["reason"])
AUTH_FAILURES = Counter("fabula_editor_auth_failures_total", "Failed authentications, by reason", ["reason"])
ACCOUNT_EVENTS = Counter("fabula_editor_account_events_total", "Account lifecycle events", ["event"])
ARCHIVE_BYTES = Counter("fabula_editor_archive_bytes_total", "Archive bytes exported and imported",
                        ["direction"])
ADMISSION_REFUSALS = Counter("fabula_editor_admission_refusals_total",
                             "Calls refused at once by a full queue, cap or spool budget", ["reason"])
DATABASE_FAULTS = Counter("fabula_editor_database_faults_total",
                          "Calls answered UNAVAILABLE for a fault of the database or its disk", ["reason"])
