"""The statements of an erasure and of its follow-through on snapshots and evals, in one dialect.

An erase runs, in one transaction, every statement of `erase_steps` over the same set of
completions (`{erased}`: the tenant's, or one end user's), then deletes them:

1. the snapshots that named one of them (`dataset_sources`) are listed; those that used one as
   an example are tainted (no new job may use them); every one of them is marked `pending` (its
   files still hold the data) and the sources are marked `erased`;
2. every adapter version trained on such a snapshot is marked `trained_on_erased`;
3. eval answers to cases that came from an erased completion are replaced by `ERASED_ANSWER`
   and their runs get `erased_at` (their report files go next). Runs older than the recorded
   case lineage (no `eval_case_sources` rows) lose every tenant-suite answer.

`?` placeholders; PostgreSQL rewrites them with `training_sql.numbered`. Every statement takes
its own arguments first, then the `{erased}` arguments once per occurrence (`bind`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

ERASED_ANSWER = "[erased]"
# The suite a candidate's held-out split becomes (gateway.evaluations.TENANT_SUITE).
TENANT_SUITE = "tenant"


def erased_completions(end_user: str | None) -> str:
    """The completions an erase deletes (the tenant's, or one end user's)."""
    return "SELECT id FROM completions WHERE tenant_id = ?" + (
        " AND end_user = ?" if end_user is not None else ""
    )


def erased_args(tenant_id: str, end_user: str | None) -> list[object]:
    return [tenant_id] if end_user is None else [tenant_id, end_user]


def bind(
    template: str, erased: str, own: Sequence[object], erased_with: Sequence[object]
) -> tuple[str, list[object]]:
    """The statement with `{erased}` filled in, and its arguments in placeholder order."""
    return template.format(erased=erased), [*own, *list(erased_with) * template.count("{erased}")]


DATASETS = (
    "SELECT DISTINCT dataset_id FROM dataset_sources WHERE completion_id IN ({erased}) "
    "ORDER BY dataset_id"
)
_LEGACY_RUNS = (
    "SELECT r.id FROM eval_runs r WHERE r.suite_dataset_id IN (SELECT dataset_id FROM "
    "dataset_sources WHERE role = 'example' AND completion_id IN ({erased})) "
    "AND NOT EXISTS (SELECT 1 FROM eval_case_sources c WHERE c.run_id = r.id)"
)
EVAL_RUNS = (
    f"SELECT run_id FROM eval_case_sources WHERE completion_id IN ({{erased}}) "
    f"UNION {_LEGACY_RUNS} ORDER BY 1"
)
TAINT = (
    "UPDATE datasets SET tainted_at = ?, taint_reason = ? WHERE tainted_at IS NULL AND id IN "
    "(SELECT dataset_id FROM dataset_sources WHERE role = 'example' "
    "AND completion_id IN ({erased}))"
)
PENDING = (
    "UPDATE datasets SET erasure = 'pending' WHERE id IN "
    "(SELECT dataset_id FROM dataset_sources WHERE completion_id IN ({erased}))"
)
MARK_SOURCES = "UPDATE dataset_sources SET erased = TRUE WHERE completion_id IN ({erased})"
MARK_ADAPTERS = (
    "UPDATE adapter_versions SET trained_on_erased = TRUE WHERE dataset_id IN "
    "(SELECT dataset_id FROM dataset_sources WHERE role = 'example' "
    "AND completion_id IN ({erased})) RETURNING id"
)
BLANK_CASES = (
    "UPDATE eval_results SET answer = ?, reasons = '' WHERE (run_id, suite, case_id) IN "
    "(SELECT run_id, suite, case_id FROM eval_case_sources WHERE completion_id IN ({erased}))"
)
BLANK_LEGACY = (
    f"UPDATE eval_results SET answer = ?, reasons = '' WHERE suite = ? "
    f"AND run_id IN ({_LEGACY_RUNS})"
)
MARK_RUN = "UPDATE eval_runs SET erased_at = ? WHERE id = ?"
DELETE_FEEDBACK = "DELETE FROM feedback WHERE completion_id IN ({erased})"
DELETE_COMPLETIONS = "DELETE FROM completions WHERE id IN ({erased})"
AUDIT = "INSERT INTO erasures (tenant_id, end_user, completions, actor, at) VALUES (?, ?, ?, ?, ?)"


def taint_reason(end_user: str | None) -> str:
    return "erasure of the tenant's data" if end_user is None else "erasure of an end-user's data"


# -- a snapshot built while its data was being erased (the export came first) ----------------

INSERT_SOURCE = (
    "INSERT INTO dataset_sources (dataset_id, completion_id, role) VALUES (?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
# A source that no longer exists by the time its snapshot is stored was erased (or deleted)
# after the export: it is handled like any erased source.
LATE_SOURCES = (
    "UPDATE dataset_sources SET erased = TRUE WHERE dataset_id = ? AND NOT EXISTS "
    "(SELECT 1 FROM completions c WHERE c.id = dataset_sources.completion_id)"
)
LATE_TAINT = (
    "UPDATE datasets SET tainted_at = ?, taint_reason = ? WHERE id = ? AND tainted_at IS NULL "
    "AND EXISTS (SELECT 1 FROM dataset_sources WHERE dataset_id = ? AND erased "
    "AND role = 'example')"
)
LATE_PENDING = (
    "UPDATE datasets SET erasure = 'pending' WHERE id = ? "
    "AND EXISTS (SELECT 1 FROM dataset_sources WHERE dataset_id = ? AND erased)"
)
LATE_REASON = "data it used was erased while it was being built"


def source_rows(
    dataset_id: str, examples: Collection[str], flagged: Collection[str]
) -> list[tuple[str, str, str]]:
    """INSERT_SOURCE rows: examples first, so a completion that is both keeps `example`."""
    rows = [(dataset_id, cid, "example") for cid in sorted(examples)]
    return rows + [(dataset_id, cid, "flagged") for cid in sorted(set(flagged) - set(examples))]


# -- the follow-through on files -----------------------------------------------------------------

PENDING_DATASETS = "SELECT * FROM datasets WHERE erasure = 'pending' ORDER BY created_at, id"
ERASED_SOURCES = "SELECT completion_id FROM dataset_sources WHERE dataset_id = ? AND erased"
# Only when no source was erased since the files were read (erased sources only ever grow:
# the same count is the same set); otherwise the snapshot stays pending for the next pass.
# `erased_examples` grows by the lines the rewrite removed (the SET reads the old counts).
FINISH_DATASET = (
    "UPDATE datasets SET erasure = ?, erased_examples = erased_examples + train_count "
    "+ eval_count + preference_count - ?, train_count = ?, eval_count = ?, "
    "preference_count = ?, stats = ? WHERE id = ? AND erasure = 'pending' AND "
    "(SELECT COUNT(*) FROM dataset_sources WHERE dataset_id = ? AND erased) = ?"
)
REPORTS_TO_DELETE = (
    "SELECT * FROM eval_runs WHERE erased_at IS NOT NULL AND report_dir IS NOT NULL "
    "ORDER BY created_at, id"
)
CLEAR_REPORT = "UPDATE eval_runs SET report_dir = NULL WHERE id = ?"

# -- an eval run that read a case while its completion was being erased ------------------------

INSERT_CASE_SOURCE = (
    "INSERT INTO eval_case_sources (run_id, suite, case_id, completion_id) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
_ERASED_CASES_OF_RUN = (
    "SELECT suite, case_id FROM eval_case_sources WHERE run_id = ? AND completion_id IN "
    "(SELECT completion_id FROM dataset_sources WHERE erased)"
)
BLANK_LATE_ANSWERS = (
    f"UPDATE eval_results SET answer = ?, reasons = '' WHERE run_id = ? AND (suite, case_id) IN "
    f"({_ERASED_CASES_OF_RUN})"
)
MARK_LATE_RUN = (
    f"UPDATE eval_runs SET erased_at = ? WHERE id = ? AND erased_at IS NULL "
    f"AND EXISTS ({_ERASED_CASES_OF_RUN})"
)
