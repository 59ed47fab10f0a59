-- Request status table for MySQL 8.4 and MariaDB 10.11: one row per request, one per batch.
-- Idempotent. Indexes sit inside CREATE TABLE because MySQL has no CREATE INDEX IF NOT EXISTS.
-- Timestamps are TIMESTAMP (stored in UTC); the store sets the session time_zone to '+00:00'.
-- The seed columns come first, unchanged but for the identifiers' binary collation: under
-- utf8mb4_unicode_ci 'ABC' = 'abc' and every emoji or rare CJK character (U+20000...) equals every
-- other, so distinct task ids would collide; SQLite compares them byte for byte as well.
CREATE TABLE IF NOT EXISTS async_task_status (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    task_id VARCHAR(255) COLLATE utf8mb4_bin NOT NULL UNIQUE,
    status VARCHAR(50) NOT NULL,
    data JSON,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    batch_id VARCHAR(64) COLLATE utf8mb4_bin NULL,
    chunk_no INT NULL,
    api_code VARCHAR(8) NULL,
    org_code VARCHAR(32) NULL,
    -- 'query', 'write', 'session', or 'batch' for the batch's own row
    kind VARCHAR(16) NOT NULL DEFAULT 'query',
    attempts INT NOT NULL DEFAULT 0,
    msgid VARCHAR(30) COLLATE utf8mb4_bin NULL,
    error VARCHAR(1000) NULL,
    INDEX ix_async_task_status_status (status),
    INDEX ix_async_task_status_batch (batch_id, chunk_no, status),
    INDEX ix_async_task_status_created_at (created_at),
    INDEX ix_async_task_status_api_code (api_code, created_at),
    INDEX ix_async_task_status_org_code (org_code, created_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
