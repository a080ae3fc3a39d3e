"""Erasure that follows the data: an erase, then the snapshot files and eval reports that held it.

`Store.erase` deletes a tenant's (or one end user's) captured traffic and feedback and, in the
same transaction, marks what was derived from it (`store.erasure_sql`):

- every dataset snapshot that used one of the completions as an example is tainted (no new
  job may train on it) and every snapshot that names one (its flags too) becomes `pending`;
- every adapter version trained on a tainted snapshot is marked `trained_on_erased`, shown in
  its API representation and the CLI listing; promoting it then needs `force` and a reason,
  and the alias history records both (`adapters.swap`);
- every eval answer to a case that came from an erased completion (a held-out example of the
  candidate's snapshot) is replaced by "[erased]" and its run gets `erased_at`.

`DataErasure.follow` then does the file work a transaction cannot:

1. each `pending` snapshot is rewritten without the erased examples, flags and authors
   (`training.snapshot_erasure`), or deleted when nothing is left; its row says which
   (`erasure`: rewritten | deleted, `erased_examples`) and holds the scrubbed report;
2. the report files (Markdown, HTML, PNG) of every eval run with `erased_at` are deleted; the
   run keeps its verdict and summary (numbers) and lists no report files.

It runs right after each erase and every `erasure_check_interval_s`: that pass finishes what a
crash interrupted, and catches a snapshot built or an eval run finished while its data was being
erased (the store marks those as it writes them). Snapshots tainted before this existed are
rewritten on the first pass. Only folders under the training and eval report roots are touched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from store import Dataset, Erasure, EvalRun, Store
from training.snapshot_erasure import erase_from_snapshot

log = logging.getLogger("loopgate.erasure")


class DataErasure:
    """Erase, and make the files follow; one pass at a time in this process."""

    def __init__(self, store: Store, datasets_root: Path, reports_root: Path):
        self.store = store
        self.datasets_root = datasets_root
        self.reports_root = reports_root
        self._lock = asyncio.Lock()

    async def erase(self, tenant_id: str, end_user: str | None, actor: str) -> ErasureReport:
        """The erase, then its files; a file step that fails is logged and left to the next
        pass (the erase itself is committed): the report lists what is still pending."""
        erasure = await self.store.erase(tenant_id, end_user, actor)
        try:
            await self.follow()
        except Exception:
            log.exception("erasure: the files of %s are left to the next pass", tenant_id)
        return ErasureReport(erasure, end_user, await self.pending(tenant_id))

    async def pending(self, tenant_id: str) -> list[str]:
        """A tenant's snapshots and eval runs whose files still hold erased data."""
        datasets = [d.id for d in await self.store.datasets_to_erase() if d.tenant_id == tenant_id]
        runs = [r.id for r in await self.store.eval_reports_to_erase() if r.tenant_id == tenant_id]
        return datasets + runs

    async def follow(self) -> int:
        """Rewrite pending snapshots and delete erased eval reports; how many were done."""
        async with self._lock:
            done = 0
            for dataset in await self.store.datasets_to_erase():
                try:  # one unreadable snapshot must not hold back the others
                    done += await self._dataset(dataset)
                except Exception:
                    log.exception("erasure: dataset %s failed; next pass retries", dataset.id)
            for run in await self.store.eval_reports_to_erase():
                try:
                    done += await self._report(run)
                except Exception:
                    log.exception("erasure: eval %s's report failed; next pass retries", run.id)
            return done

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.follow()
            except Exception:
                log.exception("following erasures through failed; retrying next interval")
            await asyncio.sleep(interval_s)

    async def _dataset(self, dataset: Dataset) -> int:
        folder = Path(dataset.path)
        if not _under(folder, self.datasets_root):
            log.warning("dataset %s is outside %s: not rewritten", dataset.id, self.datasets_root)
            return 0
        erased = await self.store.erased_sources(dataset.id)
        outcome = await asyncio.to_thread(erase_from_snapshot, folder, erased, dataset.stats)
        if not await self.store.finish_dataset_erasure(dataset.id, outcome, len(erased)):
            return 0  # more of its data was erased meanwhile: the next pass redoes it
        log.info("erasure: dataset %s %s", dataset.id, outcome.state)
        return 1

    async def _report(self, run: EvalRun) -> int:
        assert run.report_dir is not None
        folder = Path(run.report_dir)
        if not _under(folder, self.reports_root):
            log.warning("eval %s's report is outside %s: not deleted", run.id, self.reports_root)
            return 0
        await asyncio.to_thread(shutil.rmtree, folder, True)
        await self.store.clear_eval_report(run.id)
        log.info("erasure: deleted the report of eval %s", run.id)
        return 1


@dataclass(frozen=True)
class ErasureReport:
    erasure: Erasure
    end_user: str | None
    pending: list[str]  # snapshots and eval runs whose files the next pass still has to do

    def to_json(self) -> dict[str, object]:
        """What an erase reached (the admin API's and the CLI's answer)."""
        done = self.erasure
        return {
            "erased": done.completions,
            "end_user": self.end_user,
            "datasets": list(done.datasets),
            "adapter_versions_trained_on_erased": list(done.adapter_versions),
            "eval_runs": list(done.eval_runs),
            "files_pending": self.pending,
        }


def _under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve()) and path.resolve() != root.resolve()
