"""The input contract: the five canonical tables every source is mapped onto.

One definition serves the warehouse DDL, the ingestion parser, the quality-gate suites,
the demo world and the dbt sources (a test keeps dbt's sources in step with it).
See docs/design.md, "Input contract".
"""

from __future__ import annotations

from dataclasses import dataclass, field

# DuckDB types per contract kind. Money is DECIMAL so sums don't drift; scores are DOUBLE.
SQL_TYPES = {
    "text": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "money": "DECIMAL(18, 4)",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}

NEEDS_ITEMS = ("price", "quality", "brand", "service", "delivery", "reliability", "partnership")
# Optional survey items a company may add to its taxonomy (docs/design.md, "Needs dimensions").
EXTRA_NEEDS_ITEMS = ("innovation", "digital_maturity", "willingness_to_invest")


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # a key of SQL_TYPES
    required: bool = False
    allowed: tuple[str, ...] | None = None  # for categorical text, lower-case
    minimum: float | None = None
    maximum: float | None = None
    not_future: bool = False  # dates/timestamps may not lie after the run's as-of date
    references_account: bool = False  # must name an account that exists
    known_currency: bool = False  # must be a currency with a configured exchange rate
    pattern: str | None = None  # regular expression the text must match
    description: str = ""

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.kind]


@dataclass(frozen=True)
class Table:
    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    description: str = ""
    # The column whose latest value wins when a key arrives again (None: latest load wins).
    version_column: str | None = None
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


ISO_COUNTRY = r"^[A-Z]{2}$"
CURRENCY = r"^[A-Z]{3}$"
EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            name="accounts",
            key=("account_id",),
            version_column="updated_at",
            description="Customers, prospects and churned accounts from the CRM.",
            columns=(
                Column("account_id", "text", required=True),
                Column("account_name", "text", required=True),
                Column("status", "text", required=True, allowed=("customer", "prospect", "churned")),
                Column("industry", "text"),
                Column("country", "text", pattern=ISO_COUNTRY, description="ISO 3166 alpha-2"),
                Column("employees", "integer", minimum=0),
                Column("annual_revenue", "money", minimum=0),
                Column("customer_since", "date", not_future=True),
                Column("account_owner", "text", pattern=EMAIL, description="owner's e-mail"),
                Column("parent_account_id", "text"),
                Column("updated_at", "timestamp", required=True, not_future=True),
            ),
        ),
        Table(
            name="order_lines",
            key=("order_id", "line_number"),
            description="Order lines; a negative quantity is a return.",
            columns=(
                Column("order_id", "text", required=True),
                Column("line_number", "integer", required=True, minimum=0),
                Column("account_id", "text", required=True, references_account=True),
                Column("order_date", "date", required=True, not_future=True),
                Column("product_id", "text"),
                Column("product_category", "text"),
                Column("quantity", "number", required=True),
                Column("list_price", "money", minimum=0),
                Column("net_price", "money", required=True, minimum=0, description="unit price after discount"),
                Column("currency", "text", required=True, pattern=CURRENCY, known_currency=True),
                Column("channel", "text"),
            ),
        ),
        Table(
            name="support_tickets",
            key=("ticket_id",),
            description="Support tickets raised by accounts.",
            columns=(
                Column("ticket_id", "text", required=True),
                Column("account_id", "text", required=True, references_account=True),
                Column("opened_at", "timestamp", required=True, not_future=True),
                Column("closed_at", "timestamp", not_future=True),
                Column("priority", "text", required=True, allowed=("low", "normal", "high", "critical")),
                Column(
                    "category",
                    "text",
                    required=True,
                    allowed=("technical", "delivery", "quality", "billing", "price", "other"),
                ),
            ),
        ),
        Table(
            name="quotes",
            key=("quote_id",),
            description="Quotes sent to accounts and prospects, with the outcome.",
            columns=(
                Column("quote_id", "text", required=True),
                Column("account_id", "text", required=True, references_account=True),
                Column("created_at", "timestamp", required=True, not_future=True),
                Column("amount", "money", required=True, minimum=0),
                Column("currency", "text", required=True, pattern=CURRENCY, known_currency=True),
                Column("status", "text", required=True, allowed=("open", "won", "lost")),
                Column(
                    "loss_reason",
                    "text",
                    allowed=("price", "quality", "delivery", "service", "competitor", "other"),
                ),
            ),
        ),
        Table(
            name="survey_responses",
            key=("response_id",),
            description="Needs-survey answers, one row per respondent; items on the 1-5 scale.",
            columns=(
                Column("response_id", "text", required=True),
                Column("account_id", "text", required=True, references_account=True),
                Column("respondent_role", "text"),
                Column("submitted_at", "timestamp", required=True, not_future=True),
                Column("wave", "text"),
                *(Column(item, "number", minimum=1, maximum=5) for item in NEEDS_ITEMS + EXTRA_NEEDS_ITEMS),
                Column("satisfaction", "number", minimum=1, maximum=5),
                Column("nps", "integer", minimum=0, maximum=10),
            ),
        ),
    )
}

# Bookkeeping columns every raw row carries (docs/design.md, "Storage and concurrency").
LINEAGE_COLUMNS = (
    ("_batch_id", "VARCHAR"),
    ("_source", "VARCHAR"),
    ("_file", "VARCHAR"),
    ("_line", "BIGINT"),
    ("_loaded_at", "TIMESTAMP"),
)


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown contract table {name!r}; expected one of {', '.join(TABLES)}") from None
