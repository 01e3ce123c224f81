"""Named defaults, in one place. `Settings` reads these when nothing overrides them."""

from __future__ import annotations

HOME = ".gdpr"
CONFIG_FILE = "gdpr.toml"
SOURCES_FILE = "sources.toml"

DUE_MONTHS = 1  # Art. 12(3): one month from receipt
MAX_EXTENSION_MONTHS = 2  # Art. 12(3): extendable by two further months

FOUR_EYES = True  # erasure needs approval by a second operator
OTP_LOCKOUT_MINUTES = 15  # after five wrong one-time codes in 15 minutes
AUTO_APPROVE_EXPORTS = True

LINK_TTL_DAYS = 7
LINK_MAX_DOWNLOADS = 3
PACKAGE_TTL_DAYS = 30

BATCH_SIZE = 1000
EXPORT_BATCH = 16  # queued exports one worker claims and reads for at once (1: one at a time)
ERASE_CHUNK_SECONDS = 20.0  # one erasure task runs this long, then re-enqueues the rest
LOCK_TIMEOUT_MS = 5_000
STATEMENT_TIMEOUT_MS = 60_000

DB_POOL_SIZE = 5  # connections the control database's pool keeps, per process
DB_MAX_OVERFLOW = 5  # ... and may open beyond that while busy
SOURCE_POOL_SIZE = 2  # the same for each SQL source (manifest `pool_size`)
SOURCE_MAX_OVERFLOW = 2  # ... (manifest `max_overflow`)

SWEEP_EVERY_SECONDS = 60  # beat fires the maintenance sweep this often
REDISPATCH_AFTER_SECONDS = 60  # queued requests older than this are dispatched again
LEASE_SECONDS = 30  # a running claim's lease; its heartbeat renews it every third of that

RETENTION_CRON = "0 2 * * *"  # nightly sweeps at 02:00 in the configured timezone
AUDIT_CHECKPOINT_CRON = "0 0 * * *"  # the audit chain's head, signed to storage daily
RETENTION_BATCH_SIZE = 20_000  # keys per batch transaction of a retention sweep
RETENTION_MAX_SECONDS = 4 * 3600  # one run of one policy stops after this long
RETENTION_MAX_ITEMS = 0  # ... or after this many items (0: no limit)
RETENTION_PAUSE_MS = 0  # pause between batches (spare a busy database)
RETENTION_CHUNK_SECONDS = 60.0  # one sweep task works this long, then re-enqueues the rest
RETENTION_LEASE_SECONDS = 300  # a policy's lease; renewed after every chunk
RETENTION_PARTS = 2  # a big policy fans out across this many workers by key range
RETENTION_FANOUT_ROWS = 1_000_000  # ... when its table holds at least this many rows
RETENTION_SUBJECT_BATCH = 500  # subjects handed to erasure per chunk of a subject policy
RETENTION_REPORT_GRACE_DAYS = 2  # `retention report` fails when items are this late
TIMEZONE = "UTC"

SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8080
RATE_LIMIT_PER_MINUTE = 30
SERVE_THREADS = 8  # requests handled at once; downloads stream, so each holds one
SERVE_CONNECTION_LIMIT = 2000  # open connections in all (waitress: 100); needs poll(), fds
SERVE_CONNECTIONS_PER_CLIENT = 50  # open connections per client address (0: no cap)
SERVE_IDLE_TIMEOUT_SECONDS = 15  # silent connection, or a response nobody reads, is closed
SERVE_REQUEST_TIMEOUT_SECONDS = 10  # a request must arrive whole this soon after its 1st byte
SERVE_MAX_HEADER_BYTES = 65_536  # request line + headers (waitress: 256 KiB); 431 beyond
SERVE_MAX_BODY_BYTES = 65_536  # request body (waitress: 1 GiB); 413 beyond

MAIL_FROM = "privacy@localhost"

LOG_FORMAT = "text"  # or "json": one JSON object per line
LOG_FORMATS = ("text", "json")
METRICS_HOST = "127.0.0.1"  # /metrics of `gdpr worker` and `gdpr serve`: loopback only
ALERT_EVERY_SECONDS = 300  # beat evaluates the alert conditions this often
ALERT_REFUSALS_PER_HOUR = 5  # refused operator actions or wrong one-time codes in an hour
ALERT_FAILED_STEPS_PER_HOUR = 10  # request steps that failed in an hour
ALERT_DUE_SOON_DAYS = 5  # an open request due within this many days
ALERT_TOKEN_REFUSALS = 100  # refused download tokens from one client ...
ALERT_TOKEN_WINDOW_MINUTES = 15  # ... within this many minutes
ALERT_DIGEST_HOUR = 8  # the daily digest goes out at the first check from this hour on
ALERT_WEBHOOK_TIMEOUT_SECONDS = 10.0  # connect and read, per alert
ALERT_GIVE_UP_HOURS = 24  # a notice no channel took within this long is dropped
