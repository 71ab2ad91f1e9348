"""The pages together, in a real browser: a sale recorded at the counter shows
on the customer's card (the card and the counter are two pages on the same
engine, not two copies of the figures), in English and in Czech."""

from __future__ import annotations

from engine.customers import customer_summary
from engine.links import make_link
from tests.test_page_counter import find, sign_in, till  # noqa: F401 - till: the counter's fixture


def test_a_sale_at_the_counter_appears_on_the_customer_s_card(till, browser_page):  # noqa: F811
    from playwright.sync_api import expect

    engine, _, base, key, card = till
    before = customer_summary(engine, card)
    link = make_link(engine, before["id"])
    page = browser_page

    page.goto(f"{base}/card/{link}")
    expect(page.get_by_test_id("points")).to_contain_text(str(before["points"]))

    sign_in(page, base, key)
    find(page, card)
    page.fill("#sale-amount", "24.90")
    page.click("#sale-button")
    after = before["points"] + 24  # 1 point per whole euro
    expect(page.locator("#customer-points")).to_have_text(str(after))
    assert customer_summary(engine, card)["points"] == after

    page.goto(f"{base}/card/{link}")
    expect(page.get_by_test_id("points")).to_contain_text(str(after))
    page.goto(f"{base}/card/{link}?lang=cs")
    expect(page.locator("html")).to_have_attribute("lang", "cs")
    expect(page.get_by_test_id("points")).to_contain_text(str(after))
