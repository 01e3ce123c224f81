"""A second sample shop, designed the way many real ones are: no FK constraints at all
(every reference is declared in the manifest), payment cards that pay other people's
orders, an address two customers share, payments kept by law behind NOT NULL integer
keys, and visits partitioned by month on PostgreSQL.

Ann (customer 1) and Ben (2) are the subjects the tests erase, in both orders; Cat (3)
shares nothing with them. Ann paid order 501 with Ben's card 101; Ben paid his own
order 502 with it too (tests drop 502 for "the card pays nobody else of its owner's").
"""

from __future__ import annotations

from sqlalchemy import Engine, text

T0 = "2025-06-01 12:00:00"

DDL = [
    "CREATE TABLE customers (id INTEGER PRIMARY KEY, email VARCHAR(254) NOT NULL,"
    " name VARCHAR(200) NOT NULL, address_id INTEGER)",
    "CREATE TABLE addresses (id INTEGER PRIMARY KEY, street VARCHAR(200) NOT NULL)",
    "CREATE TABLE payment_card (id INTEGER PRIMARY KEY, customer_id INTEGER,"
    " holder VARCHAR(200) NOT NULL, ccn VARCHAR(19), code VARCHAR(4))",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,"
    " payment_card_id INTEGER, address_id INTEGER, placed_at TIMESTAMP NOT NULL,"
    " note VARCHAR(200))",
    "CREATE TABLE order_items (order_id INTEGER NOT NULL, line_no INTEGER NOT NULL,"
    " sku VARCHAR(20) NOT NULL, PRIMARY KEY (order_id, line_no))",
    "CREATE TABLE payments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL,"
    " customer_id INTEGER NOT NULL, amount NUMERIC(10, 2) NOT NULL,"
    " payer_name VARCHAR(200) NOT NULL)",
    "CREATE TABLE logins (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL,"
    " ip VARCHAR(45) NOT NULL)",
    "CREATE TABLE support_requests (id INTEGER PRIMARY KEY, customer_ref VARCHAR(20),"
    " body TEXT NOT NULL)",
]
VISITS_SQLITE = (
    "CREATE TABLE visits (id INTEGER NOT NULL, at TIMESTAMP NOT NULL,"
    " customer_id INTEGER NOT NULL, page VARCHAR(200), PRIMARY KEY (id, at))"
)
VISITS_POSTGRES = [
    "CREATE TABLE visits (id INTEGER NOT NULL, at TIMESTAMP NOT NULL,"
    " customer_id INTEGER NOT NULL, page VARCHAR(200), PRIMARY KEY (id, at))"
    " PARTITION BY RANGE (at)",
    "CREATE TABLE visits_2025_05 PARTITION OF visits"
    " FOR VALUES FROM ('2025-05-01') TO ('2025-06-01')",
    "CREATE TABLE visits_2025_06 PARTITION OF visits"
    " FOR VALUES FROM ('2025-06-01') TO ('2025-07-01')",
]
ROWS = [
    "INSERT INTO addresses VALUES (10, '1 Shared Lane'), (11, '2 Ann Street'), (12, '3 Cat Road')",
    "INSERT INTO customers VALUES (1, 'ann@example.com', 'Ann', 10),"
    " (2, 'ben@example.com', 'Ben', 10), (3, 'cat@example.com', 'Cat', 12)",
    "INSERT INTO payment_card VALUES (100, 1, 'ANN A', '4111111111111111', '123'),"
    " (101, 2, 'BEN B', '5500000000000004', '456'), (102, 3, 'CAT C', '340000000000009', '789')",
    f"INSERT INTO orders VALUES (500, 1, 100, 11, '{T0}', 'ring twice'),"
    f" (501, 1, 101, 10, '{T0}', NULL), (502, 2, 101, 10, '{T0}', NULL),"
    f" (503, 3, 102, 12, '{T0}', NULL)",
    "INSERT INTO order_items VALUES (500, 1, 'A-1'), (501, 1, 'B-1'), (502, 1, 'C-1'),"
    " (503, 1, 'D-1')",
    "INSERT INTO payments VALUES (800, 500, 1, 10.00, 'Ann A'), (801, 501, 1, 5.00, 'Ann A'),"
    " (802, 502, 2, 7.00, 'Ben B'), (803, 503, 3, 9.00, 'Cat C')",
    "INSERT INTO logins VALUES (1, 1, '192.0.2.1'), (2, 2, '192.0.2.2'), (3, 3, '192.0.2.3')",
    "INSERT INTO support_requests VALUES (1, '1', 'Where is my ring?')",
    # SQLite keeps timestamps as text: written as SQLAlchemy writes them, so keys round-trip
    "INSERT INTO visits VALUES (1, '2025-05-03 10:00:00.000000', 1, '/rings'),"
    " (2, '2025-06-03 10:00:00.000000', 1, '/cart'), (3, '2025-06-04 10:00:00.000000', 2, '/'),"
    " (4, '2025-05-09 10:00:00.000000', 3, '/')",
]


def create(engine: Engine) -> None:
    """Create the shop's tables (visits partitioned on PostgreSQL) and fill them."""
    visits = VISITS_POSTGRES if engine.dialect.name == "postgresql" else [VISITS_SQLITE]
    with engine.begin() as conn:
        for statement in [*DDL, *visits, *ROWS]:
            conn.execute(text(statement))


def manifest(url: str) -> str:
    return MANIFEST.replace("{url}", url)


MANIFEST = """
[sources.cards]
kind = "sql"
url = "{url}"
ignore_tables = ["support_requests"]

[sources.cards.tables.customers]
identities = { email = "email", id = "user_id" }
description = "Your customer account"
placeholder = { id = 0, email = "erased@invalid", name = "Erased customer" }
references = [{ columns = "address_id", table = "addresses", kind = "shared" }]

[sources.cards.tables.addresses]
description = "Addresses"

[sources.cards.tables.payment_card]
description = "Your payment cards"
anonymize = { holder = "redact", ccn = "null", code = "null" }
references = [{ columns = "customer_id", table = "customers", kind = "owned" }]

[sources.cards.tables.orders]
description = "Your orders"
placeholder = { id = 0, customer_id = 0, placed_at = 1970-01-01T00:00:00 }
references = [
  { columns = "customer_id", table = "customers", kind = "owned" },
  { columns = "payment_card_id", table = "payment_card", kind = "shared" },
  { columns = "address_id", table = "addresses", kind = "shared" },
]

[sources.cards.tables.order_items]
references = [{ columns = "order_id", table = "orders", kind = "owned" }]

[sources.cards.tables.payments]
on_erase = "anonymize"
anonymize = { payer_name = "redact" }
legal_basis = "Art. 6(1)(c) GDPR: tax law"
references = [
  { columns = "order_id", table = "orders", kind = "owned", on_parent_erase = "placeholder" },
  { columns = "customer_id", table = "customers", kind = "owned", on_parent_erase = "placeholder" },
]

[sources.cards.tables.logins]
references = [{ columns = "customer_id", table = "customers", kind = "owned" }]

[sources.cards.tables.visits]
references = [{ columns = "customer_id", table = "customers", kind = "owned" }]
"""
