"""A realistic sample application: a shop database and a CRM database.

Used by the SQL connector, cascade and erasure tests, and by the demo. The shop has what
real schemas have: a subject table with a self-reference (`users.referred_by`), a
reference cycle (`users.default_payment_method_id` <-> `payment_methods.user_id`),
addresses shared between users, orders with composite-key line items that point into a
product catalogue, payments kept by law (anonymised, not deleted), invoices retained as
they are, sessions, an audit-ish log keyed by email, and a table whose reference to
`users` exists only in the manifest (no FK constraint). The CRM links a user id to a
customer number, which the shop's loyalty cards use: resolving needs both databases.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    insert,
)

SHOP = MetaData()
CRM = MetaData()

addresses = Table(
    "addresses",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("street", String(200), nullable=False),
    Column("city", String(100), nullable=False),
    Column("postcode", String(20), nullable=False),
)
users = Table(
    "users",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("email", String(254), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("password_hash", String(200), nullable=False, server_default="!"),
    Column("referred_by", Integer, ForeignKey("users.id"), nullable=True),
    Column("address_id", Integer, ForeignKey("addresses.id"), nullable=True),
    Column(
        "default_payment_method_id",
        Integer,
        ForeignKey("payment_methods.id", use_alter=True, name="fk_users_default_pm"),
        nullable=True,
    ),
    Column("closed_at", DateTime(timezone=True), nullable=True),
)
payment_methods = Table(
    "payment_methods",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("brand", String(20), nullable=False),
    Column("last4", String(4), nullable=False),
)
profiles = Table(
    "profiles",
    SHOP,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("bio", Text, nullable=True),
    Column("phone", String(32), nullable=True),
    Column("birthday", Date, nullable=True),
)
products = Table(
    "products",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("price", Numeric(10, 2), nullable=False),
)
orders = Table(
    "orders",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("shipping_address_id", Integer, ForeignKey("addresses.id"), nullable=True),
    Column("placed_at", DateTime(timezone=True), nullable=False),
    Column("total", Numeric(10, 2), nullable=False),
)
order_items = Table(
    "order_items",
    SHOP,
    Column("order_id", Integer, ForeignKey("orders.id"), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("product_id", Integer, ForeignKey("products.id"), nullable=False),
    Column("quantity", Integer, nullable=False),
)
returns = Table(
    "returns",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, nullable=False),
    Column("line_no", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    ForeignKeyConstraint(["order_id", "line_no"], ["order_items.order_id", "order_items.line_no"]),
)
payments = Table(
    "payments",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=True),
    Column("amount", Numeric(10, 2), nullable=False),
    Column("billing_name", String(200), nullable=False),
    Column("card_last4", String(4), nullable=True),
    Column("paid_at", DateTime(timezone=True), nullable=False),
)
invoices = Table(
    "invoices",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=True),
    Column("number", String(40), nullable=False),
    Column("amount", Numeric(10, 2), nullable=False),
)
sessions = Table(
    "sessions",
    SHOP,
    Column("token", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("ip", String(45), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
activity_log = Table(
    "activity_log",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("actor_email", String(254), nullable=False),
    Column("action", String(100), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
newsletter = Table(  # no FK constraint: the reference is declared in the manifest
    "newsletter",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("user_ref", Integer, nullable=False),
    Column("topic", String(100), nullable=False),
)
loyalty_cards = Table(
    "loyalty_cards",
    SHOP,
    Column("id", Integer, primary_key=True),
    Column("customer_no", String(20), nullable=False),
    Column("points", Integer, nullable=False),
)

customers = Table(
    "customers",
    CRM,
    Column("id", Integer, primary_key=True),
    Column("app_user_id", Integer, nullable=False),
    Column("customer_no", String(20), nullable=False, unique=True),
    Column("segment", String(40), nullable=False),
)
tickets = Table(
    "tickets",
    CRM,
    Column("id", Integer, primary_key=True),
    Column("customer_id", Integer, ForeignKey("customers.id"), nullable=False),
    Column("body", Text, nullable=False),
)

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

# Ada (user 1) is the subject. Bob (2) shares her address and was referred by her.
# Cy (3) lives elsewhere and shares nothing with her.
SHOP_ROWS: list[tuple[Table, list[dict[str, Any]]]] = [
    (
        addresses,
        [
            {"id": 10, "street": "1 Shared Lane", "city": "Leeds", "postcode": "LS1 1AA"},
            {"id": 11, "street": "2 Ada Street", "city": "York", "postcode": "YO1 1AA"},
            {"id": 12, "street": "3 Cy Road", "city": "Hull", "postcode": "HU1 1AA"},
        ],
    ),
    (
        users,
        [
            {"id": 1, "email": "Ada@Example.com", "name": "Ada Lovelace", "address_id": 10},
            {"id": 2, "email": "bob@example.com", "name": "Bob", "address_id": 10},
            {"id": 3, "email": "cy@example.com", "name": "Cy", "address_id": 12},
        ],
    ),
    (
        payment_methods,
        [
            {"id": 100, "user_id": 1, "brand": "visa", "last4": "4242"},
            {"id": 101, "user_id": 2, "brand": "amex", "last4": "0005"},
        ],
    ),
    (
        profiles,
        [
            {"user_id": 1, "bio": "Analyst", "phone": "+441234567890", "birthday": None},
            {"user_id": 2, "bio": "Bob's bio", "phone": None, "birthday": None},
        ],
    ),
    (
        products,
        [
            {"id": 1000, "name": "Difference Engine", "price": Decimal("99.00")},
            {"id": 1001, "name": "Punch cards", "price": Decimal("5.00")},
        ],
    ),
    (
        orders,
        [
            {
                "id": 500,
                "user_id": 1,
                "shipping_address_id": 11,
                "placed_at": T0,
                "total": Decimal("104.00"),
            },
            {
                "id": 501,
                "user_id": 1,
                "shipping_address_id": 10,
                "placed_at": T0,
                "total": Decimal("5.00"),
            },
            {
                "id": 502,
                "user_id": 2,
                "shipping_address_id": 10,
                "placed_at": T0,
                "total": Decimal("99.00"),
            },
            {
                "id": 503,
                "user_id": 3,
                "shipping_address_id": 12,
                "placed_at": T0,
                "total": Decimal("5.00"),
            },
        ],
    ),
    (
        order_items,
        [
            {"order_id": 500, "line_no": 1, "product_id": 1000, "quantity": 1},
            {"order_id": 500, "line_no": 2, "product_id": 1001, "quantity": 1},
            {"order_id": 501, "line_no": 1, "product_id": 1001, "quantity": 1},
            {"order_id": 502, "line_no": 1, "product_id": 1000, "quantity": 1},
            {"order_id": 503, "line_no": 1, "product_id": 1001, "quantity": 1},
        ],
    ),
    (
        returns,
        [
            {"id": 700, "order_id": 500, "line_no": 2, "reason": "damaged"},
            {"id": 701, "order_id": 502, "line_no": 1, "reason": "changed mind"},
        ],
    ),
    (
        payments,
        [
            {
                "id": 800,
                "order_id": 500,
                "amount": Decimal("104.00"),
                "billing_name": "Ada Lovelace",
                "card_last4": "4242",
                "paid_at": T0,
            },
            {
                "id": 801,
                "order_id": 501,
                "amount": Decimal("5.00"),
                "billing_name": "Ada Lovelace",
                "card_last4": "4242",
                "paid_at": T0,
            },
            {
                "id": 802,
                "order_id": 502,
                "amount": Decimal("99.00"),
                "billing_name": "Bob",
                "card_last4": "0005",
                "paid_at": T0,
            },
        ],
    ),
    (
        invoices,
        [
            {"id": 900, "user_id": 1, "number": "INV-1", "amount": Decimal("104.00")},
            {"id": 901, "user_id": 2, "number": "INV-2", "amount": Decimal("99.00")},
        ],
    ),
    (
        sessions,
        [
            {"token": "s-ada-1", "user_id": 1, "ip": "192.0.2.1", "created_at": T0},
            {"token": "s-ada-2", "user_id": 1, "ip": "192.0.2.2", "created_at": T0},
            {"token": "s-bob-1", "user_id": 2, "ip": "192.0.2.3", "created_at": T0},
        ],
    ),
    (
        activity_log,
        [
            {"id": 1, "actor_email": "ada@example.com", "action": "login", "at": T0},
            {"id": 2, "actor_email": "ADA@EXAMPLE.COM", "action": "logout", "at": T0},
            {"id": 3, "actor_email": "bob@example.com", "action": "login", "at": T0},
        ],
    ),
    (
        newsletter,
        [
            {"id": 1, "user_ref": 1, "topic": "engines"},
            {"id": 2, "user_ref": 3, "topic": "cards"},
        ],
    ),
    (
        loyalty_cards,
        [
            {"id": 1, "customer_no": "C-0001", "points": 120},
            {"id": 2, "customer_no": "C-0002", "points": 5},
        ],
    ),
]
# After the rows exist: Bob was referred by Ada; both have a default payment method.
SHOP_UPDATES = [
    (users, 2, {"referred_by": 1, "default_payment_method_id": 101}),
    (users, 1, {"default_payment_method_id": 100}),
]
CRM_ROWS: list[tuple[Table, list[dict[str, Any]]]] = [
    (
        customers,
        [
            {"id": 1, "app_user_id": 1, "customer_no": "C-0001", "segment": "gold"},
            {"id": 2, "app_user_id": 2, "customer_no": "C-0002", "segment": "basic"},
        ],
    ),
    (
        tickets,
        [
            {"id": 1, "customer_id": 1, "body": "My engine is broken"},
            {"id": 2, "customer_id": 2, "body": "Bob's question"},
        ],
    ),
]

# What each table holds of Ada's, by key: the expectations the tests assert.
ADA_ROWS = {
    "users": {(1,)},
    "profiles": {(1,)},
    "payment_methods": {(100,)},
    "orders": {(500,), (501,)},
    "order_items": {(500, 1), (500, 2), (501, 1)},
    "returns": {(700,)},
    "payments": {(800,), (801,)},
    "invoices": {(900,)},
    "sessions": {("s-ada-1",), ("s-ada-2",)},
    "activity_log": {(1,), (2,)},
    "newsletter": {(1,)},
    "loyalty_cards": {(1,)},
    "addresses": {(10,), (11,)},  # 10 is shared with Bob, 11 only hers
}


def create(shop: Engine, crm: Engine) -> None:
    """Create both schemas and fill them with the sample rows."""
    SHOP.create_all(shop)
    CRM.create_all(crm)
    with shop.begin() as conn:
        for table, rows in SHOP_ROWS:
            conn.execute(insert(table), rows)
        for table, key, values in SHOP_UPDATES:
            conn.execute(table.update().where(table.c.id == key).values(values))
    with crm.begin() as conn:
        for table, rows in CRM_ROWS:
            conn.execute(insert(table), rows)


def manifest(shop_url: str, crm_url: str) -> str:
    """The sources manifest for both databases (TOML)."""
    return MANIFEST.replace("{shop_url}", shop_url).replace("{crm_url}", crm_url)


MANIFEST = """
[sources.shop]
kind = "sql"
url = "{shop_url}"
ignore_tables = ["products"]
purpose = "Selling and delivering what customers order"
legal_basis = "Art. 6(1)(b) GDPR: performance of a contract"

[sources.shop.tables.users]
identities = { email = "email", id = "user_id" }
export_exclude = ["password_hash"]
description = "Your account"

[[sources.shop.tables.users.references]]
columns = "referred_by"
table = "users"
kind = "link"
on_parent_erase = "detach"

[[sources.shop.tables.users.references]]
columns = "address_id"
table = "addresses"
kind = "shared"

[[sources.shop.tables.users.references]]
columns = "default_payment_method_id"
table = "payment_methods"
kind = "link"
on_parent_erase = "detach"

[sources.shop.tables.profiles]
description = "Your profile"

[sources.shop.tables.payment_methods]
description = "Saved payment cards"

[sources.shop.tables.addresses]
description = "Addresses you gave us"
recipients = ["Parcel carriers"]

[sources.shop.tables.orders]
description = "Your orders"
recipients = ["Parcel carriers"]
references = [{ columns = "shipping_address_id", table = "addresses", kind = "shared" }]

[sources.shop.tables.order_items]
description = "What you ordered"
references = [{ columns = "product_id", table = "products", kind = "link" }]

[sources.shop.tables.returns]
description = "Your returns"

[sources.shop.tables.payments]
on_erase = "anonymize"
anonymize = { billing_name = "hmac", card_last4 = "null" }
legal_basis = "Art. 6(1)(c) GDPR: tax law, ten years"
retention = "10 years"

[sources.shop.tables.invoices]
on_erase = "retain"
legal_basis = "Art. 6(1)(c) GDPR: commercial law, invoices kept 10 years"

[sources.shop.tables.sessions]
description = "Your sign-ins"
purpose = "Keeping you logged in"

[sources.shop.tables.activity_log]
description = "Security log of your account"
identities = { actor_email = "email" }
purpose = "Security monitoring"

[sources.shop.tables.newsletter]
references = [{ columns = "user_ref", table = "users", kind = "owned" }]

[sources.shop.tables.loyalty_cards]
identities = { customer_no = "customer_id" }

[sources.crm]
kind = "sql"
url = "{crm_url}"
purpose = "Customer support"

[sources.crm.tables.customers]
identities = { app_user_id = "user_id", customer_no = "customer_id" }

[sources.crm.tables.tickets]
description = "Your support tickets"
"""
