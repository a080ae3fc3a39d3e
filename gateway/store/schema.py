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
)
