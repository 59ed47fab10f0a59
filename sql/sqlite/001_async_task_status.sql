-- Request status table for SQLite 3.38 or later: one row per request, one per batch.
-- Idempotent. Same columns as the MySQL table; timestamps are UTC text 'YYYY-MM-DD HH:MM:SS'
-- (SQLite's CURRENT_TIMESTAMP), and a trigger keeps updated_at, as ON UPDATE does on MySQL.
CREATE TABLE IF NOT EXISTS async_task_status (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id VARCHAR(255) NOT NULL UNIQUE,
    status VARCHAR(50) NOT NULL,
    data TEXT CHECK (data IS NULL OR json_valid(data)),
    created_at TEXT DEFAULT CURRENT_TIMESTAMP,
    updated_at TEXT DEFAULT CURRENT_TIMESTAMP,
    batch_id VARCHAR(64) NULL,
    chunk_no INTEGER NULL,
    api_code VARCHAR(8) NULL,
    org_code VARCHAR(32) NULL,
    -- 'query', 'write', 'session', or 'batch' for the batch's own row
    kind VARCHAR(16) NOT NULL DEFAULT 'query',
    attempts INTEGER NOT NULL DEFAULT 0,
    msgid VARCHAR(30) NULL,
    error VARCHAR(1000) NULL
);

CREATE INDEX IF NOT EXISTS ix_async_task_status_status
    ON async_task_status (status);

CREATE INDEX IF NOT EXISTS ix_async_task_status_batch
    ON async_task_status (batch_id, chunk_no, status);

CREATE INDEX IF NOT EXISTS ix_async_task_status_created_at
    ON async_task_status (created_at);

CREATE INDEX IF NOT EXISTS ix_async_task_status_api_code
    ON async_task_status (api_code, created_at);

CREATE INDEX IF NOT EXISTS ix_async_task_status_org_code
    ON async_task_status (org_code, created_at);

-- Like ON UPDATE CURRENT_TIMESTAMP: touch updated_at when a value changed and the statement
-- did not set updated_at itself.
CREATE TRIGGER IF NOT EXISTS async_task_status_touch_updated_at
AFTER UPDATE ON async_task_status
FOR EACH ROW
WHEN NEW.updated_at IS OLD.updated_at
    AND (
        NEW.task_id IS NOT OLD.task_id
        OR NEW.status IS NOT OLD.status
        OR NEW.data IS NOT OLD.data
        OR NEW.created_at IS NOT OLD.created_at
        OR NEW.batch_id IS NOT OLD.batch_id
        OR NEW.chunk_no IS NOT OLD.chunk_no
        OR NEW.api_code IS NOT OLD.api_code
        OR NEW.org_code IS NOT OLD.org_code
        OR NEW.kind IS NOT OLD.kind
        OR NEW.attempts IS NOT OLD.attempts
        OR NEW.msgid IS NOT OLD.msgid
        OR NEW.error IS NOT OLD.error
    )
BEGIN
    UPDATE async_task_status SET updated_at = CURRENT_TIMESTAMP WHERE id = NEW.id;
END;
