"""The /ui search page in a real headless Chromium against a real gateway on the trained demo family."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from focalserve_client import Client
from focalserve_devtools.demo_collection import CONDITIONS, demo_items
from focalserve_devtools.launch import running_gateway
from focalserve_training.data import ColorShapeGenerator

COLOUR, SHAPE = CONDITIONS
K = 8
QUERY = ColorShapeGenerator(seed=555).sample(3)  # a seed the demo collection does not use


def column(page: Page, instruction: str):
    return page.get_by_role("region", name=f"Results under: {instruction}")


def hit_texts(page: Page, instruction: str) -> list[str]:
    hits = column(page, instruction).locator(".hit")
    expect(hits).to_have_count(K)
    expect(hits.locator("img[src^='blob:']")).to_have_count(K)  # thumbnails arrived from the API
    return hits.locator(".meta").all_inner_texts()


def hit_ids(page: Page, instruction: str) -> list[str]:
    return column(page, instruction).locator(".hit").evaluate_all("items => items.map(i => i.dataset.id)")


def open_page(page: Page, url: str) -> None:
    page.goto(f"{url}/ui")
    expect(page.get_by_label(COLOUR)).to_be_checked()
    expect(page.get_by_label(SHAPE)).to_be_checked()


def test_one_query_image_finds_different_neighbours_per_condition(page, demo_gateway, screenshots, tmp_path):
    query_file = tmp_path / "query.png"
    QUERY.image.save(query_file)
    open_page(page, demo_gateway)

    page.locator("#query-file").set_input_files(query_file)
    expect(page.locator("#query-preview")).to_be_visible()
    page.get_by_label("Results per condition").fill(str(K))
    page.get_by_role("button", name="Search").click()

    colour_hits, shape_hits = hit_texts(page, COLOUR), hit_texts(page, SHAPE)
    assert hit_ids(page, COLOUR) != hit_ids(page, SHAPE)
    assert sum(f"colour: {QUERY.colour}" in hit for hit in colour_hits) >= 6, colour_hits
    assert sum(f"shape: {QUERY.shape}" in hit for hit in shape_hits) >= 5, shape_hits
    expect(page.locator("#status")).to_contain_text("under 2 conditions")
    expect(page.locator("#error")).to_be_hidden()
    page.screenshot(path=screenshots / "search.png", full_page=True)


def test_the_keyboard_alone_reaches_every_control_and_runs_a_text_search(page, demo_gateway):
    open_page(page, demo_gateway)
    focused = []
    for _ in range(20):  # bounded: the form has fewer controls than this
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
    for control in ("collection", "query-file", "random-item", "query-text", "k", "search", "new-instruction"):
        assert control in focused, focused
    assert focused.index("query-text") < focused.index("search")

    page.locator("#query-text").focus()
    page.keyboard.type("a red circle")
    page.keyboard.press("Enter")
    assert len(hit_texts(page, COLOUR)) == K
    expect(page.locator("#status")).to_contain_text('the text "a red circle"')


def test_a_condition_registered_on_the_page_builds_then_answers(page, demo_gateway):
    instruction = "what kind of shape is it?"
    open_page(page, demo_gateway)
    register_on_the_page(page, instruction)
    new_condition = page.get_by_label(instruction)
    expect(new_condition).to_be_visible()
    new_condition.check()

    page.get_by_role("button", name="Use a stored image").click()
    expect(page.locator("#query-summary")).to_contain_text("the stored image")
    page.get_by_role("button", name="Search").click()
    for condition in (COLOUR, SHAPE, instruction):
        assert len(hit_texts(page, condition)) == K
    expect(page.locator("#status")).to_contain_text("under 3 conditions")


def register_on_the_page(page: Page, instruction: str) -> None:
    page.get_by_label("Instruction").fill(instruction)
    page.get_by_label("Instruction").press("Enter")
    expect(page.locator("#status")).to_contain_text(f'Registered "{instruction}"')
    assert page.get_by_label(instruction).is_visible()  # no wait: the list shows it by the time the status says so
    expect(page.locator(".condition progress")).to_have_count(0, timeout=60_000)  # built: progress gone


def test_paraphrases_typed_on_the_page_find_the_neighbours_their_meaning_asks_for(page, demo_gateway, tmp_path):
    """Wordings the demo never trained on (US spelling, a synonym, a different construction): the
    pretrained text tower maps them onto the condition they mean."""
    colour_paraphrase, shape_paraphrase = "what color would you call this?", "what form does this thing take?"
    query_file = tmp_path / "query.png"
    QUERY.image.save(query_file)
    open_page(page, demo_gateway)
    for instruction in (colour_paraphrase, shape_paraphrase):
        register_on_the_page(page, instruction)
    for box in page.locator("#conditions input").all():  # the demo's own, and any other test's
        box.uncheck()
    page.get_by_label(colour_paraphrase).check()
    page.get_by_label(shape_paraphrase).check()

    page.locator("#query-file").set_input_files(query_file)
    page.get_by_label("Results per condition").fill(str(K))
    page.get_by_role("button", name="Search").click()

    colour_hits, shape_hits = hit_texts(page, colour_paraphrase), hit_texts(page, shape_paraphrase)
    assert sum(f"colour: {QUERY.colour}" in hit for hit in colour_hits) >= 6, colour_hits
    assert sum(f"shape: {QUERY.shape}" in hit for hit in shape_hits) >= 5, shape_hits
    expect(page.locator("#status")).to_contain_text("under 2 conditions")


def test_mistakes_are_explained_in_plain_words(page, demo_gateway, tmp_path):
    open_page(page, demo_gateway)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_contain_text("Choose an image, use a stored image, or type a text query")

    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    page.locator("#query-file").set_input_files(not_an_image)
    expect(page.get_by_role("alert")).to_contain_text('"notes.txt" is not an image')

    page.get_by_label("Instruction").fill("x" * 600)  # over the gateway's instruction limit
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_role("alert")).to_contain_text("512")


def test_with_auth_on_the_page_asks_for_the_key_sends_it_everywhere_and_lists_what_it_may_see(
    page, demo_repository, tmp_path
):
    admin_key = "browser-admin-key"
    with running_gateway(demo_repository, tmp_path / "gateway.log", data_dir=str(tmp_path / "data"),
                         admin_key=admin_key) as url:
        with Client(url, api_key=admin_key) as client:
            client.create_collection("keyed", model="demo")
            client.create_collection("other-team", model="demo")
            client.add_items("keyed", demo_items(12, seed=7))
            client.add_condition("keyed", COLOUR)
            client.wait_for_condition("keyed", COLOUR)
        made = httpx.post(f"{url}/admin/keys", headers={"Authorization": f"Bearer {admin_key}"},
                          json={"name": "team", "grants": [{"collections": "keyed", "action": "read"}]})
        key = made.json()["key"]

        page.goto(f"{url}/ui")
        expect(page.get_by_label("API key")).to_be_visible()
        expect(page.get_by_role("alert")).to_contain_text("API key")  # the collection list was refused

        page.get_by_label("API key").fill(key)
        page.get_by_label("API key").press("Tab")  # `change` reloads the collections with the key
        expect(page.get_by_label(COLOUR)).to_be_checked()
        expect(page.get_by_role("alert")).to_be_hidden()
        expect(page.locator("#collection option")).to_have_text([re.compile(r"^keyed ")])  # not the other team's
        page.get_by_role("button", name="Use a stored image").click()
        expect(page.locator("#query-preview")).to_have_attribute("src", re.compile(r"^blob:"))
        page.get_by_role("button", name="Search").click()
        expect(column(page, COLOUR).locator(".hit img[src^='blob:']")).to_have_count(8)


def test_the_page_is_usable_on_a_narrow_screen(browser, demo_gateway, screenshots, tmp_path: Path):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        open_page(page, demo_gateway)
        page.get_by_role("button", name="Use a stored image").click()
        page.get_by_role("button", name="Search").click()  # at once: the page holds Search until the pick is made
        hit_texts(page, COLOUR)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways ({width} px wide)"
        page.screenshot(path=screenshots / "search-narrow.png", full_page=True)
    finally:
        context.close()
