"""``regulars demo``: a shop's worth of customers and orders, fed through the same
ingest path as real webhooks, and the payload builders it is made with.

The builders (``shopify_order``, ``shopify_refund``, ``woocommerce_order``, ...)
return webhook bodies in the shape of the contract payloads: Shopify REST
2026-04 (money as strings with ``*_set`` twins, ids above 2^53) and WooCommerce
REST v3 (``*_gmt`` dates, negative refund totals). They are pure functions of
their arguments, so the demo, ``bench/ingest.py`` and the tests share them, and
the same arguments give the same bytes: a second demo run is all duplicates.
"""

from __future__ import annotations

import json
import random
import time
import unicodedata
import uuid
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from functools import partial
from typing import Any

SHOP = "example.myshopify.com"
CURRENCY = "EUR"
SHOPIFY_ID_BASE = 5_000_000_000_000_000_000  # above 2^53, as Shopify's ids are
_CUSTOMER_IDS, _LINE_IDS, _REFUND_IDS, _PRODUCT_IDS = (SHOPIFY_ID_BASE + k * 10**17 for k in (1, 2, 3, 4))
WOO_ORDER_BASE = 20_000
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CENT = Decimal("0.01")
BATCH = 200
SHOWCASE = "jana.novakova@example.com"  # customer 1, in both shops, always
Body = dict[str, Any]

try:  # WooCommerce writes local times beside the *_gmt ones
    from zoneinfo import ZoneInfo

    _SHOP_TZ: Any = ZoneInfo("Europe/Prague")
except Exception:  # no tz database (Windows without tzdata): a shop on UTC
    _SHOP_TZ = UTC


@dataclass(frozen=True)
class DemoCustomer:
    """A person as the channels know them (``woo_id`` 0: a WooCommerce guest)."""

    number: int
    first_name: str
    last_name: str
    email: str
    phone: str | None = None  # E.164, as Shopify stores it
    country: str = "CZ"
    city: str = "Praha"
    woo_id: int = 0
    accepts_marketing: bool = False

    @property
    def shopify_id(self) -> int:
        return _CUSTOMER_IDS + self.number

    @property
    def national_phone(self) -> str:
        """The phone as typed into a WooCommerce checkout ("601 000 123", "0905 000 123")."""
        if not self.phone:
            return ""
        d = self.phone[4:]
        return ("0" if self.country == "SK" else "") + f"{d[:3]} {d[3:6]} {d[6:]}"


@dataclass(frozen=True)
class DemoLine:
    """One order line; ``discount`` is the amount taken off the whole line."""

    sku: str
    name: str
    quantity: int
    price: Decimal
    discount: Decimal = Decimal(0)
    gift_card: bool = False

    @property
    def gross(self) -> Decimal:
        return self.price * self.quantity

    def refund_amount(self, quantity: int) -> Decimal:
        """What ``quantity`` units give back: their price less their share of the discount."""
        share = (self.discount * quantity / self.quantity).quantize(CENT, ROUND_HALF_EVEN)
        return self.price * quantity - share


def _money(amount: Decimal | str | int) -> str:
    return str(Decimal(amount).quantize(CENT))


def _set(amount: Decimal | str | int) -> Body:
    value = {"amount": _money(amount), "currency_code": CURRENCY}
    return {"shop_money": value, "presentment_money": dict(value)}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


def _gmt(moment: datetime, tz: Any = UTC) -> str:
    return moment.astimezone(tz).replace(tzinfo=None, microsecond=0).isoformat()


def _crc(value: object) -> int:
    return zlib.crc32(str(value).encode())


def shopify_line_id(order_id: int, index: int) -> int:
    """The Shopify id of the ``index``-th line of an order built here."""
    return _LINE_IDS + (order_id - SHOPIFY_ID_BASE) * 100 + index


# -- Shopify -------------------------------------------------------------------


def _shopify_address(c: DemoCustomer) -> Body:
    return {"first_name": c.first_name, "address1": f"Dlouhá {c.number % 97 + 1}", "phone": c.phone,
            "city": c.city, "zip": f"{11000 + c.number % 900:05d}", "province": None, "country": c.country,
            "last_name": c.last_name, "address2": None, "company": None, "latitude": None,
            "longitude": None, "name": f"{c.first_name} {c.last_name}", "country_code": c.country,
            "province_code": None}


def shopify_customer(c: DemoCustomer, updated_at: datetime, created_at: datetime = T0) -> Body:
    """A ``customers/create`` or ``customers/update`` body (also an order's ``customer``)."""
    consent = "subscribed" if c.accepts_marketing else "not_subscribed"
    address = {k: v for k, v in _shopify_address(c).items() if k not in ("latitude", "longitude")}
    return {
        "id": c.shopify_id, "created_at": _iso(created_at), "updated_at": _iso(updated_at),
        "first_name": c.first_name, "last_name": c.last_name, "state": "enabled", "note": None,
        "verified_email": True, "multipass_identifier": None, "tax_exempt": False, "email": c.email,
        "phone": c.phone, "currency": CURRENCY, "addresses": [], "tax_exemptions": [],
        "admin_graphql_api_id": f"gid://shopify/Customer/{c.shopify_id}",
        "email_marketing_consent": {"state": consent, "opt_in_level": "single_opt_in",
                                    "consent_updated_at": None},
        "default_address": {"id": c.shopify_id + 1, "customer_id": c.shopify_id, **address,
                            "country_name": c.country, "default": True},
    }


def _shopify_line(order_id: int, index: int, line: DemoLine, in_refund: bool = False) -> Body:
    line_id, product = shopify_line_id(order_id, index), _PRODUCT_IDS + _crc(line.sku)
    item = {
        "id": line_id, "admin_graphql_api_id": f"gid://shopify/LineItem/{line_id}",
        "attributed_staffs": [], "current_quantity": line.quantity,
        "fulfillable_quantity": line.quantity, "fulfillment_service": "manual",
        "fulfillment_status": None, "gift_card": line.gift_card, "grams": 0 if line.gift_card else 300,
        "name": line.name, "price": _money(line.price), "price_set": _set(line.price),
        "product_exists": True, "product_id": product, "properties": [], "quantity": line.quantity,
        "requires_shipping": not line.gift_card, "sales_line_item_group_id": None, "sku": line.sku,
        "taxable": not line.gift_card, "title": line.name, "total_discount": "0.00",
        "total_discount_set": _set(0), "variant_id": product + 1, "variant_inventory_management": "shopify",
        "variant_title": None, "vendor": "Regulars Roastery", "tax_lines": [], "duties": [],
        "discount_allocations": [{"amount": _money(line.discount), "amount_set": _set(line.discount),
                                  "discount_application_index": 0}] if line.discount else [],
    }
    if in_refund:  # a refund's copy of the line lacks the order-only keys
        for key in ("attributed_staffs", "current_quantity", "sales_line_item_group_id"):
            del item[key]
    return item


def shopify_refund(refund_id: int, order_id: int, lines: Sequence[tuple[int, DemoLine, int]],
                   processed_at: datetime) -> Body:
    """A ``refunds/create`` body; ``lines`` are (index in the order, line, quantity refunded)."""
    items, total, at = [], Decimal(0), _iso(processed_at)
    for index, line, quantity in lines:
        amount = line.refund_amount(quantity)
        total += amount
        items.append({"id": refund_id + 1 + index, "quantity": quantity,
                      "line_item_id": shopify_line_id(order_id, index), "location_id": None,
                      "restock_type": "no_restock", "subtotal": float(amount),  # a JSON number, as sent
                      "total_tax": 0, "subtotal_set": _set(amount), "total_tax_set": _set(0),
                      "line_item": _shopify_line(order_id, index, line, in_refund=True)})
    return {
        "id": refund_id, "order_id": order_id, "created_at": at, "note": "Poškozeno při přepravě",
        "user_id": None, "processed_at": at, "duties": [], "total_duties_set": _set(0), "return": None,
        "restock": False, "refund_shipping_lines": [], "order_adjustments": [],
        "admin_graphql_api_id": f"gid://shopify/Refund/{refund_id}", "refund_line_items": items,
        "transactions": [{"id": refund_id + 99, "order_id": order_id, "kind": "refund", "status": "success",
                          "gateway": "shopify_payments", "message": None, "created_at": at, "test": False,
                          "authorization": None, "parent_id": None, "processed_at": at,
                          "source_name": "web", "amount": _money(total), "currency": CURRENCY,
                          **dict.fromkeys(("device_id", "error_code", "location_id", "user_id", "payment_id",
                                           "amount_rounding"), None), "receipt": {},
                          "manual_payment_gateway": False, "total_unsettled_set": _set(0),
                          "admin_graphql_api_id": f"gid://shopify/OrderTransaction/{refund_id + 99}"}],
    }


_SHOPIFY_NULLS = dict.fromkeys(
    "browser_ip cart_token checkout_token client_details closed_at current_total_additional_fees_set "
    "current_total_duties_set device_id fulfillment_status landing_site_ref location_id "
    "merchant_of_record_app_id note po_number reference referring_site source_identifier source_url "
    "user_id payment_terms original_total_additional_fees_set original_total_duties_set".split())


def shopify_order(order_id: int, customer: DemoCustomer, lines: Sequence[DemoLine], *,
                  financial_status: str = "paid", updated_at: datetime, discount_codes: Sequence[str] = (),
                  shipping: str = "5.00", refunds: Sequence[Body] = (), created_at: datetime | None = None,
                  cancelled_at: datetime | None = None) -> Body:
    """An ``orders/*`` body (the REST order); ``refunds`` are ``shopify_refund`` bodies."""
    n, created = order_id - SHOPIFY_ID_BASE, _iso(created_at or updated_at)
    gross = sum((line.gross for line in lines), Decimal(0))
    discounts = sum((line.discount for line in lines), Decimal(0))
    refunded = sum((Decimal(item["subtotal_set"]["shop_money"]["amount"])
                    for refund in refunds for item in refund["refund_line_items"]), Decimal(0))
    subtotal, total = gross - discounts, gross - discounts + Decimal(shipping)
    unpaid = financial_status in ("pending", "authorized", "voided")
    shipping_line = {"id": _LINE_IDS + n * 100 + 99, "carrier_identifier": None, "code": "Zásilkovna",
                     "discounted_price": _money(shipping), "discounted_price_set": _set(shipping),
                     "current_discounted_price_set": _set(shipping), "requested_fulfillment_service_id": None,
                     "is_removed": False, "phone": None, "price": _money(shipping), "price_set": _set(shipping),
                     "source": "shopify", "title": "Zásilkovna", "tax_lines": [], "discount_allocations": []}
    body: Body = {
        "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}", "app_id": 580111,
        **_SHOPIFY_NULLS, "buyer_accepts_marketing": customer.accepts_marketing,
        "cancel_reason": "customer" if cancelled_at else None,
        "cancelled_at": _iso(cancelled_at) if cancelled_at else None,
        "confirmation_number": f"R{n:08d}", "confirmed": True, "contact_email": customer.email,
        "created_at": created, "currency": CURRENCY, "current_shipping_price_set": _set(shipping),
        "customer_locale": "cs", "duties_included": False, "email": customer.email, "estimated_taxes": False,
        "discount_codes": [{"code": c, "amount": _money(discounts), "type": "percentage"} for c in discount_codes],
        "financial_status": financial_status, "landing_site": "/", "name": f"#{1000 + n}",
        "note_attributes": [], "number": n, "order_number": 1000 + n,
        "order_status_url": f"https://{SHOP}/orders/{order_id}/authenticate",
        "payment_gateway_names": ["shopify_payments"], "phone": customer.phone,
        "presentment_currency": CURRENCY, "processed_at": created, "source_name": "web", "tags": "",
        "tax_exempt": False, "tax_lines": [], "taxes_included": False, "test": False,
        "token": f"{_crc(order_id):08x}", "total_outstanding": _money(total if unpaid else 0),
        "total_shipping_price_set": _set(shipping), "total_tip_received": "0.00", "total_weight": 0,
        "updated_at": _iso(updated_at), "billing_address": _shopify_address(customer),
        "customer": {k: v for k, v in shopify_customer(customer, updated_at).items() if k != "addresses"},
        "discount_applications": [{"target_type": "line_item", "type": "discount_code", "value": "10.0",
                                   "value_type": "percentage", "allocation_method": "each",
                                   "target_selection": "entitled", "code": c} for c in discount_codes],
        "fulfillments": [], "line_items": [_shopify_line(order_id, i, x) for i, x in enumerate(lines)],
        "refunds": list(refunds), "shipping_address": _shopify_address(customer),
        "shipping_lines": [shipping_line], "returns": [], "line_item_groups": [],
        "merchant_business_entity_id": "MTU0ODM4MDAwOQ", "total_cash_rounding_payment_adjustment_set": _set(0),
        "total_cash_rounding_refund_adjustment_set": _set(0),
    }
    for key, amount in {"current_subtotal_price": subtotal - refunded, "current_total_discounts": discounts,
                        "current_total_price": total - refunded, "current_total_tax": 0,
                        "subtotal_price": subtotal, "total_discounts": discounts,
                        "total_line_items_price": gross, "total_price": total, "total_tax": 0}.items():
        body[key], body[f"{key}_set"] = _money(amount), _set(amount)
    return body


# -- WooCommerce ---------------------------------------------------------------


def woo_bank_transfer(order_id: int) -> bool:
    """Whether a WooCommerce order is paid by bank transfer (pending first, paid later)."""
    return order_id % 3 == 0


def _woo_address(c: DemoCustomer, billing: bool = True) -> Body:
    address = {"first_name": c.first_name, "last_name": c.last_name, "company": "",
               "address_1": f"Dlouhá {c.number % 97 + 1}", "address_2": "", "city": c.city, "state": "",
               "postcode": f"{11000 + c.number % 900:05d}", "country": c.country}
    return {**address, "email": c.email, "phone": c.national_phone} if billing else address


def _woo_dates(name: str, moment: datetime | None) -> Body:
    if moment is None:
        return {name: None, f"{name}_gmt": None}
    return {name: _gmt(moment, _SHOP_TZ), f"{name}_gmt": _gmt(moment)}


def woocommerce_customer(c: DemoCustomer, modified_gmt: datetime, created_gmt: datetime = T0) -> Body:
    """A ``customer.created`` or ``customer.updated`` body (the REST v3 customer)."""
    return {"id": c.woo_id, **_woo_dates("date_created", created_gmt), **_woo_dates("date_modified", modified_gmt),
            "email": c.email, "first_name": c.first_name, "last_name": c.last_name, "role": "customer",
            "username": c.email.split("@")[0].lower(), "billing": _woo_address(c),
            "shipping": _woo_address(c, False), "is_paying_customer": True, "avatar_url": "", "meta_data": [],
            "_links": {"self": [{"href": f"https://shop.example/wp-json/wc/v3/customers/{c.woo_id}"}]}}


def woocommerce_order(order_id: int, customer: DemoCustomer, lines: Sequence[DemoLine], *,
                      status: str = "completed", modified_gmt: datetime,
                      refunds: Sequence[tuple[int, Decimal]] = (), created_gmt: datetime | None = None,
                      shipping: str = "4.50", coupon: str = "VITEJTE10") -> Body:
    """An ``order.created`` or ``order.updated`` body (the REST v3 order); ``refunds``
    are (refund id, amount) pairs, listed with negative totals as WooCommerce does."""
    items = []
    for i, line in enumerate(lines):
        after = line.gross - line.discount
        meta = [{"id": order_id * 10 + i, "key": "_wc_gc_giftcard", "value": "yes"}] if line.gift_card else []
        items.append({"id": order_id * 10 + i, "name": line.name, "product_id": _crc(line.sku) % 9000,
                      "variation_id": 0, "quantity": line.quantity, "tax_class": "",
                      "subtotal": _money(line.gross), "subtotal_tax": "0.00", "total": _money(after),
                      "total_tax": "0.00", "taxes": [], "meta_data": meta, "sku": line.sku,
                      "price": float(round(after / line.quantity, 4))})
    discounts = sum((line.discount for line in lines), Decimal(0))
    total = sum((line.gross for line in lines), Decimal(0)) - discounts + Decimal(shipping)
    paid = status in ("processing", "completed", "refunded")
    method = ("bacs", "Bankovní převod") if woo_bank_transfer(order_id) else ("stripe", "Platební karta")
    return {
        "id": order_id, "parent_id": 0, "number": str(order_id), "order_key": f"wc_order_{_crc(order_id):08x}",
        "created_via": "checkout", "version": "9.4.2", "status": status, "currency": CURRENCY,
        **_woo_dates("date_created", created_gmt or modified_gmt), **_woo_dates("date_modified", modified_gmt),
        "discount_total": _money(discounts), "discount_tax": "0.00", "shipping_total": _money(shipping),
        "shipping_tax": "0.00", "cart_tax": "0.00", "total": _money(total), "total_tax": "0.00",
        "prices_include_tax": False, "customer_id": customer.woo_id, "customer_ip_address": "",
        "customer_user_agent": "", "customer_note": "", "billing": _woo_address(customer),
        "shipping": _woo_address(customer, False), "payment_method": method[0],
        "payment_method_title": method[1], "transaction_id": "",
        **_woo_dates("date_paid", modified_gmt if paid else None),
        **_woo_dates("date_completed", modified_gmt if status == "completed" else None), "cart_hash": "",
        "meta_data": [{"id": order_id * 10 + 9, "key": "_order_stock_reduced", "value": "yes"}],
        "line_items": items, "tax_lines": [], "fee_lines": [],
        "shipping_lines": [{"id": order_id * 10 + 8, "method_title": "Zásilkovna", "method_id": "flat_rate",
                            "total": _money(shipping), "total_tax": "0.00", "taxes": [], "meta_data": []}],
        "coupon_lines": [{"id": order_id * 10 + 7, "code": coupon, "discount": _money(discounts),
                          "discount_tax": "0.00", "meta_data": []}] if discounts else [],
        "refunds": [{"id": rid, "reason": "Poškozené zboží", "total": f"-{_money(a)}"} for rid, a in refunds],
        "_links": {"self": [{"href": f"https://shop.example/wp-json/wc/v3/orders/{order_id}"}]},
    }


def headers(channel: str, topic: str, body: Body) -> dict[str, str]:
    """The headers a channel sends with a body (a stable Shopify webhook id per delivery)."""
    if channel == "shopify":
        moment = body.get("updated_at") or body.get("processed_at")
        webhook = uuid.uuid5(uuid.NAMESPACE_URL, f"{topic}/{body['id']}/{moment}")
        return {"X-Shopify-Topic": topic, "X-Shopify-Shop-Domain": SHOP, "X-Shopify-API-Version": "2026-04",
                "X-Shopify-Webhook-Id": str(webhook)}
    resource, _, event = topic.partition(".")
    return {"X-WC-Webhook-Source": "https://shop.example/", "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": resource, "X-WC-Webhook-Event": event}


# -- The demo shop: a coffee roastery selling in two e-shops -----------------------

PRODUCTS = [("KAVA-ETH-250", "Výběrová káva Etiopie Yirgacheffe 250 g", "12.90"),
            ("KAVA-COL-250", "Káva Kolumbie Huila 250 g", "11.50"),
            ("KAVA-BRA-1000", "Espresso směs Brazílie 1 kg", "34.00"),
            ("KAVA-PERU-DECAF", "Bezkofeinová káva Peru 250 g", "12.40"),
            ("CAJ-SENCHA-100", "Zelený čaj Sencha 100 g", "8.90"), ("HRNEK-SMALT", "Smaltovaný hrnek", "9.50"),
            ("HARIO-V60-02", "Dripper Hario V60 02", "24.90"), ("FILTRY-V60", "Filtry V60 (100 ks)", "6.20"),
            ("MLYNEK-RUCNI", "Ruční mlýnek na kávu", "59.00"), ("SIRUP-ORISEK", "Sirup lískový oříšek", "7.30"),
            ("DEGUSTACE-3", "Degustační balíček 3× 100 g", "27.50")]
GIFT_CARD = DemoLine("POUKAZ-50", "Dárkový poukaz 50 €", 1, Decimal("50.00"), gift_card=True)
PEOPLE = [tuple(person.split("|")) for person in (  # first|last|country|city
    "Jiří|Dvořák|CZ|Praha;Tereza|Nováková|CZ|Brno;Lukáš|Černý|CZ|Olomouc;Kateřina|Svobodová|CZ|Plzeň;"
    "Ondřej|Růžička|CZ|Liberec;Šárka|Němcová|CZ|Praha;Matěj|Pokorný|CZ|Písek;Markéta|Horáková|CZ|Zlín;"
    "Jan|Šťastný|CZ|Hradec Králové;Lucie|Dušková|CZ|Brno;Tomáš|Veselý|CZ|Praha;Ľubomír|Kováč|SK|Bratislava;"
    "Zuzana|Horváthová|SK|Košice;Ján|Baláž|SK|Žilina;Mária|Tóthová|SK|Nitra;Peter|Ďurica|SK|Banská Bystrica;"
    "Zoë|Müller|DE|Dresden;Łukasz|Wąsik|PL|Kraków;Søren|Kjærgaard|DK|Aarhus;Aoife|O'Brien|IE|Dublin;"
    "François|Lefèvre|FR|Lyon").split(";")]
TOPICS = [("shopify", "customers/create"), ("woocommerce", "customer.created"), ("shopify", "orders/create"),
          ("shopify", "orders/paid"), ("woocommerce", "order.created"), ("woocommerce", "order.updated"),
          ("shopify", "refunds/create"), ("shopify", "orders/updated"), ("shopify", "orders/cancelled")]
Plan = dict[tuple[str, str], list[tuple[datetime, Body]]]
_UNDECOMPOSABLE = str.maketrans({"Ł": "L", "ł": "l", "ø": "o", "æ": "ae", "'": ""})  # for e-mail addresses


def make_customer(number: int, rng: random.Random, woo_id: int = 0) -> DemoCustomer:
    """A demo customer; Czech and Slovak ones often leave a mobile number."""
    first, last, country, city = rng.choice(PEOPLE)
    phone = None
    if country in ("CZ", "SK") and rng.random() < 0.6:
        phone = f"+420601{number:06d}" if country == "CZ" else f"+421905{number:06d}"
    local = unicodedata.normalize("NFKD", f"{first}.{last}".translate(_UNDECOMPOSABLE))
    local = local.encode("ascii", "ignore").decode().lower().replace(" ", "")
    email = f"{local}{number}@{rng.choice(('example.com', 'example.net', 'example.org'))}"
    return DemoCustomer(number, first, last, email, phone, country, city, woo_id, rng.random() < 0.4)


def random_lines(rng: random.Random) -> list[DemoLine]:
    """1 to 4 catalogue lines, some 10 % off, now and then a gift card."""
    lines = []
    for sku, name, price in rng.sample(PRODUCTS, rng.choice((1, 1, 2, 2, 3, 4))):
        quantity, unit = rng.choice((1, 1, 1, 2, 2, 3)), Decimal(price)
        discount = (unit * quantity / 10).quantize(CENT) if rng.random() < 0.2 else Decimal(0)
        lines.append(DemoLine(sku, name, quantity, unit, discount))
    return lines + [GIFT_CARD] if rng.random() < 0.03 else lines


def plan(customers: int, seed: int, start: datetime = T0) -> tuple[Plan, Counter]:
    """Every delivery of the demo shop by (channel, topic), each group in time
    order, the first order placed about ``start`` (``demo_start``)."""
    rng, stream, tally = random.Random(seed), {key: [] for key in TOPICS}, Counter()
    n_shop = n_woo = 0
    for number in range(1, customers + 1):
        r = rng.random()
        channels = ("shopify", "woocommerce") if r < 1 / 3 or number == 1 else (
            ("shopify",) if r < 2 / 3 else ("woocommerce",))
        registered = "woocommerce" in channels and (len(channels) == 2 or rng.random() < 0.8)
        c = make_customer(number, rng, 1000 + number if registered else 0)
        if number == 1:  # the regular the README looks up with `regulars customer show`
            c = replace(c, first_name="Jana", last_name="Nováková", email=SHOWCASE, phone="+420601000001",
                        country="CZ", city="Praha", accepts_marketing=True)
        # Some type their address differently in the other shop; identity normalises it.
        wc = replace(c, email=c.email[0].upper() + c.email[1:]) if rng.random() < 0.3 else c
        times = sorted(start + timedelta(minutes=rng.randrange(120 * 24 * 60)) for _ in range(rng.randint(1, 5)))
        while len(times) < (3 if number == 1 else len(channels)):
            times.append(times[-1] + timedelta(days=rng.randint(1, 30)))
        tally["both" if len(channels) == 2 else channels[0]] += 1
        joined = times[0] - timedelta(minutes=5)
        if "shopify" in channels:
            stream["shopify", "customers/create"].append((joined, shopify_customer(c, joined, start)))
        if c.woo_id:
            stream["woocommerce", "customer.created"].append((joined, woocommerce_customer(wc, joined, start)))
        for i, t in enumerate(times):
            lines, fate = random_lines(rng), rng.random()
            units = sum(x.quantity for x in lines if not x.gift_card)
            cancel, refund = fate < 0.03, 0.03 <= fate < 0.15 and units > 1  # a partial refund
            index = next(k for k, x in enumerate(lines) if not x.gift_card)
            later = t + timedelta(days=rng.randint(1, 20), minutes=rng.randrange(600))
            tally.update(orders=1, refunds=refund, cancelled=cancel)
            if channels[i % len(channels)] == "shopify":
                n_shop += 1
                oid, codes = SHOPIFY_ID_BASE + n_shop, ("VITEJTE10",) if any(x.discount for x in lines) else ()
                order = partial(shopify_order, oid, c, lines, created_at=t, discount_codes=codes)
                paid_at = t
                if rng.random() < 0.3:  # created unpaid, paid a little later
                    stream["shopify", "orders/create"].append((t, order(updated_at=t, financial_status="pending")))
                    paid_at = t + timedelta(minutes=rng.randint(1, 90))
                stream["shopify", "orders/paid"].append((paid_at, order(updated_at=paid_at)))
                if refund:
                    body = shopify_refund(_REFUND_IDS + n_shop * 10, oid, [(index, lines[index], 1)], later)
                    stream["shopify", "refunds/create"].append((later, body))
                    at = later + timedelta(minutes=1)
                    stream["shopify", "orders/updated"].append(
                        (at, order(updated_at=at, financial_status="partially_refunded", refunds=[body])))
                if cancel:
                    stream["shopify", "orders/cancelled"].append(
                        (later, order(updated_at=later, financial_status="refunded", cancelled_at=later)))
            else:
                n_woo += 1
                oid = WOO_ORDER_BASE + n_woo
                woo = partial(woocommerce_order, oid, wc, lines, created_gmt=t)
                updates = stream["woocommerce", "order.updated"]
                paid_at = t + timedelta(hours=rng.randint(2, 48)) if woo_bank_transfer(oid) else t
                stream["woocommerce", "order.created"].append(
                    (t, woo(modified_gmt=t, status="pending" if paid_at > t else "processing")))
                if paid_at > t:  # a bank transfer: on hold until the money arrives
                    updates.append((paid_at, woo(modified_gmt=paid_at, status="processing")))
                    # a refund or a cancellation after the money came: each later
                    # snapshot lists every refund made before it, as WooCommerce's do
                    later = max(later, paid_at + timedelta(hours=1))
                if refund:
                    refunds = [(oid + 500_000, lines[index].refund_amount(1))]
                    updates.append((later, woo(modified_gmt=later, status="completed", refunds=refunds)))
                if cancel:
                    updates.append((later, woo(modified_gmt=later, status="cancelled")))
    for group in stream.values():
        group.sort(key=lambda item: item[0])
    return stream, tally


def demo_start(engine: Any, customers: int, seed: int, now: datetime | None = None) -> datetime:
    """Where the demo shop's history starts, so that it ends at the hour the
    shop's first delivery was received (now, in an empty shop): the dashboard's
    current month has its sales, and running the demo again, on any later
    day, gives the same deliveries (all duplicates)."""
    from sqlalchemy import func, select

    from engine.db import as_utc
    from engine.db.models import inbox

    with engine.db.connect() as conn:
        first = as_utc(conn.execute(select(func.min(inbox.c.received_at))).scalar())
    anchor = (first or now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    stream, _ = plan(customers, seed)
    last = max(moment for group in stream.values() for moment, _ in group)
    return T0 + (anchor - last)


#: the share of customers with points enough who spend some on a reward (in ‰)
SPENDERS = 400


def redeem_some(engine: Any, seed: int, end: datetime) -> int:
    """Some customers spend points, as a shop's do, so that the dashboard's
    points spent and redemption rate have figures: each customer with points
    enough for a reward of the catalogue whose email's hash falls in
    ``SPENDERS`` (Jana, whom the README shows, never) buys the dearest one
    they can afford (of a partial one, half the units they could), at the
    counter when there is one, a few days after their points first reached
    its cost (so spending follows earning through the months). Its key is
    the seed's and the customer's: running the demo again redeems nothing
    more (a customer with a demo redemption of the seed is passed over).
    Returns how many were redeemed now."""
    from collections import defaultdict

    from sqlalchemy import select

    from engine.db import as_utc
    from engine.db.models import accounts, ledger_entries, rewards
    from engine.db.models import customers as people
    from engine.rewards import RedemptionRefused

    prices = sorted((entry["cost"], name) for name, entry in engine.catalogue.entries.items() if entry.get("cost"))
    if not prices:
        return 0
    channel = "pos" if "pos" in engine.connectors else None
    prefix = f"redeem:demo:{seed}:"
    with engine.db.connect() as conn:
        done = {key[len(prefix):] for key in conn.execute(
            select(rewards.c.key).where(rewards.c.key.startswith(prefix, autoescape=True))).scalars()}
        history: dict[tuple[str, int], list[tuple[datetime, int]]] = defaultdict(list)
        for email, balance, at, amount in conn.execute(
                select(people.c.email, accounts.c.balance, ledger_entries.c.occurred_at, ledger_entries.c.amount)
                .join(accounts, accounts.c.customer_id == people.c.id)
                .join(ledger_entries, ledger_entries.c.account_id == accounts.c.id)
                .where(accounts.c.unit == "points", accounts.c.balance >= prices[0][0],
                       people.c.merged_into.is_(None), people.c.email.is_not(None), people.c.email != SHOWCASE)
                .order_by(people.c.id, ledger_entries.c.occurred_at, ledger_entries.c.id)):
            history[email, balance].append((as_utc(at), amount))
    redeemed = 0
    for (email, balance), entries in history.items():
        if email in done or _crc(f"{seed}:{email}") % 1000 >= SPENDERS:
            continue
        cost, name = max((cost, name) for cost, name in prices if cost <= balance)
        entry = engine.catalogue.entries[name]
        units = min(max(1, balance // cost // 2), entry.get("max_units") or 1) if entry.get("partial") else 1
        running, reached = 0, entries[-1][0]
        for at, amount in entries:
            running += amount
            if running >= cost * units:
                reached = at
                break
        at = min(reached + timedelta(days=1 + _crc(email) % 10, minutes=_crc(name + email) % 600), end)
        try:
            engine.redeem(email, name, channel=channel, units=units, idempotency_key=f"demo:{seed}:{email}", at=at)
        except RedemptionRefused:  # points not spendable yet (a return window)
            continue
        redeemed += 1
    return redeemed


def run_demo(engine: Any, customers: int, seed: int, console: Any = None) -> dict[str, Any]:
    """Ingest the demo shop with ``engine.ingest_batch`` (``BATCH`` deliveries per
    channel and topic), print a summary and return its figures (counts by status,
    customers, points, top five, drifts). Running it again with the same seed is
    all duplicates and changes no balance; another seed reuses the same order ids
    and customer numbers, which the engine reads as updates of those orders."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress
    from rich.table import Table
    from sqlalchemy import func, select

    from engine.customers import count_customers
    from engine.db.models import accounts, rewards
    from engine.db.models import customers as people

    console = console or Console()
    started = time.perf_counter()
    stream, tally = plan(customers, seed, demo_start(engine, customers, seed))
    counts, failures = Counter(dict.fromkeys(("applied", "duplicate", "ignored", "failed"), 0)), []
    with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("demo shop", total=sum(map(len, stream.values())))
        for (channel, topic), group in stream.items():
            progress.update(task, description=f"{channel} {topic}")
            for start in range(0, len(group), BATCH):
                chunk = [(topic, json.dumps(body, ensure_ascii=False).encode(), headers(channel, topic, body))
                         for _, body in group[start:start + BATCH]]
                for outcome in engine.ingest_batch(channel, chunk):
                    counts[outcome.status] += 1
                    failures += [outcome] if outcome.status == "failed" else []
                progress.advance(task, len(chunk))
    redeemed = redeem_some(engine, seed, max(moment for group in stream.values() for moment, _ in group))
    points = accounts.c.unit == "points"
    with engine.db.connect() as conn:
        drifts = engine.ledger.audit(conn)
        alive = people.c.merged_into.is_(None)
        n_people = count_customers(conn)
        outstanding = conn.execute(select(func.coalesce(func.sum(accounts.c.balance), 0)).where(points)).scalar()
        top = conn.execute(select(people.c.email, accounts.c.balance, people.c.tier)
                           .join(accounts, accounts.c.customer_id == people.c.id).where(points)
                           .order_by(accounts.c.balance.desc(), people.c.id).limit(5)).all()
        tiers = dict(conn.execute(select(people.c.tier, func.count()).where(alive, people.c.tier.is_not(None))
                                  .group_by(people.c.tier)).all())
        issued = dict(conn.execute(select(rewards.c.reward, func.count()).where(rewards.c.status == "issued")
                                   .group_by(rewards.c.reward)).all())
    seconds = time.perf_counter() - started
    console.print(f"[bold]{sum(counts.values())} deliveries[/bold] in {seconds:.1f} s: "
                  + ", ".join(f"{n} {status}" for status, n in counts.items()), highlight=False, markup=True)
    console.print(f"{tally['orders']} orders ({tally['refunds']} partly refunded, {tally['cancelled']} "
                  f"cancelled); {tally['both']} of {customers} customers bought in both shops"
                  + (f"; {redeemed} spent points on a reward" if redeemed else ""), highlight=False)
    for outcome in failures[:10]:
        console.print(f"[red]failed[/red] delivery {outcome.inbox_id}: {escape(outcome.error or '')}", highlight=False,
                      markup=True)
    table = Table("top customers", "points", "tier", title=f"{n_people} customers, {outstanding} points outstanding")
    for email, balance, tier in top:
        table.add_row(email, str(balance), tier or "-")
    console.print(table)
    if tiers or issued:
        console.print("tiers: " + (", ".join(f"{n} {t}" for t, n in sorted(tiers.items())) or "none") + "; "
                      + "rewards waiting to be spent: " + (", ".join(f"{n} {r}" for r, n in sorted(issued.items())) or "none"),
                      highlight=False)
    if drifts:
        console.print(f"[red]audit: {len(drifts)} accounts drift from the ledger[/red]; see `regulars audit`", markup=True)
    else:
        console.print("audit clean: every balance is the sum of its ledger entries")
    if top:
        console.print(f"look one up: [bold]regulars customer show {escape(top[0][0])}[/bold]", highlight=False,
                      markup=True)
    return {**counts, "deliveries": sum(counts.values()), "customers": n_people, "points": int(outstanding),
            "top": [(email, int(balance)) for email, balance, _ in top], "drifts": len(drifts),
            "orders": tally["orders"], "both_channels": tally["both"], "redeemed": redeemed,
            "seconds": round(seconds, 2)}
