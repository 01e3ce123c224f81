"""The shop schema of `bench/requests_at_scale.py`: tables, generator, manifest, indexes,
and the hand-written floor of a request (one query per table for one subject).

Per customer: one address, 2 cards, 3 orders of 2 items each, 5 logins, 2 visits and one
support request; besides, a catalogue of 1,000 products. No foreign-key constraints and no
index beyond the primary keys: the references are declared in the sources manifest, as
many real schemas need. Customer ``g`` has the id ``g`` and the email
``Customer<g>@example.com`` (capitals: the connector matches emails case-insensitively);
every child row of theirs has an id derived from ``g``, so any id range can be generated
(or generated again) on its own, entirely inside PostgreSQL (``INSERT ... SELECT
generate_series``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

PRODUCTS = 1000

# table -> rows per customer (products are not per customer)
PER_CUSTOMER = {
    "customers": 1,
    "addresses": 1,
    "cards": 2,
    "orders": 3,
    "order_items": 6,
    "logins": 5,
    "visits": 2,
    "support_requests": 1,
}

TABLES = [
    "CREATE TABLE products (id bigint PRIMARY KEY, name text NOT NULL,"
    " price numeric(10,2) NOT NULL)",
    "CREATE TABLE addresses (id bigint PRIMARY KEY, street text NOT NULL,"
    " city text NOT NULL, postcode text NOT NULL)",
    "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL, name text NOT NULL,"
    " phone text, address_id bigint, created_at timestamptz NOT NULL)",
    "CREATE TABLE cards (id bigint PRIMARY KEY, customer_id bigint NOT NULL,"
    " brand text NOT NULL, last4 text NOT NULL)",
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL,"
    " shipping_address_id bigint, placed_at timestamptz NOT NULL,"
    " total numeric(10,2) NOT NULL)",
    "CREATE TABLE order_items (order_id bigint NOT NULL, line_no int NOT NULL,"
    " product_id bigint NOT NULL, quantity int NOT NULL, PRIMARY KEY (order_id, line_no))",
    "CREATE TABLE logins (id bigint PRIMARY KEY, customer_id bigint NOT NULL,"
    " ip text NOT NULL, at timestamptz NOT NULL)",
    "CREATE TABLE visits (id bigint PRIMARY KEY, customer_id bigint NOT NULL,"
    " path text NOT NULL, at timestamptz NOT NULL)",
    "CREATE TABLE support_requests (id bigint PRIMARY KEY, email text NOT NULL,"
    " subject text NOT NULL, body text NOT NULL, created_at timestamptz NOT NULL)",
]

CATALOGUE = (
    "INSERT INTO products SELECT p, 'Product ' || p, (p % 90 + 10)::numeric(10,2)"
    f" FROM generate_series(1, {PRODUCTS}) p"
)

# Each statement is formatted with `lo` and `hi`: the customer ids to generate, both included.
CUSTOMERS = "generate_series({lo}::bigint, {hi}::bigint) g"
FILL = [
    "INSERT INTO addresses SELECT g, g || ' Market Street', 'City ' || g % 500,"
    f" lpad((g % 100000)::text, 5, '0') FROM {CUSTOMERS}",
    "INSERT INTO customers SELECT g, 'Customer' || g || '@example.com', 'Customer ' || g,"
    " '+4420' || lpad((g % 100000000)::text, 8, '0'), g,"
    f" timestamptz '2024-01-01 00:00Z' + g * interval '1 minute' FROM {CUSTOMERS}",
    "INSERT INTO cards SELECT 2 * (g - 1) + k, g, (ARRAY['visa', 'mastercard'])[k],"
    f" lpad(((g * 7 + k) % 10000)::text, 4, '0') FROM {CUSTOMERS}, generate_series(1, 2) k",
    "INSERT INTO orders SELECT 3 * (g - 1) + k, g, g,"
    " timestamptz '2025-01-01 00:00Z' + (3 * g + k) * interval '1 minute',"
    f" ((g * k) % 500 + 10)::numeric(10,2) FROM {CUSTOMERS}, generate_series(1, 3) k",
    "INSERT INTO order_items SELECT 3 * (g - 1) + k, l,"
    f" 1 + (3 * g + k + l) % {PRODUCTS}, 1 + (g + l) % 3"
    f" FROM {CUSTOMERS}, generate_series(1, 3) k, generate_series(1, 2) l",
    "INSERT INTO logins SELECT 5 * (g - 1) + k, g,"
    " '10.' || g % 256 || '.' || (g / 256) % 256 || '.' || k,"
    " timestamptz '2025-06-01 00:00Z' + (5 * g + k) * interval '1 second'"
    f" FROM {CUSTOMERS}, generate_series(1, 5) k",
    "INSERT INTO visits SELECT 2 * (g - 1) + k, g, '/products/' || (g + k) % 1000,"
    " timestamptz '2025-06-01 00:00Z' + (2 * g + k) * interval '1 second'"
    f" FROM {CUSTOMERS}, generate_series(1, 2) k",
    "INSERT INTO support_requests SELECT g, 'Customer' || g || '@example.com',"
    " 'Where is my order?', 'Order ' || 3 * (g - 1) + 1 || ' has not arrived yet.',"
    f" timestamptz '2025-07-01 00:00Z' + g * interval '1 minute' FROM {CUSTOMERS}",
]

MANIFEST = """\
[sources.shop]
kind = "sql"
url = "{url}"
ignore_tables = ["products"]

[sources.shop.tables.customers]
identities = {{ email = "email", id = "customer_id" }}
references = [{{ columns = "address_id", table = "addresses", kind = "shared" }}]
description = "Your customer account"

[sources.shop.tables.addresses]
description = "Your addresses"

[sources.shop.tables.cards]
references = [{{ columns = "customer_id", table = "customers", kind = "owned" }}]
description = "Your payment cards"

[sources.shop.tables.orders]
references = [
    {{ columns = "customer_id", table = "customers", kind = "owned" }},
    {{ columns = "shipping_address_id", table = "addresses", kind = "shared" }},
]
description = "Your orders"

[sources.shop.tables.order_items]
references = [
    {{ columns = "order_id", table = "orders", kind = "owned" }},
    {{ columns = "product_id", table = "products", kind = "link" }},
]
description = "What you ordered"

[sources.shop.tables.logins]
references = [{{ columns = "customer_id", table = "customers", kind = "owned" }}]
description = "Your logins"

[sources.shop.tables.visits]
references = [{{ columns = "customer_id", table = "customers", kind = "owned" }}]
description = "Your visits to the shop"

[sources.shop.tables.support_requests]
identities = {{ email = "email" }}
description = "Your messages to customer support"
"""

# What an index advisor should recommend for this schema: every identity column (as the
# connector compares it: lower() for emails) and every declared reference column that is
# not the leading column of an index already (order_items.order_id leads the primary key;
# a link is never followed).
INDEXES = [
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_lower_email_idx ON customers (lower(email))",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS customers_address_id_idx ON customers (address_id)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS cards_customer_id_idx ON cards (customer_id)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_customer_id_idx ON orders (customer_id)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_shipping_address_id_idx"
    " ON orders (shipping_address_id)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS logins_customer_id_idx ON logins (customer_id)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS visits_customer_id_idx ON visits (customer_id)",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS support_requests_lower_email_idx"
    " ON support_requests (lower(email))",
]


def email_of(customer: int) -> str:
    return f"Customer{customer}@example.com"


def manifest(url: str) -> str:
    """The sources manifest of the shop at `url` (a SQLAlchemy URL)."""
    return MANIFEST.format(url=url)


def create(conn: psycopg.Connection[Any], customers: int) -> None:
    """Drop and create the shop's tables, with `customers` customers and the catalogue,
    then ``VACUUM ANALYZE`` (as a loaded database would be). `conn` is in autocommit."""
    for name in ("products", *PER_CUSTOMER):
        conn.execute(f"DROP TABLE IF EXISTS {name}")
    for statement in TABLES:
        conn.execute(statement)
    conn.execute(CATALOGUE)
    fill(conn, 1, customers)
    for name in ("products", *PER_CUSTOMER):
        conn.execute(f"VACUUM ANALYZE {name}")


def fill(conn: psycopg.Connection[Any], lo: int, hi: int) -> None:
    """Insert customers `lo`..`hi` (both included) with all their rows, in one transaction."""
    if hi < lo:
        return
    with conn.transaction():
        for statement in FILL:
            conn.execute(statement.replace("{lo}", str(int(lo))).replace("{hi}", str(int(hi))))


def row_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Rows per table, products included."""
    found = {}
    for name in ("products", *PER_CUSTOMER):
        row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
        found[name] = int(row[0]) if row else 0
    return found


def expected_counts(customers: int) -> dict[str, int]:
    return {"products": PRODUCTS, **{t: n * customers for t, n in PER_CUSTOMER.items()}}


def table_sizes(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Total size of each table with its indexes, as PostgreSQL prints it."""
    found = {}
    for name in ("products", *PER_CUSTOMER):
        row = conn.execute("SELECT pg_size_pretty(pg_total_relation_size(%s))", (name,)).fetchone()
        found[name] = str(row[0]) if row else "?"
    return found


def create_indexes(conn: psycopg.Connection[Any], statements: Iterable[str]) -> int:
    """Run `statements` (CREATE INDEX [CONCURRENTLY]; `conn` in autocommit), then
    ``ANALYZE``; how many ran."""
    done = 0
    for statement in statements:
        conn.execute(statement)
        done += 1
    conn.execute("ANALYZE")
    return done


# --- the floor: one hand-written query per table for one subject -------------------------


@dataclass(frozen=True)
class Floor:
    """What the hand-written queries touched: rows read (export) or deleted (erasure)."""

    rows: int
    statements: int


def export_floor(conn: psycopg.Connection[Any], email: str) -> Floor:
    """Read every row of the subject: each table once, keys bound as arrays."""
    statements, rows = 0, 0

    def read(sql: str, *params: object) -> list[tuple[Any, ...]]:
        nonlocal statements, rows
        found = conn.execute(sql, params).fetchall()
        statements, rows = statements + 1, rows + len(found)
        return found

    with conn.transaction():
        customers = read("SELECT * FROM customers WHERE lower(email) = lower(%s)", email)
        ids = [row[0] for row in customers]
        read("SELECT * FROM cards WHERE customer_id = ANY(%s)", ids)
        orders = read("SELECT * FROM orders WHERE customer_id = ANY(%s)", ids)
        read("SELECT * FROM order_items WHERE order_id = ANY(%s)", [row[0] for row in orders])
        read("SELECT * FROM logins WHERE customer_id = ANY(%s)", ids)
        read("SELECT * FROM visits WHERE customer_id = ANY(%s)", ids)
        read("SELECT * FROM support_requests WHERE lower(email) = lower(%s)", email)
        places = {row[4] for row in customers} | {row[2] for row in orders}
        read("SELECT * FROM addresses WHERE id = ANY(%s)", sorted(p for p in places if p))
    return Floor(rows, statements)


ERASE_ADDRESSES = (
    "DELETE FROM addresses a WHERE a.id = ANY(%s)"
    " AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.address_id = a.id)"
    " AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.shipping_address_id = a.id)"
)


def erase_floor(conn: psycopg.Connection[Any], email: str) -> Floor:
    """Delete every row of the subject in one transaction, each table once (the customer
    read first for its keys); an address only when nothing else uses it."""
    statements, rows = 0, 0

    def run(sql: str, *params: object) -> Sequence[tuple[Any, ...]]:
        nonlocal statements, rows
        cursor = conn.execute(sql, params)
        statements += 1
        if sql.startswith("SELECT"):
            return cursor.fetchall()
        rows += cursor.rowcount
        return cursor.fetchall() if cursor.description else []

    with conn.transaction():
        customers = run(
            "SELECT id, address_id FROM customers WHERE lower(email) = lower(%s)", email
        )
        ids = [row[0] for row in customers]
        orders = run(
            "DELETE FROM orders WHERE customer_id = ANY(%s) RETURNING id, shipping_address_id", ids
        )
        run("DELETE FROM order_items WHERE order_id = ANY(%s)", [row[0] for row in orders])
        for table in ("cards", "logins", "visits"):
            run(f"DELETE FROM {table} WHERE customer_id = ANY(%s)", ids)
        run("DELETE FROM support_requests WHERE lower(email) = lower(%s)", email)
        run("DELETE FROM customers WHERE id = ANY(%s)", ids)
        places = {row[1] for row in customers} | {row[1] for row in orders}
        run(ERASE_ADDRESSES, sorted(p for p in places if p))
    return Floor(rows, statements)
