"""The schema as ordered migrations: the contract between gateway, adapters, training, evals."""

from __future__ import annotations

# Each entry is applied once, in order, inside one transaction; never edit a shipped one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
    CREATE TABLE aliases (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        target_kind TEXT NOT NULL CHECK (target_kind IN ('base', 'adapter')),
        adapter_version TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, name),
        CHECK ((target_kind = 'base') = (adapter_version IS NULL))
    );
    """,
    """
    CREATE TABLE adapter_versions (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        base_model TEXT NOT NULL,
        base_hash TEXT NOT NULL,
        rank INTEGER NOT NULL,
        alpha REAL NOT NULL,
        target_modules TEXT NOT NULL,
        created_by TEXT NOT NULL,
        dataset_id TEXT,
        eval_report_ids TEXT NOT NULL DEFAULT '[]',
        status TEXT NOT NULL CHECK (status IN ('candidate', 'live', 'retired')),
        path TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        UNIQUE (tenant_id, content_hash)
    );
    CREATE INDEX adapter_versions_tenant ON adapter_versions(tenant_id, created_at);
    CREATE TABLE alias_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        action TEXT NOT NULL,
        from_version TEXT,
        to_version TEXT,
        actor TEXT NOT NULL,
        reason TEXT,
        forced INTEGER NOT NULL DEFAULT 0,
        at REAL NOT NULL
    );
    CREATE INDEX alias_events_alias ON alias_events(tenant_id, alias, seq);
    """,
    """
    ALTER TABLE tenants ADD COLUMN store_default INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tenants ADD COLUMN redact_pii INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tenants ADD COLUMN retention_days INTEGER;
    CREATE TABLE completions (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('chat', 'completion')),
        alias TEXT NOT NULL,
        adapter_version TEXT,
        backend TEXT NOT NULL,
        stored INTEGER NOT NULL,
        request TEXT,
        response TEXT,
        finish_reason TEXT,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        latency_ms REAL,
        ttft_ms REAL,
        status TEXT NOT NULL
            CHECK (status IN ('in_progress', 'complete', 'incomplete', 'error')),
        error TEXT,
        end_user TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        do_not_train INTEGER NOT NULL DEFAULT 0,
        request_id TEXT,
        created_at REAL NOT NULL,
        completed_at REAL
    );
    CREATE INDEX completions_tenant ON completions(tenant_id, created_at);
    CREATE INDEX completions_end_user ON completions(tenant_id, end_user);
    CREATE TABLE feedback (
        id TEXT PRIMARY KEY,
        completion_id TEXT NOT NULL REFERENCES completions(id) ON DELETE CASCADE,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        rating TEXT CHECK (rating IN ('up', 'down')),
        score REAL,
        correction TEXT,
        comment TEXT,
        tags TEXT NOT NULL DEFAULT '[]',
        author TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX feedback_completion ON feedback(completion_id, created_at);
    CREATE TABLE training_optouts (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        end_user TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (tenant_id, end_user)
    );
    CREATE TABLE erasures (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tenant_id TEXT NOT NULL,
        end_user TEXT,
        completions INTEGER NOT NULL,
        actor TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE files (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        purpose TEXT NOT NULL,
        filename TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        lines INTEGER NOT NULL,
        path TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX files_tenant ON files(tenant_id, created_at);
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        content_hash TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('traffic', 'file')),
        source_file_id TEXT,
        train_count INTEGER NOT NULL,
        eval_count INTEGER NOT NULL,
        preference_count INTEGER NOT NULL,
        path TEXT NOT NULL,
        stats TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        tainted_at REAL,
        taint_reason TEXT
    );
    CREATE INDEX datasets_tenant ON datasets(tenant_id, created_at);
    CREATE TABLE dataset_sources (
        dataset_id TEXT NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
        completion_id TEXT NOT NULL,
        PRIMARY KEY (completion_id, dataset_id)
    );
    CREATE TABLE fine_tuning_jobs (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        created_by TEXT NOT NULL,
        model TEXT NOT NULL,
        base_model TEXT NOT NULL,
        base_adapter TEXT,
        training_file TEXT,
        validation_file TEXT,
        dataset_id TEXT,
        hyperparameters TEXT NOT NULL,
        suffix TEXT,
        seed INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('validating_files', 'queued', 'running',
            'succeeded', 'failed', 'cancelled')),
        stage TEXT NOT NULL CHECK (stage IN ('queued', 'training', 'registering', 'done')),
        created_at REAL NOT NULL,
        fine_tuned_model TEXT,
        adapter_version TEXT,
        output_dir TEXT,
        result TEXT,
        error TEXT,
        trained_tokens INTEGER,
        worker TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        heartbeat_at REAL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX fine_tuning_jobs_tenant ON fine_tuning_jobs(tenant_id, created_at);
    CREATE INDEX fine_tuning_jobs_stage ON fine_tuning_jobs(stage, created_at);
    CREATE TABLE job_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES fine_tuning_jobs(id) ON DELETE CASCADE,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX job_events_job ON job_events(job_id, seq);
    """,
    """
    CREATE TABLE eval_runs (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        candidate TEXT NOT NULL,
        live TEXT,
        status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
        promote INTEGER,
        decision TEXT,
        summary TEXT,
        report_dir TEXT,
        error TEXT,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX eval_runs_candidate ON eval_runs(tenant_id, candidate, created_at);
    CREATE TABLE eval_results (
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
        suite TEXT NOT NULL,
        case_id TEXT NOT NULL,
        system TEXT NOT NULL,
        score REAL NOT NULL,
        passed INTEGER NOT NULL,
        latency_ms REAL,
        answer TEXT NOT NULL,
        PRIMARY KEY (run_id, suite, case_id, system)
    );
    CREATE TABLE gate_policies (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        policy TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE canaries (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        version TEXT NOT NULL,
        percent REAL NOT NULL,
        thresholds TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'promoted', 'rolled_back', 'stopped')),
        actor TEXT NOT NULL,
        reason TEXT,
        started_at REAL NOT NULL,
        ended_at REAL
    );
    CREATE INDEX canaries_alias ON canaries(tenant_id, alias, started_at);
    """,
    """
    CREATE TABLE limits (
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        requests_per_minute INTEGER,
        tokens_per_minute INTEGER,
        max_concurrent INTEGER,
        max_tokens_per_request INTEGER,
        token_budget INTEGER,
        budget_period TEXT NOT NULL CHECK (budget_period IN ('day', 'month')),
        updated_at REAL NOT NULL,
        PRIMARY KEY (tenant_id, key_id)
    );
    CREATE TABLE limit_counters (
        scope TEXT NOT NULL,
        window_id INTEGER NOT NULL,
        used INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (scope, window_id)
    );
    CREATE INDEX limit_counters_expiry ON limit_counters(expires_at);
    """,
    """
    ALTER TABLE feedback ADD COLUMN key_id TEXT;
    ALTER TABLE feedback ADD COLUMN end_user TEXT;
    """,
    # Erasure follows the data (gateway.erasure): which sources of a snapshot were erased, what
    # became of its files, which adapter versions were trained on erased data, and which eval
    # cases came from which completions. Snapshots tainted before this migration are rewritten
    # on the next pass (their missing sources count as erased); eval runs on them, whose cases
    # were not recorded, lose every tenant-suite answer.
    """
    ALTER TABLE dataset_sources ADD COLUMN role TEXT NOT NULL DEFAULT 'example'
        CHECK (role IN ('example', 'flagged'));
    ALTER TABLE dataset_sources ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX dataset_sources_dataset ON dataset_sources(dataset_id, erased);
    ALTER TABLE datasets ADD COLUMN erasure TEXT
        CHECK (erasure IN ('pending', 'rewritten', 'deleted'));
    ALTER TABLE datasets ADD COLUMN erased_examples INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE adapter_versions ADD COLUMN trained_on_erased INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE eval_runs ADD COLUMN suite_dataset_id TEXT;
    ALTER TABLE eval_runs ADD COLUMN erased_at REAL;
    CREATE TABLE eval_case_sources (
        run_id TEXT NOT NULL REFERENCES eval_runs(id) ON DELETE CASCADE,
        suite TEXT NOT NULL,
        case_id TEXT NOT NULL,
        completion_id TEXT NOT NULL,
        PRIMARY KEY (run_id, suite, case_id, completion_id)
    );
    CREATE INDEX eval_case_sources_completion ON eval_case_sources(completion_id);
    UPDATE eval_runs SET suite_dataset_id =
        (SELECT dataset_id FROM adapter_versions a WHERE a.id = eval_runs.candidate);
    UPDATE dataset_sources SET erased = 1 WHERE completion_id NOT IN (SELECT id FROM completions)
        AND dataset_id IN (SELECT id FROM datasets WHERE tainted_at IS NOT NULL);
    UPDATE datasets SET erasure = 'pending' WHERE tainted_at IS NOT NULL;
    UPDATE adapter_versions SET trained_on_erased = 1
        WHERE dataset_id IN (SELECT id FROM datasets WHERE tainted_at IS NOT NULL);
    UPDATE eval_results SET answer = '[erased]' WHERE suite = 'tenant' AND run_id IN
        (SELECT id FROM eval_runs WHERE suite_dataset_id IN
            (SELECT id FROM datasets WHERE tainted_at IS NOT NULL));
    UPDATE eval_runs SET erased_at = CAST(strftime('%s', 'now') AS REAL)
        WHERE suite_dataset_id IN (SELECT id FROM datasets WHERE tainted_at IS NOT NULL)
    """,
    # Fair shares of the training machine (gateway.quotas): a tenant's own bounds and quotas
    # (NULL: the gateway's default), and when each job was last claimed (round-robin claims).
    """
    CREATE TABLE tenant_quotas (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        max_epochs INTEGER,
        max_batch_size INTEGER,
        max_seq_length INTEGER,
        max_train_examples INTEGER,
        max_queued_jobs INTEGER,
        max_jobs_per_day INTEGER,
        max_files INTEGER,
        max_file_bytes INTEGER,
        max_datasets INTEGER,
        max_eval_runs_per_day INTEGER,
        updated_at REAL NOT NULL
    );
    ALTER TABLE fine_tuning_jobs ADD COLUMN claimed_at REAL;
    """,
    # Dataset builds are queued work (training.dataset_builds): the gateway enqueues, a training
    # worker claims (fair across tenants), builds and records the outcome.
    """
    CREATE TABLE dataset_builds (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        created_by TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('traffic', 'file')),
        file_id TEXT,
        config TEXT NOT NULL,
        override TEXT,
        limits TEXT,
        status TEXT NOT NULL
            CHECK (status IN ('queued', 'building', 'ready', 'needs_review', 'failed')),
        created_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        claimed_at REAL,
        heartbeat_at REAL,
        finished_at REAL,
        dataset_id TEXT,
        report TEXT,
        error TEXT
    );
    CREATE INDEX dataset_builds_status ON dataset_builds(status, tenant_id);
    """,  # Eval runs and loop runs are queued rows that evals workers claim (evals.worker). The
    # status CHECK of eval_runs gains 'queued': SQLite rebuilds the table, and its two child
    # tables with it (a DROP of the parent would cascade into them); renaming the new parent
    # rewrites the children's REFERENCES. A run left 'running' by a gateway that ran it in
    # process before this version never finishes: it is marked failed.
    """
    CREATE TABLE eval_runs_next (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        candidate TEXT NOT NULL,
        live TEXT,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
        promote INTEGER,
        decision TEXT,
        summary TEXT,
        report_dir TEXT,
        error TEXT,
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        suite_dataset_id TEXT,
        erased_at REAL,
        spec TEXT,
        worker TEXT,
        heartbeat_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO eval_runs_next (id, tenant_id, alias, candidate, live, status, promote, decision,
        summary, report_dir, error, created_by, created_at, finished_at, suite_dataset_id,
        erased_at)
        SELECT id, tenant_id, alias, candidate, live,
            CASE status WHEN 'running' THEN 'failed' ELSE status END, promote, decision,
            summary, report_dir,
            CASE status WHEN 'running' THEN 'the gateway running this eval stopped' ELSE error END,
            created_by, created_at, finished_at, suite_dataset_id, erased_at FROM eval_runs;
    CREATE TABLE eval_results_next (
        run_id TEXT NOT NULL REFERENCES eval_runs_next(id) ON DELETE CASCADE,
        suite TEXT NOT NULL,
        case_id TEXT NOT NULL,
        system TEXT NOT NULL,
        score REAL NOT NULL,
        passed INTEGER NOT NULL,
        latency_ms REAL,
        answer TEXT NOT NULL,
        PRIMARY KEY (run_id, suite, case_id, system)
    );
    INSERT INTO eval_results_next SELECT run_id, suite, case_id, system, score, passed,
        latency_ms, answer FROM eval_results;
    CREATE TABLE eval_case_sources_next (
        run_id TEXT NOT NULL REFERENCES eval_runs_next(id) ON DELETE CASCADE,
        suite TEXT NOT NULL,
        case_id TEXT NOT NULL,
        completion_id TEXT NOT NULL,
        PRIMARY KEY (run_id, suite, case_id, completion_id)
    );
    INSERT INTO eval_case_sources_next SELECT run_id, suite, case_id, completion_id
        FROM eval_case_sources;
    DROP TABLE eval_case_sources;
    DROP TABLE eval_results;
    DROP TABLE eval_runs;
    ALTER TABLE eval_runs_next RENAME TO eval_runs;
    ALTER TABLE eval_results_next RENAME TO eval_results;
    ALTER TABLE eval_case_sources_next RENAME TO eval_case_sources;
    CREATE INDEX eval_runs_candidate ON eval_runs(tenant_id, candidate, created_at);
    CREATE INDEX eval_runs_queue ON eval_runs(status, created_at);
    CREATE INDEX eval_case_sources_completion ON eval_case_sources(completion_id);
    CREATE TABLE loop_runs (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        status TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        worker TEXT,
        heartbeat_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0,
        finished_at REAL
    );
    CREATE INDEX loop_runs_queue ON loop_runs(status, created_at)
    """,
    # Each answer's grader reasons (one per check, '; '-joined), shown beside the answer.
    "ALTER TABLE eval_results ADD COLUMN reasons TEXT NOT NULL DEFAULT ''",
    # The console's review queue reads a tenant's feedback grouped by completion (from the index
    # alone); a completion takes one reviewer's decision (gateway.review: the second is a 409);
    # the console lists a tenant's loop runs newest first.
    """
    CREATE INDEX feedback_tenant ON feedback(tenant_id, completion_id, rating, score, author);
    CREATE UNIQUE INDEX feedback_one_review ON feedback(completion_id)
        WHERE author LIKE 'reviewer:%';
    CREATE INDEX loop_runs_tenant ON loop_runs(tenant_id, created_at, id)
    """,
    # The Responses API (issue #23): a stored response, the captured exchange it came from
    # (deleting that row deletes the response) and the response it continues; a response sent
    # with store=false keeps its row without content, so continuing from it is refused.
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        completion_id TEXT REFERENCES completions(id) ON DELETE CASCADE,
        previous_response_id TEXT,
        model TEXT NOT NULL,
        stored INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('completed', 'incomplete', 'failed')),
        request TEXT,
        input_items TEXT,
        output TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        end_user TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX responses_tenant ON responses(tenant_id, created_at);
    CREATE INDEX responses_completion ON responses(completion_id)
    """,
    # The Batch API (issue #23): a tenant's batch (queued for an evals worker, claimed with a
    # heartbeat like eval runs), one result per answered input line (so a resumed batch sends
    # no line twice), and the batch quotas.
    """
    CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        key_id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        input_file_id TEXT NOT NULL,
        completion_window TEXT NOT NULL,
        status TEXT NOT NULL,
        metadata TEXT NOT NULL,
        model TEXT,
        total INTEGER NOT NULL,
        completed INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        output_file_id TEXT,
        error_file_id TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        in_progress_at REAL,
        finalizing_at REAL,
        completed_at REAL,
        failed_at REAL,
        expired_at REAL,
        cancelling_at REAL,
        cancelled_at REAL,
        worker TEXT,
        heartbeat_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX batches_tenant ON batches(tenant_id, created_at, id);
    CREATE INDEX batches_status ON batches(status, created_at);
    CREATE TABLE batch_results (
        batch_id TEXT NOT NULL REFERENCES batches(id) ON DELETE CASCADE,
        line INTEGER NOT NULL,
        custom_id TEXT NOT NULL,
        status_code INTEGER,
        request_id TEXT,
        body TEXT,
        error_code TEXT,
        error_message TEXT,
        created_at REAL NOT NULL,
        PRIMARY KEY (batch_id, line)
    );
    ALTER TABLE tenant_quotas ADD COLUMN max_active_batches INTEGER;
    ALTER TABLE tenant_quotas ADD COLUMN max_batch_lines INTEGER
    """,
    # A fine-tuning job's per-epoch adapters (issue #23): saved by the worker while it trains,
    # listed at /v1/fine_tuning/jobs/{id}/checkpoints, each registrable as a candidate version.
    """
    CREATE TABLE job_checkpoints (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES fine_tuning_jobs(id) ON DELETE CASCADE,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        epoch REAL NOT NULL,
        train_loss REAL,
        valid_loss REAL,
        path TEXT NOT NULL,
        fine_tuned_model_checkpoint TEXT NOT NULL,
        created_at REAL NOT NULL,
        adapter_version TEXT,
        UNIQUE (job_id, step)
    );
    CREATE INDEX job_checkpoints_tenant ON job_checkpoints(tenant_id, job_id, step)
    """,
    # The tool calls of a captured answer (issue #23), JSON of OpenAI's list, so stored
    # completions, exports and datasets keep tool use.
    "ALTER TABLE completions ADD COLUMN tool_calls TEXT",
    # PLACEHOLDER H1 (workers, issue #25): replace this no-op with your migration (keep the slot).
    "SELECT 1",
    # Each tenant's LLM judge (issue #26): one of its aliases, served like its traffic under its
    # own limits, or an external OpenAI-compatible endpoint whose key is stored encrypted
    # (gateway.judges); `key_hint` is the masked key the API shows.
    """
    CREATE TABLE judges (
        tenant_id TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        kind TEXT NOT NULL CHECK (kind IN ('alias', 'external')),
        alias TEXT,
        base_url TEXT,
        model TEXT,
        api_key_sealed TEXT,
        key_hint TEXT,
        max_tokens INTEGER NOT NULL,
        timeout_s REAL NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        CHECK ((kind = 'alias') = (alias IS NOT NULL)),
        CHECK ((kind = 'external') = (base_url IS NOT NULL AND model IS NOT NULL))
    )
    """,
    # Canary counts shared by every gateway (each flushes its deltas with upsert-increments) and
    # shadow evaluation: an alias's mirrored traffic to a candidate, its pairs and their grades
    # (issue #26, gateway.canary, gateway.shadow, evals.shadow_grading).
    """
    CREATE TABLE canary_counts (
        canary_id TEXT NOT NULL REFERENCES canaries(id) ON DELETE CASCADE,
        arm TEXT NOT NULL CHECK (arm IN ('canary', 'live')),
        requests INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (canary_id, arm)
    );
    CREATE TABLE canary_latency (
        canary_id TEXT NOT NULL REFERENCES canaries(id) ON DELETE CASCADE,
        arm TEXT NOT NULL CHECK (arm IN ('canary', 'live')),
        bucket INTEGER NOT NULL,
        answers INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (canary_id, arm, bucket)
    );
    CREATE TABLE shadows (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        version TEXT NOT NULL,
        share REAL NOT NULL,
        max_inflight INTEGER NOT NULL,
        per_minute INTEGER NOT NULL,
        checks TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'stopped')),
        actor TEXT NOT NULL,
        started_at REAL NOT NULL,
        skipped INTEGER NOT NULL DEFAULT 0,
        ended_at REAL,
        reason TEXT
    );
    CREATE UNIQUE INDEX shadows_one_active ON shadows(tenant_id, alias) WHERE status = 'active';
    CREATE INDEX shadows_alias ON shadows(tenant_id, alias, version);
    CREATE TABLE shadow_pairs (
        id TEXT PRIMARY KEY,
        shadow_id TEXT NOT NULL REFERENCES shadows(id) ON DELETE CASCADE,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        live_completion_id TEXT NOT NULL REFERENCES completions(id) ON DELETE CASCADE,
        request_id TEXT NOT NULL,
        live_version TEXT,
        candidate_version TEXT NOT NULL,
        live_answer TEXT NOT NULL,
        candidate_answer TEXT,
        candidate_error TEXT,
        candidate_latency_ms REAL,
        created_at REAL NOT NULL,
        verdict TEXT CHECK (verdict IN ('win', 'loss', 'tie', 'ungradable')),
        live_score REAL,
        candidate_score REAL,
        reasons TEXT NOT NULL DEFAULT '',
        graded_at REAL
    );
    CREATE INDEX shadow_pairs_of ON shadow_pairs(tenant_id, alias, candidate_version, created_at);
    CREATE INDEX shadow_pairs_completion ON shadow_pairs(live_completion_id);
    CREATE INDEX shadow_pairs_ungraded ON shadow_pairs(created_at) WHERE verdict IS NULL;
    """,
    # Rollouts (issue #26, gateway.rollout): the promotion controller's run per alias, its
    # stage and JSON state, the gateway process whose lease advances it; one running per alias.
    """
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        alias TEXT NOT NULL,
        version TEXT NOT NULL,
        status TEXT NOT NULL,
        stage TEXT NOT NULL,
        policy TEXT NOT NULL,
        state TEXT NOT NULL,
        actor TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        owner TEXT,
        lease_until REAL,
        finished_at REAL
    );
    CREATE UNIQUE INDEX rollouts_one_running ON rollouts(tenant_id, alias)
        WHERE status = 'running';
    CREATE INDEX rollouts_tenant ON rollouts(tenant_id, created_at, id)
    """,
    # Capture's hot statements (issue #25): SQLite codes a CHECK's `IN` list of more than two
    # constants as a temporary table that every INSERT and UPDATE of a captured row built anew
    # (~3 us a statement, a quarter of SQLite's time for the row). The same rule spelled with
    # `OR` is checked in place. Only the table's recorded SQL changes (SQLite's documented
    # procedure for changing CHECK constraints: no row is rewritten, and every existing row
    # satisfies the same rule); the table created and dropped first bumps the schema cookie so
    # every open connection reloads the schema, and RESET reloads this one's.
    """
    CREATE TABLE schema_cookie_bump (x);
    DROP TABLE schema_cookie_bump;
    PRAGMA writable_schema = ON;
    UPDATE sqlite_master SET sql = replace(sql,
        'status IN (''in_progress'', ''complete'', ''incomplete'', ''error'')',
        'status = ''in_progress'' OR status = ''complete'' OR status = ''incomplete'' '
        || 'OR status = ''error''')
        WHERE type = 'table' AND name = 'completions';
    PRAGMA writable_schema = RESET
    """,
)
