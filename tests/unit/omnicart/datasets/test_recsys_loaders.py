"""Loaders of the public recommendation datasets: the protocol's cleaning rules and defensive parsing."""

from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest

from benchmarks.runner import datasets_dir
from omnicart.datasets import amazon, online_retail
from omnicart.schemas import C

RETAIL = datasets_dir() / online_retail.DATASET
AMAZON = datasets_dir() / amazon.DATASET


def _raw(rows):
    columns = ["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price", "Customer ID", "Country"]
    return pd.DataFrame(rows, columns=columns)


def test_online_retail_cleaning_follows_the_protocol():
    raw = _raw(
        [
            ("489434", "85048", "GLASS BALL", 12, "2009-12-01 07:45:00", 6.95, 13085.0, "UK"),  # kept
            ("489434", "79323p", "PINK LIGHTS", 2, "2009-12-01 07:45:00", 6.75, 13085.0, "UK"),  # kept, upper-cased
            ("489435", "22041", "NO CUSTOMER", 3, "2009-12-01 08:00:00", 2.10, None, "UK"),  # no Customer ID
            ("C489449", "22087", "CANCELLED", -1, "2009-12-01 10:33:00", 2.95, 16321.0, "UK"),  # cancellation
            ("c489450", "22087", "CANCELLED", 1, "2009-12-01 10:33:00", 2.95, 16321.0, "UK"),  # lower-case "c" too
            ("489436", "21232", "ZERO QTY", 0, "2009-12-01 09:00:00", 1.25, 13078.0, "UK"),  # Quantity ≤ 0
            ("489437", "21233", "FREE", 4, "2009-12-01 09:00:00", 0.0, 13078.0, "UK"),  # Price ≤ 0
            ("489438", "POST", "POSTAGE", 1, "2009-12-01 09:00:00", 18.0, 12682.0, "France"),  # not a product
            ("489439", "85123AB", "TWO LETTERS", 1, "2009-12-01 09:00:00", 2.55, 12682.0, "UK"),  # kept
            ("489439", "85123ABC", "THREE LETTERS", 1, "2009-12-01 09:00:00", 2.55, 12682.0, "UK"),  # too long
            ("489439", "1234", "FOUR DIGITS", 1, "2009-12-01 09:00:00", 2.55, 12682.0, "UK"),  # too short
        ]
    )
    out = online_retail.clean(raw)
    assert out[C.item_id].tolist() == ["85048", "79323P", "85123AB"]
    assert out[C.customer_id].tolist() == [13085, 13085, 12682]
    assert out[C.customer_id].dtype == "int64"
    assert str(out[C.event_timestamp].dt.tz) == "UTC"
    assert out[C.event_timestamp].iloc[0] == pd.Timestamp("2009-12-01 07:45", tz="UTC")
    assert set(out.columns) >= {C.order_id, C.quantity, C.price, C.title}


def test_online_retail_items_take_the_commonest_description_and_median_price():
    purchases = online_retail.clean(
        _raw(
            [
                ("1", "10001", "MUG RED", 1, "2010-01-01 10:00:00", 1.0, 1.0, "UK"),
                ("2", "10001", "MUG RED", 1, "2010-01-02 10:00:00", 3.0, 2.0, "UK"),
                ("3", "10001", "mug red ", 1, "2010-01-03 10:00:00", 2.0, 3.0, "UK"),
            ]
        )
    )
    items = online_retail.items(purchases)
    assert items.set_index(C.item_id).loc["10001", C.title] == "MUG RED"
    assert items.set_index(C.item_id).loc["10001", C.price] == 2.0


def test_online_retail_original_file_with_limit():
    if not (RETAIL / online_retail.RAW_FILE).exists():
        pytest.skip(f"dataset {online_retail.DATASET} is not at {RETAIL} on this machine")
    out = online_retail.load(RETAIL, limit=500)
    assert 0 < len(out) <= 500
    assert out[C.item_id].str.fullmatch(online_retail.STOCK_CODE_PATTERN).all()
    assert (out[C.quantity] > 0).all() and (out[C.price] > 0).all()
    assert not out[C.order_id].str.upper().str.startswith("C").any()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$25.00", 25.0),
        ("$1,250.00", 1250.0),
        (" $7.99 ", 7.99),
        ("$10.00 - $50.00", 30.0),
        ("", math.nan),
        ('<div class="a-section a-spacing-none"', math.nan),
        ("1,2,3", math.nan),
        (None, math.nan),
        (12, 12.0),
        (-3.0, math.nan),
    ],
)
def test_amazon_prices_are_parsed_defensively(text, expected):
    value = amazon.parse_price(text)
    assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(expected)


def test_amazon_category_and_text_drop_scraping_junk():
    assert amazon.parse_category(["Gift Cards", "Gift Card Accessories", "Holds cards. Handmade."]) == (
        "Gift Card Accessories"
    )
    assert amazon.parse_category(["Gift Cards", "Gift Cards", "</span></span></span>"]) == "Gift Cards"
    assert amazon.parse_category([]) == "" and amazon.parse_category(None) == ""
    assert amazon.clean_text(["<b>Great</b>  gift,", "never\nexpires"]) == "Great gift, never expires"


def test_amazon_loaders_read_the_original_json_lines(tmp_path):
    reviews = [
        {"overall": 5.0, "reviewerID": "U1", "asin": "A1", "unixReviewTime": 1529193600, "reviewText": "ok"},
        {"overall": 4.0, "reviewerID": "U2", "asin": "A1", "unixReviewTime": 1528934400},
        {"overall": 4.0, "reviewerID": "U2", "asin": "A1", "unixReviewTime": 1528934400},  # exact duplicate
        {"overall": 5.0, "reviewerID": "U3", "unixReviewTime": 1528934400},  # no asin
    ]
    path = tmp_path / "Gift_Cards_5.json.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(json.dumps(r) for r in reviews) + "\n{truncated")
    out = amazon.load_reviews(path)
    assert len(out) == 2
    assert out[C.event_timestamp].is_monotonic_increasing
    assert out[C.event_timestamp].iloc[0] == pd.Timestamp("2018-06-14", tz="UTC")

    meta = [
        {
            "asin": "A1",
            "title": "Shop Gift Card",
            "description": ["Use it <i>anywhere</i>."],
            "brand": "Shop",
            "category": ["Gift Cards", "Gift Cards"],
            "price": "$25.00",
            "imageURL": ["http://x/1.jpg"],
        },
        {"asin": "A2", "title": "Other", "price": "<div junk", "category": []},
    ]
    catalog_path = tmp_path / "meta_Gift_Cards.json"
    catalog_path.write_text("\n".join(json.dumps(m) for m in meta))
    catalog = amazon.load_catalog(catalog_path).set_index(C.item_id)
    assert catalog.loc["A1", C.description] == "Use it anywhere ."
    assert catalog.loc["A1", C.price] == 25.0 and math.isnan(catalog.loc["A2", C.price])
    assert catalog.loc["A1", C.image_url] == "http://x/1.jpg" and catalog.loc["A2", C.image_url] == ""


def test_amazon_original_files_with_limit():
    if not (AMAZON / amazon.REVIEWS_FILE).exists():
        pytest.skip(f"dataset {amazon.DATASET} is not at {AMAZON} on this machine")
    reviews = amazon.load_reviews(AMAZON, limit=200)
    catalog = amazon.load_catalog(AMAZON, limit=300)
    assert 0 < len(reviews) <= 200 and 0 < len(catalog) <= 300
    assert catalog[C.price].dropna().gt(0).all()
    assert catalog[C.item_id].is_unique
