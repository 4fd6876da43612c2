"""A deterministic omnichannel shop simulator with ground truth.

It stands in for the shop's channel feeds (web, app, store tills, social, customer service) so every model family
can be trained and checked against a truth that real data never gives: who is who across channels, each product's
demand curve, each customer's repeat purchases, and when (and how) the world drifted.

Every day is drawn from its own random streams, seeded from ``(seed, purpose, day ordinal)``, so ``day(d)`` is the
same whichever other days were simulated, and a daily task that re-runs reproduces its partition exactly.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from omnicart import schemas
from omnicart.schemas import C
from omnicart.settings import Settings

# --- the shop's world -------------------------------------------------------------------------------------------
CATEGORIES: tuple[str, ...] = ("kitchen", "garden", "toys", "electronics", "fashion", "beauty", "sports", "books")
NEW_CATEGORY = "pets"  # added by the new_category drift
NEW_CATEGORY_ITEMS = 15
SEGMENTS: tuple[str, ...] = ("bargain", "family", "premium", "hobbyist")
NEW_SEGMENT = "student"  # arrives with the new_segment drift
INTENTS: tuple[str, ...] = (
    "order_status",
    "return_item",
    "shipping_cost",
    "product_question",
    "payment_issue",
    "account_access",
    "cancel_order",
    "store_hours",
)
WEEKDAY_SEASONALITY: tuple[float, ...] = (0.9, 0.85, 0.9, 0.95, 1.1, 1.3, 1.15)  # Monday .. Sunday
PRICE_SHOCK_FACTOR = 1.6
COUNTER_EMAIL = "counter@store.omnicart.example"  # typed in at the till when a customer gives none

_ALL_SEGMENTS = (*SEGMENTS, NEW_SEGMENT)
_CH = schemas.CHANNELS
_WEB, _APP, _STORE, _SOCIAL, _SERVICE = (_CH.index(c) for c in ("web", "app", "store", "social", "service"))
_VIEW, _CART, _PURCHASE, _RETURN = range(4)
_NEVER = np.iinfo(np.int32).max  # day index of things that never happen in this run
_LATENT_CAP = 10_000  # days: where never-happening rows are stamped, inside the range of ns timestamps

# Per segment: category affinity (CATEGORIES order), channel use probability and mix (web, app, store, social),
# price taste (exponent on price relative to the category median), extra units per basket, activity.
_SEG_CATEGORY = np.array(
    [
        [3.0, 1.0, 1.5, 1.0, 2.0, 2.0, 1.0, 1.0],
        [3.0, 2.0, 5.0, 0.7, 1.5, 1.0, 1.5, 2.0],
        [2.0, 1.0, 0.5, 4.0, 3.0, 3.0, 1.0, 1.0],
        [1.0, 4.0, 0.5, 1.5, 0.5, 0.5, 4.0, 2.5],
        [0.4, 0.1, 0.1, 5.0, 3.0, 1.0, 1.0, 5.0],
    ]
)
_SEG_CHANNEL_USE = np.array(
    [[0.9, 0.6, 0.6, 0.2], [0.8, 0.5, 0.8, 0.2], [0.8, 0.9, 0.4, 0.3], [0.9, 0.5, 0.5, 0.5], [0.6, 0.95, 0.0, 0.95]]
)
_SEG_CHANNEL_MIX = np.array(
    [
        [0.4, 0.3, 0.25, 0.05],
        [0.3, 0.2, 0.45, 0.05],
        [0.35, 0.45, 0.15, 0.05],
        [0.45, 0.2, 0.2, 0.15],
        [0.2, 0.4, 0, 0.4],
    ]
)
_SEG_PRICE_TASTE = np.array([-1.2, -0.4, 0.8, 0.0, -0.8])
_SEG_EXTRA_UNITS = np.array([0.2, 0.6, 0.2, 0.3, 0.1])
_SEG_ACTIVITY = np.array([1.0, 1.0, 1.0, 1.0, 2.0])
_SEG_SHARE = np.array([0.35, 0.3, 0.15, 0.2])

# Funnel: per browsing session one view; store tills only record purchases.
_P_CART, _P_BUY_AFTER_CART, _P_STORE_BUY, _P_RETURN, _P_FAVOURITE = 0.3, 0.45, 0.15, 0.07, 0.35
_ROWS_PER_SESSION = 1.2  # expected event rows per session, to hit the daily event target
_P_COMPANION = 0.4  # a session goes on to a bundle-mate of its item ("viewed X, also viewed Y")
_P_NEW_CATEGORY = 0.45  # share of sessions that go to the new category after new_category drift
_SHOCK_BUY_FACTOR = 0.6  # buyers balk at shocked prices

# fmt: off
_HOUR_PROFILE = np.array(  # relative activity per hour of day (UTC), per channel
    [
        [1, .6, .4, .3, .3, .4, .8, 1.4, 2, 2.2, 2.3, 2.4, 2.6, 2.5, 2.3, 2.3, 2.5, 2.8, 3.2, 3.8, 4, 3.6, 2.6, 1.6],
        [1.2, .7, .4, .3, .3, .6, 1.5, 2.8, 2.6, 1.8, 1.8, 2, 2.4, 2.2, 1.8, 1.8, 2.2, 2.8, 3, 3.6, 4.2, 4.4, 3.4, 2],
        [0] * 9 + [1, 1.5, 2, 2.5, 2.2, 2, 2.2, 2.5, 3, 3, 2.5] + [0] * 4,  # store: 9:00-20:00
        [1.5, 1, .5, .3, .3, .3, .5, 1, 1.2, 1.2, 1.3, 1.5, 2, 1.8, 1.5, 1.5, 1.8, 2.2, 2.8, 3.5, 4, 4.2, 3.5, 2.5],
        [0] * 8 + [1] * 12 + [0] * 4,  # service desk: 8:00-20:00
    ],
    dtype=float,
)
# fmt: on
_HOUR_CUM = np.cumsum(_HOUR_PROFILE / _HOUR_PROFILE.sum(axis=1, keepdims=True), axis=1)


# --- vocabulary for the catalog -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Vocab:
    brands: tuple[str, ...]
    nouns: tuple[str, ...]
    consumables: tuple[str, ...]  # what people re-buy
    materials: tuple[str, ...]
    benefits: tuple[str, ...]
    price: float  # median list price of a durable item


_VOCAB: dict[str, _Vocab] = {
    "kitchen": _Vocab(
        brands=("Cuisora", "PanPro", "Brewline", "HearthCo"),
        nouns=("chef's knife", "cast iron skillet", "stand mixer", "cutting board", "kettle", "blender", "spice rack"),
        consumables=("coffee beans", "dish soap", "paper towels", "tea bags"),
        materials=("stainless steel", "bamboo", "cast iron"),
        benefits=("Dishwasher safe and easy to clean.", "Built for daily cooking.", "A favourite of home chefs."),
        price=28.0,
    ),
    "garden": _Vocab(
        brands=("GreenThumb", "Verdant", "Rootwise"),
        nouns=("pruning shears", "garden hose", "raised bed kit", "watering can", "wheelbarrow", "solar lantern"),
        consumables=("potting soil", "plant food", "bird seed", "tomato seeds"),
        materials=("powder-coated steel", "recycled plastic", "cedar wood"),
        benefits=("Weatherproof for year-round use.", "Makes light work of weekend jobs.", "Gentle on plants."),
        price=30.0,
    ),
    "toys": _Vocab(
        brands=("Playnook", "Tinkertot", "Blokko"),
        nouns=("building block set", "wooden train", "plush bear", "puzzle", "marble run", "doll house"),
        consumables=("crayon pack", "modelling clay", "sticker book", "bubble refill"),
        materials=("beech wood", "non-toxic plastic", "soft cotton"),
        benefits=("Safety tested for ages 3 and up.", "Hours of screen-free play.", "Builds fine motor skills."),
        price=20.0,
    ),
    "electronics": _Vocab(
        brands=("Voltix", "Sonara", "Pixelon", "Ampere"),
        nouns=("wireless earbuds", "bluetooth speaker", "power bank", "smart watch", "USB-C hub", "e-reader"),
        consumables=("AA batteries", "screen wipes", "charging cable"),
        materials=("aluminium", "tempered glass", "recycled polymer"),
        benefits=("Up to 20 hours of battery life.", "Pairs in seconds.", "Comes with a 2-year warranty."),
        price=80.0,
    ),
    "fashion": _Vocab(
        brands=("Northloom", "Urbanthread", "Kestrel"),
        nouns=("denim jacket", "wool scarf", "leather belt", "rain coat", "canvas sneakers", "knit jumper"),
        consumables=("sport socks 5-pack", "cotton t-shirt", "shoe polish"),
        materials=("organic cotton", "merino wool", "vegan leather"),
        benefits=("True to size.", "Machine washable.", "A timeless everyday piece."),
        price=35.0,
    ),
    "beauty": _Vocab(
        brands=("Lumiere", "Purely", "Bloomskin"),
        nouns=("hair dryer", "makeup brush set", "vanity mirror", "perfume"),
        consumables=("shampoo", "face cream", "body lotion", "lip balm", "sunscreen"),
        materials=("natural extracts", "shea butter", "aloe vera"),
        benefits=("Dermatologically tested.", "Suitable for sensitive skin.", "Cruelty-free formula."),
        price=15.0,
    ),
    "sports": _Vocab(
        brands=("Stridex", "Peakform", "Aqualo"),
        nouns=("yoga mat", "dumbbell set", "running shoes", "tennis racket", "cycling helmet", "water bottle"),
        consumables=("protein bars", "tennis balls", "energy gel", "grip tape"),
        materials=("natural rubber", "carbon fibre", "breathable mesh"),
        benefits=("Designed with athletes.", "Light and durable.", "Ideal for beginners and pros."),
        price=30.0,
    ),
    "books": _Vocab(
        brands=("Quillhouse", "Paperlane", "Inkwell Press"),
        nouns=("cookbook", "crime novel", "travel guide", "children's picture book", "atlas", "biography"),
        consumables=("puzzle magazine", "notebook", "colouring book"),
        materials=("FSC-certified paper", "hardcover binding", "recycled paper"),
        benefits=("A bestseller this season.", "Beautifully illustrated.", "A perfect gift."),
        price=12.0,
    ),
    NEW_CATEGORY: _Vocab(
        brands=("Pawsome", "Furrytail", "Whiskerly"),
        nouns=("dog bed", "cat scratching post", "pet carrier", "dog leash", "aquarium kit"),
        consumables=("dog food", "cat litter", "pet treats", "cat food"),
        materials=("durable nylon", "natural jute", "washable fleece"),
        benefits=("Vet approved.", "Loved by cats and dogs alike.", "Easy to clean."),
        price=22.0,
    ),
}
_ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Pro", "Essential", "Premium", "Lightweight", "Everyday")
_DESCRIPTIONS = (
    "The {adj} {noun} by {brand}, made from {material}. {benefit}",
    "{brand}'s {noun} in a {adj} design. {benefit} Made from {material}.",
    "A {adj} {noun} for everyday use, in {material}. {benefit}",
)

# --- vocabulary for people ------------------------------------------------------------------------------------------
# fmt: off
_FIRST = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Oliver", "Sophia", "Elijah", "Isabella", "James", "Mia",
    "William", "Amelia", "Benjamin", "Harper", "Lucas", "Evelyn", "Henry", "Abigail", "Alexander", "Emily",
    "Daniel", "Ella", "Matthew", "Elizabeth", "Jackson", "Sofia", "Sebastian", "Avery", "Aiden", "Scarlett",
    "Samuel", "Grace", "David", "Chloe", "Joseph", "Victoria", "Carter", "Riley", "Owen", "Aria", "Wyatt",
    "Lily", "John", "Zoe", "Jack", "Hannah", "Luke", "Nora", "Leo", "Priya", "Arjun", "Fatima", "Omar", "Mei",
    "Wei", "Yuki", "Kenji", "Amara", "Kwame", "Ines", "Mateo", "Freya", "Finn",
)
_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker",
    "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams",
    "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Patel", "Khan",
    "Kowalski", "Okafor", "Tanaka", "Chen", "Silva", "Rossi", "Dubois", "Novak", "Murphy", "O'Brien",
)
_STREETS = (
    "Oak", "Maple", "Cedar", "Elm", "Pine", "Church", "High", "Mill", "Station", "Park", "Victoria", "Queen",
    "King", "Bridge", "Meadow", "Willow", "Orchard",
)
# fmt: on
_STREET_KINDS = ("Street", "Road", "Lane", "Avenue", "Close", "Way")
_CITIES = (
    ("Riverton", "RV"),
    ("Oakham", "OK"),
    ("Brookfield", "BF"),
    ("Fairview", "FV"),
    ("Lakeside", "LK"),
    ("Millbrook", "MB"),
    ("Ashford", "AF"),
    ("Kingsbridge", "KB"),
    ("Westhaven", "WH"),
)
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "inbox.example")

# --- support templates ----------------------------------------------------------------------------------------------
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "order_status": (
        "Where is my order {order}? It still hasn't arrived.",
        "Can you tell me the status of order {order}?",
        "I ordered last week (order {order}) and the tracking hasn't updated. Any news?",
        "Has order {order} been shipped yet?",
        "My parcel for order {order} is late, when will it arrive?",
    ),
    "return_item": (
        "How do I return the {item}?",
        "I'd like to send back the {item} I bought, it isn't what I expected.",
        "The {item} arrived damaged. Can I return it?",
        "What's your returns policy? I want to return the {item}.",
    ),
    "shipping_cost": (
        "How much is delivery?",
        "Do you charge for shipping on small orders?",
        "Is shipping free if I spend over a certain amount?",
        "What does express delivery cost?",
    ),
    "product_question": (
        "Is the {item} any good for everyday use?",
        "Can you tell me more about the {item}?",
        "What is the {item} made of?",
        "Does the {item} come with a warranty?",
        "Is the {item} in stock?",
    ),
    "payment_issue": (
        "My card was charged twice for order {order}.",
        "Payment keeps failing at checkout, what should I do?",
        "Why was my payment declined? My card works everywhere else.",
        "I was charged but never got a confirmation for order {order}.",
    ),
    "account_access": (
        "I can't log in to my account.",
        "I forgot my password, how do I reset it?",
        "My account is locked after too many attempts.",
        "The app keeps logging me out.",
    ),
    "cancel_order": (
        "Please cancel order {order}.",
        "Can I still cancel my order {order}? I ordered by mistake.",
        "I want to cancel {order} before it ships.",
    ),
    "store_hours": (
        "What time does the {city} store open?",
        "Are you open on Sunday?",
        "What are your opening hours?",
        "When does the {city} shop close today?",
    ),
}
_ANSWERS: dict[str, str] = {
    "order_status": "Order {order} is on its way. Follow it with the tracking link in your confirmation email; "
    "most parcels arrive within 3-5 working days.",
    "return_item": "You can return the {item} within 30 days: start a return under Orders in your account or bring "
    "it to any store with the receipt. Refunds reach you within 5 working days.",
    "shipping_cost": "Standard delivery costs 3.99 and is free on orders over 50. "
    "Express next-day delivery costs 6.99.",
    "product_question": "About the {item}: {description} It comes with a 2-year warranty.",
    "payment_issue": "Sorry about that. Failed or duplicate card payments are released automatically within 3 working "
    "days; if a charge is still there after that, reply here and we will refund it.",
    "account_access": "Use 'Forgot password' on the sign-in page to get a reset link by email. A locked account "
    "unlocks automatically after 30 minutes.",
    "cancel_order": "Order {order} can be cancelled under Orders in your account until it ships; after that, return "
    "it for a full refund.",
    "store_hours": "Our stores are open 9:00-20:00 Monday to Saturday and 10:00-16:00 on Sunday.",
}
_INTENT_SHARE = np.array([0.22, 0.15, 0.1, 0.2, 0.08, 0.08, 0.07, 0.1])
_GREETINGS = ("", "Hi, ", "Hello, ", "Good morning. ", "Hey there! ", "Hi team, ")
_SIGN_OFFS = ("", " Thanks!", " Thank you.", " Cheers", " Please help.")
_CONTACTS = (" My email is {email}.", " You can call me on {phone}.", " I'm registered as {email}.")
_P_CONTACT_IN_TEXT = 0.25
_TICKETS_PER_ACTIVE_CUSTOMER = 0.03

_TRUTH_FILES = {"identities": "identities.parquet", "demand": "demand.parquet", "repeat_items": "repeat_items.parquet"}
_TRUTH_META = "truth.json"

_CATALOG_COLUMNS = (
    C.item_id,
    C.title,
    C.description,
    C.category,
    C.brand,
    C.price,
    C.cost,
    C.image_url,
    C.event_timestamp,
)
_CUSTOMER_COLUMNS = (
    C.customer_id,
    C.name,
    C.email,
    C.phone,
    C.address,
    C.loyalty_card,
    C.social_handle,
    C.device_id,
    C.web_cookie,
    C.segment,
    C.signup_date,
    C.event_timestamp,
)
_IDENTITY_COLUMNS = (C.event_timestamp, C.channel, C.identifier, C.name, C.email, C.phone)
_EVENT_COLUMNS = (
    C.event_id,
    C.event_timestamp,
    C.customer_id,
    C.channel,
    C.identifier,
    C.event_type,
    C.item_id,
    C.quantity,
    C.price,
)
_PRICE_COLUMNS = (C.event_timestamp, C.item_id, C.price, C.cost, C.competitor_price, C.units_sold)
_SUPPORT_COLUMNS = (C.ticket_id, C.event_timestamp, C.customer_id, C.channel, C.question, C.answer, C.intent, C.item_id)


@dataclass(frozen=True, eq=False)
class ShopDay:
    """Everything that happened on one day, in the canonical schema (timestamps are UTC)."""

    day: date
    events: pd.DataFrame
    prices: pd.DataFrame
    support: pd.DataFrame
    customers: pd.DataFrame  # customers who signed up that day (day 0: all initial customers)
    identities: pd.DataFrame  # per-channel identity records first seen that day
    items: pd.DataFrame  # items added to the catalog that day (day 0: the initial catalog)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What the simulator knows and real data never tells: the answers models and checks are scored against."""

    identities: pd.DataFrame  # channel, identifier, customer_id; a shared device has one row per true owner
    demand: pd.DataFrame  # item_id, elasticity, ref_price, base_demand, competitor_elasticity
    repeat_items: pd.DataFrame  # customer_id, item_id, cycle_days, offset_days (bought on day t if t % cycle == offset)
    drift_kind: str  # "none" or one of schemas.DRIFT_KINDS
    drift_day: date | None
    weekday_seasonality: tuple[float, ...] = WEEKDAY_SEASONALITY
    hard_cases: dict[str, list[str]] = field(default_factory=dict)

    def demand_mean(self, item_id: str, price: float, competitor_price: float, day: date) -> float:
        """Expected units sold: base × (price/ref)^elasticity × seasonality(weekday) × (competitor/ref)^cross."""
        row = self.demand.set_index(C.item_id).loc[item_id]
        return float(
            row[C.base_demand]
            * (price / row[C.ref_price]) ** row[C.elasticity]
            * self.weekday_seasonality[day.weekday()]
            * (competitor_price / row[C.ref_price]) ** row[C.competitor_elasticity]
        )


def _rng(seed: int, purpose: str, ordinal: int = 0) -> np.random.Generator:
    """A random stream that depends only on (seed, purpose, ordinal): the basis of per-day determinism."""
    return np.random.default_rng([seed % 2**63, zlib.crc32(purpose.encode()), ordinal])


def _per_item(
    seed: int, purpose: str, ordinal: int, n_base: int, fn: Callable[[np.random.Generator, int], np.ndarray]
) -> np.ndarray:
    """One draw per item; base items and the drift's new category use separate streams, so drift never moves the
    base items' draws."""
    base = fn(_rng(seed, purpose, ordinal), n_base)
    return np.concatenate([base, fn(_rng(seed, purpose + "-new-category", ordinal), NEW_CATEGORY_ITEMS)])


def _pool(size: int, n: int) -> int:
    """A pool of distinct numbers to draw ``n`` from: ``size`` (so small shops keep their draws), ten times ``n``
    once a large shop would exhaust it."""
    return size if n <= size // 2 else 10 * n


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str], n: int) -> np.ndarray:
    return np.asarray(options, dtype=object)[rng.integers(len(options), size=n)]


def _sample_rows(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling, one draw per row of a cumulative-probability matrix."""
    return np.minimum((cum < u[:, None]).sum(axis=1), cum.shape[1] - 1)


def _hex(rng: np.random.Generator, n: int, digits: int) -> list[str]:
    return ["".join(f"{b:02x}" for b in row) for row in rng.integers(0, 256, size=(n, digits // 2))]


def _utc(day: date) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize("UTC")


def _timestamps(day: date, seconds: np.ndarray) -> pd.Series:
    return pd.Series(_utc(day) + pd.to_timedelta(np.asarray(seconds, dtype=np.int64), unit="s"))


class _Rows:
    """Columns of event rows, gathered in parts: customer, channel, item, second, quantity, event type."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(
        self,
        cust: np.ndarray,
        chan: np.ndarray,
        item: np.ndarray,
        sec: np.ndarray,
        qty: np.ndarray | int,
        event_type: int,
    ) -> None:
        n = len(cust)
        self.parts.append((cust, chan, item, sec, np.broadcast_to(qty, n), np.full(n, event_type)))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([p[k] for p in self.parts]).astype(np.int64) for k in range(6))


class ShopSimulator:
    """A shop whose customers browse, buy, return and ask questions across channels, sized by ``Settings``.

    The world (catalog, customers, identities, demand curves) is built at construction; each day is simulated on
    demand from its own random streams. Drift entities (students, the new category) are always built so that the
    days before the drift are identical with and without it.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seed = settings.seed
        self.start = settings.sim_start
        self.n_days = settings.sim_days
        active = settings.drift_kind != "none" and settings.drift_day is not None
        self.drift_kind: str = settings.drift_kind if active else "none"
        self.drift_index: int = int(settings.drift_day) if active and settings.drift_day is not None else _NEVER
        self._build_items()
        self._build_customers()
        self._build_identities()
        self._build_repeats()

    # --- public API ---------------------------------------------------------------------------------------------
    @property
    def drift_date(self) -> date | None:
        return None if self.drift_index == _NEVER else self.start + timedelta(days=self.drift_index)

    def catalog(self) -> pd.DataFrame:
        """The full catalog, including items that drift adds later (their event_timestamp says when)."""
        return self._items_df[self._item_added < self.n_days].reset_index(drop=True)

    def customers(self) -> pd.DataFrame:
        """All customers who sign up during the run, including the initial ones and any drift segment."""
        return self._customers_df[self._signup_day < self.n_days].reset_index(drop=True)

    def days(self) -> Iterator[ShopDay]:
        """Every day from sim_start to sim_end."""
        for t in range(self.n_days):
            yield self.day(self.start + timedelta(days=t))

    def day(self, day: date) -> ShopDay:
        """Everything that happened on ``day``; the same output whichever other days were simulated."""
        t = (day - self.start).days
        if not 0 <= t < self.n_days:
            raise ValueError(f"{day} is outside the simulated range {self.start}..{self.settings.sim_end}")
        price, competitor = self._price_vectors(day)
        return ShopDay(
            day=day,
            events=self._events(day, t, price),
            prices=self._prices(day, t, price, competitor),
            support=self._support(day, t),
            customers=self._customers_df[self._signup_day == t].reset_index(drop=True),
            identities=self._identities_df[self._identity_day == t].reset_index(drop=True),
            items=self._items_df[self._item_added == t].reset_index(drop=True),
        )

    def ground_truth(self) -> GroundTruth:
        """The identity map, demand curves, repeat purchases and drift of this run."""
        known_items = self._item_added < self.n_days
        demand = pd.DataFrame(
            {
                C.item_id: self._item_ids[known_items],
                C.elasticity: self._elasticity[known_items],
                C.ref_price: self._list_price[known_items],
                C.base_demand: self._base_demand[known_items],
                C.competitor_elasticity: self._cross[known_items],
            }
        )
        known = self._signup_day[self._rep_cust] < self.n_days
        repeats = pd.DataFrame(
            {
                C.customer_id: self._customer_ids[self._rep_cust[known]],
                C.item_id: self._item_ids[self._rep_item[known]],
                C.cycle_days: self._rep_cycle[known],
                C.offset_days: self._rep_offset[known],
            }
        )
        identities = self._truth_identities[self._identity_day < self.n_days].reset_index(drop=True)
        churn = (self._churn_day < self.n_days) & (self._signup_day < self.n_days)
        shared = sorted(set(self._device[self._shared_pairs.ravel()])) if len(self._shared_pairs) else []
        hard_cases = {
            "shared_device_ids": shared,
            "shared_device_customers": sorted(self._customer_ids[self._shared_pairs.ravel()]),
            "counter_emails": [COUNTER_EMAIL],
            "counter_email_customers": sorted(self._customer_ids[self._counter_customers]),
            "churned_cookies": sorted(self._cookie2[churn]),
        }
        return GroundTruth(
            identities=identities,
            demand=demand,
            repeat_items=repeats,
            drift_kind=self.drift_kind,
            drift_day=self.drift_date,
            weekday_seasonality=WEEKDAY_SEASONALITY,
            hard_cases=hard_cases,
        )

    def item_preferences(self) -> pd.DataFrame:
        """Ground truth of taste: for each customer (rows, ``customer_id`` index) the probability that a browsing
        session of theirs lands on each base catalog item (columns, ``item_id``), as ``_events`` draws it:
        a favourite (one of six) or a category by the customer's taste and an item by the segment's taste in it.
        Customers as ``customers()``; the items a drift adds later are left out."""
        n, n_items = len(self._customer_ids), len(self._item_ids)
        prefs = np.zeros((n, n_items))
        rows = np.arange(n)
        for slot in range(self._favourites.shape[1]):
            np.add.at(prefs, (rows, self._favourites[:, slot]), _P_FAVOURITE / self._favourites.shape[1])
        cat_p = np.diff(self._cat_cum, axis=1, prepend=0.0)
        for (s, k), (idx, cum) in self._item_tables.items():
            members = self._seg == s
            item_p = np.diff(cum, prepend=0.0)
            prefs[np.ix_(members, idx)] += (1 - _P_FAVOURITE) * cat_p[members, k][:, None] * item_p[None, :]
        base = ~np.isin(np.arange(n_items), self._new_items)
        known = self._signup_day < self.n_days  # as ``customers()``: those who sign up during the run
        return pd.DataFrame(
            prefs[np.ix_(known, base)],
            index=pd.Index(self._customer_ids[known], name=C.customer_id),
            columns=pd.Index(self._item_ids[base], name=C.item_id),
        )

    # --- the world ----------------------------------------------------------------------------------------------
    def _build_items(self) -> None:
        n_base = self.settings.sim_items
        rng = _rng(self.seed, "catalog")
        base_cat = rng.permutation(np.arange(n_base) % len(CATEGORIES))
        new_cat = np.full(NEW_CATEGORY_ITEMS, len(CATEGORIES))
        cat = np.concatenate([base_cat, new_cat])
        n = len(cat)
        all_categories = (*CATEGORIES, NEW_CATEGORY)
        rng_new = _rng(self.seed, "catalog-new-category")  # own stream, so base items don't depend on drift

        titles, descriptions, brands, medians, consumable = [], [], [], [], []
        for i in range(n):
            r = rng if i < n_base else rng_new
            vocab = _VOCAB[all_categories[cat[i]]]
            is_consumable = bool(r.random() < 0.3)
            noun = str(r.choice(vocab.consumables if is_consumable else vocab.nouns))
            brand = str(r.choice(vocab.brands))
            adj = str(r.choice(_ADJECTIVES))
            template = _DESCRIPTIONS[r.integers(len(_DESCRIPTIONS))]
            description = template.format(
                adj=adj.lower(),
                noun=noun,
                brand=brand,
                material=r.choice(vocab.materials),
                benefit=r.choice(vocab.benefits),
            )
            titles.append(f"{brand} {adj} {noun[0].upper()}{noun[1:]}")
            descriptions.append(description[0].upper() + description[1:])
            brands.append(brand)
            medians.append(vocab.price * (0.4 if is_consumable else 1.0))
            consumable.append(is_consumable)

        def draw(purpose: str, fn: Callable[[np.random.Generator, int], np.ndarray]) -> np.ndarray:
            return _per_item(self.seed, purpose, 0, n_base, fn)

        raw = np.asarray(medians) * draw("list-price", lambda r, k: r.lognormal(0.0, 0.45, k))
        self._list_price = np.maximum(np.round(raw) - 0.01, 1.99)
        self._cost = np.round(self._list_price * draw("cost", lambda r, k: r.uniform(0.3, 0.55, k)), 2)
        self._popularity = draw("popularity", lambda r, k: r.lognormal(0.0, 1.0, k))
        self._elasticity = np.round(draw("elasticity", lambda r, k: r.uniform(-3.0, -0.5, k)), 3)
        self._base_demand = np.round(draw("base-demand", lambda r, k: r.lognormal(np.log(15.0), 0.6, k)), 2)
        self._cross = np.round(draw("cross", lambda r, k: r.uniform(0.2, 1.0, k)), 3)
        self._wave_period = draw("wave-period", lambda r, k: r.integers(14, 46, k)).astype(float)
        self._wave_phase = draw("wave-phase", lambda r, k: r.uniform(0, 1, k))
        self._shocked = draw("shock", lambda r, k: r.random(k) < 0.85)
        self._consumable = np.asarray(consumable)
        self._item_cat = cat
        self._n_base_items = n_base
        self._new_items = np.arange(n_base, n)

        self._item_added = np.zeros(n, dtype=np.int64)
        self._item_added[n_base:] = self.drift_index if self.drift_kind == "new_category" else _NEVER
        self._item_ids = np.array([f"I{i + 1:05d}" for i in range(n)], dtype=object)
        added_ts = [self.start + timedelta(days=int(min(a, _LATENT_CAP))) for a in self._item_added]
        self._items_df = pd.DataFrame(
            {
                C.item_id: self._item_ids,
                C.title: titles,
                C.description: descriptions,
                C.category: np.asarray(all_categories, dtype=object)[cat],
                C.brand: brands,
                C.price: self._list_price,
                C.cost: self._cost,
                C.image_url: [f"https://images.omnicart.example/items/{i}.jpg" for i in self._item_ids],
                C.event_timestamp: pd.to_datetime(added_ts).tz_localize("UTC"),
            }
        )[list(_CATALOG_COLUMNS)]

        # Per (segment, category): which base items a shopper of that segment picks, and how likely.
        rel_price = self._list_price / np.array([self._median_of(c) for c in cat])
        self._item_tables: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for s in range(len(_ALL_SEGMENTS)):
            for k in range(len(CATEGORIES)):
                idx = np.flatnonzero(cat[:n_base] == k)
                if not len(idx):
                    continue
                w = self._popularity[idx] * rel_price[idx] ** _SEG_PRICE_TASTE[s]
                self._item_tables[s, k] = idx, np.cumsum(w / w.sum())
        w_new = self._popularity[self._new_items]
        self._new_cum = np.cumsum(w_new / w_new.sum())

        # Bundles: items of a category that go together (a recommender should find them through co-occurrence).
        bundle_rng = _rng(self.seed, "bundles")
        self._bundles: list[np.ndarray] = []
        self._bundles_of_cat: dict[int, list[int]] = {}
        for k in range(len(CATEGORIES)):
            idx = bundle_rng.permutation(np.flatnonzero(cat[:n_base] == k))
            for chunk in np.array_split(idx, max(1, len(idx) // 3)):
                self._bundles_of_cat.setdefault(k, []).append(len(self._bundles))
                self._bundles.append(chunk)
        new_rng = _rng(self.seed, "bundles-new-category")
        new_bundles = np.array_split(new_rng.permutation(self._new_items), NEW_CATEGORY_ITEMS // 3)
        # Each item's bundle-mates, padded: mates[i, :n_mates[i]].
        width = max(len(b) for b in [*self._bundles, *new_bundles]) - 1
        self._mates = np.repeat(np.arange(n)[:, None], max(width, 1), axis=1)
        self._n_mates = np.zeros(n, dtype=np.int64)
        for bundle in [*self._bundles, *new_bundles]:
            for i in bundle:
                others = bundle[bundle != i]
                self._mates[i, : len(others)] = others
                self._n_mates[i] = len(others)

    @staticmethod
    def _median_of(cat_index: int) -> float:
        return _VOCAB[(*CATEGORIES, NEW_CATEGORY)[cat_index]].price

    def _build_customers(self) -> None:
        n0 = self.settings.sim_customers
        # Initial customers, a trickle of daily signups, and (latent unless new_segment drift) the students.
        trickle = _rng(self.seed, "signups").poisson(0.003 * n0, size=self.n_days - 1)
        n_trickle = int(trickle.sum())
        n_students = int(np.ceil(0.3 * n0))
        n = n0 + n_trickle + n_students
        seg_rng = _rng(self.seed, "segments")
        seg = np.concatenate(
            [
                seg_rng.choice(len(SEGMENTS), size=n0 + n_trickle, p=_SEG_SHARE),
                np.full(n_students, len(SEGMENTS)),
            ]
        )
        signup_day = np.concatenate(
            [
                np.zeros(n0, dtype=np.int64),
                np.repeat(np.arange(1, self.n_days), trickle),
                np.full(n_students, self.drift_index if self.drift_kind == "new_segment" else _NEVER),
            ]
        ).astype(np.int64)
        time_rng = _rng(self.seed, "signup-times")
        signup_sec = np.where(signup_day > 0, time_rng.integers(6 * 3600, 12 * 3600, size=n), 0)
        history = time_rng.integers(1, 2 * 365, size=n)  # initial customers joined up to two years earlier

        rng = _rng(self.seed, "pii")
        first = _pick(rng, _FIRST, n)
        last = _pick(rng, _LAST, n)
        names = [f"{f} {la}" for f, la in zip(first, last, strict=True)]
        pattern = rng.integers(4, size=n)
        suffix = rng.choice(_pool(100_000, n), size=n, replace=False)
        domain = _pick(rng, _DOMAINS, n)
        emails = []
        for f, la, p, x, d in zip(first, last, pattern, suffix, domain, strict=True):
            f, la = f.lower(), la.lower().replace("'", "")
            local = (f"{f}.{la}", f"{f}{la}", f"{f[0]}.{la}", f"{f}_{la}")[p]
            emails.append(f"{local}{x}@{d}")
        phone_num = rng.choice(10**9, size=n, replace=False)
        phones = [f"+44 7{x // 10**6:03d} {x % 10**6:06d}" for x in phone_num]
        cities = rng.integers(len(_CITIES), size=n)
        addresses = [
            f"{hn} {st} {kind}, {_CITIES[c][0]} {_CITIES[c][1]}{pc} {pd_}{a}{b}"
            for hn, st, kind, c, pc, pd_, a, b in zip(
                rng.integers(1, 200, n),
                _pick(rng, _STREETS, n),
                _pick(rng, _STREET_KINDS, n),
                cities,
                rng.integers(1, 20, n),
                rng.integers(1, 10, n),
                _pick(rng, list("ABDEFGHJLNPQRSTUWXYZ"), n),
                _pick(rng, list("ABDEFGHJLNPQRSTUWXYZ"), n),
                strict=True,
            )
        ]
        loyalty = [f"LC{x:010d}" for x in rng.choice(10**10, size=n, replace=False)]
        handle_num = rng.choice(_pool(10_000, n), size=n, replace=False)
        handles = [
            f"@{f.lower()}{sep}{la.lower().replace(chr(39), '')[:4]}{x}"
            for f, la, sep, x in zip(first, last, _pick(rng, ("_", ".", ""), n), handle_num, strict=True)
        ]
        h = _hex(rng, n, 32)
        devices = np.array([f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}" for x in h], dtype=object)
        cookies = np.array([f"wc.{x}" for x in _hex(rng, n, 16)], dtype=object)
        cookies2 = np.array([f"wc.{x}" for x in _hex(rng, n, 16)], dtype=object)

        # Tastes and habits.
        taste_rng = _rng(self.seed, "tastes")
        aff = _SEG_CATEGORY[seg]
        cat_pref = np.vstack([taste_rng.dirichlet(8.0 * a / a.sum()) for a in aff])
        self._cat_cum = np.cumsum(cat_pref, axis=1)
        self._activity = taste_rng.lognormal(0.0, 0.8, n) * _SEG_ACTIVITY[seg]
        use = taste_rng.random((n, 4)) < _SEG_CHANNEL_USE[seg]

        # Hard cases for identity resolution, drawn among the initial customers.
        hard_rng = _rng(self.seed, "hard-cases")
        families = np.flatnonzero(seg[:n0] == SEGMENTS.index("family"))
        n_pairs = min(max(1, n0 // 100), len(families) // 2)
        self._shared_pairs = hard_rng.choice(families, size=(n_pairs, 2), replace=False)
        use[self._shared_pairs.ravel(), _APP] = True
        devices[self._shared_pairs[:, 1]] = devices[self._shared_pairs[:, 0]]  # one tablet, two family members
        self._counter_customers = hard_rng.choice(n0, size=max(3, n0 // 80), replace=False)
        use[self._counter_customers, _STORE] = True
        use[~use.any(axis=1), _WEB] = True
        churners = hard_rng.random(n) < 0.1
        churners[n0:] = False
        use[churners, _WEB] = True
        self._churn_day = np.where(churners, hard_rng.integers(1, self.n_days, size=n), _NEVER).astype(np.int64)

        mix = _SEG_CHANNEL_MIX[seg] * use
        self._chan_cum = np.cumsum(mix / mix.sum(axis=1, keepdims=True), axis=1)
        self._use = use

        # Each customer's favourite bundles, from their preferred categories.
        fav = np.empty((n, 6), dtype=np.int64)
        fav_cat = _sample_rows(self._cat_cum, taste_rng.random(n))
        fav_cat2 = _sample_rows(self._cat_cum, taste_rng.random(n))
        for i in range(n):
            picks = []
            for k in (fav_cat[i], fav_cat2[i]):
                options = self._bundles_of_cat[int(k)]
                picks.append(self._bundles[options[taste_rng.integers(len(options))]])
            pool = np.concatenate(picks)
            fav[i] = pool[taste_rng.integers(len(pool), size=6)] if len(pool) < 6 else pool[:6]
        self._favourites = fav

        self._seg = seg
        self._signup_day = signup_day
        self._signup_sec = signup_sec
        self._customer_ids = np.array([f"C{i + 1:06d}" for i in range(n)], dtype=object)
        self._names, self._first, self._last = np.asarray(names, dtype=object), first, last
        self._email = np.asarray(emails, dtype=object)
        self._phone = np.asarray(phones, dtype=object)
        self._loyalty = np.asarray(loyalty, dtype=object)
        self._handle = np.asarray(handles, dtype=object)
        self._device, self._cookie, self._cookie2 = devices, cookies, cookies2
        self._city = cities

        def unless(flag: np.ndarray, values: np.ndarray) -> np.ndarray:
            return np.where(flag, values, None)

        signup_dates = [self.start + timedelta(days=int(min(d, _LATENT_CAP))) for d in signup_day]
        signup_dates = [
            sd - timedelta(days=int(hist)) if d == 0 else sd
            for sd, d, hist in zip(signup_dates, signup_day, history, strict=True)
        ]
        ts = [
            _utc(self.start + timedelta(days=int(min(d, _LATENT_CAP)))) + pd.Timedelta(seconds=int(sec))
            for d, sec in zip(signup_day, signup_sec, strict=True)
        ]
        self._customers_df = pd.DataFrame(
            {
                C.customer_id: self._customer_ids,
                C.name: self._names,
                C.email: self._email,
                C.phone: self._phone,
                C.address: np.asarray(addresses, dtype=object),
                C.loyalty_card: unless(use[:, _STORE], self._loyalty),
                C.social_handle: unless(use[:, _SOCIAL], self._handle),
                C.device_id: unless(use[:, _APP], devices),
                C.web_cookie: unless(use[:, _WEB], cookies),
                C.segment: np.asarray(_ALL_SEGMENTS, dtype=object)[seg],
                C.signup_date: signup_dates,
                C.event_timestamp: pd.DatetimeIndex(ts),
            }
        )[list(_CUSTOMER_COLUMNS)]

        # identifier per (customer, channel), as each channel records it
        self._ident = np.empty((n, 5), dtype=object)
        self._ident[:, _WEB] = cookies
        self._ident[:, _APP] = devices
        self._ident[:, _STORE] = self._loyalty
        self._ident[:, _SOCIAL] = self._handle
        self._ident[:, _SERVICE] = self._email

    def _build_identities(self) -> None:
        """One record per (channel, identifier) the day a customer first shows up under it."""
        rng = _rng(self.seed, "identity-records")
        n = len(self._customer_ids)
        rows: list[tuple] = []
        truth: list[tuple[str, str, str]] = []
        days: list[int] = []
        counter = set(self._counter_customers.tolist())
        for i in range(n):
            d = int(self._signup_day[i])
            ts = _utc(self.start + timedelta(days=min(d, _LATENT_CAP))) + pd.Timedelta(seconds=int(self._signup_sec[i]))
            cid, email, phone, name = self._customer_ids[i], self._email[i], self._phone[i], self._names[i]
            if self._use[i, _WEB]:
                rows.append((ts, _CH[_WEB], self._cookie[i], None, email, None))
            if self._use[i, _APP]:
                variant = int(rng.integers(4))
                app_email = (email.upper(), f" {email}", f"{email} ", email[0].upper() + email[1:])[variant]
                rows.append((ts, _CH[_APP], self._device[i], None, app_email, None))
            if self._use[i, _STORE]:
                till_email = COUNTER_EMAIL if i in counter else None
                rows.append((ts, _CH[_STORE], self._loyalty[i], None, till_email, phone))
            if self._use[i, _SOCIAL]:
                social_name = name if rng.random() < 0.7 else f"{self._first[i]} {self._last[i][0]}."
                rows.append((ts, _CH[_SOCIAL], self._handle[i], social_name, None, None))
            rows.append((ts, _CH[_SERVICE], email, None, email, None))
            for ch in np.flatnonzero(self._use[i]):
                truth.append((_CH[ch], self._ident[i, ch], cid))
            truth.append((_CH[_SERVICE], email, cid))
            days.extend([d] * (int(self._use[i].sum()) + 1))
            churn = int(self._churn_day[i])
            if churn != _NEVER and churn > d:
                rows.append((_utc(self.start + timedelta(days=churn)), _CH[_WEB], self._cookie2[i], None, email, None))
                truth.append((_CH[_WEB], self._cookie2[i], cid))
                days.append(churn)
        self._identities_df = pd.DataFrame(rows, columns=list(_IDENTITY_COLUMNS))
        self._identities_df[C.event_timestamp] = pd.DatetimeIndex(self._identities_df[C.event_timestamp])
        self._truth_identities = pd.DataFrame(truth, columns=[C.channel, C.identifier, C.customer_id])
        self._identity_day = np.asarray(days, dtype=np.int64)
        # A churned cookie is not yet seen before its churn day; an un-churned one never is.
        self._churn_day = np.where(self._churn_day > self._signup_day, self._churn_day, _NEVER)

    def _build_repeats(self) -> None:
        """Consumables some customers re-buy on a cycle of 7-28 days."""
        rng = _rng(self.seed, "repeats")
        n = len(self._customer_ids)
        consumables = np.flatnonzero(self._consumable[: self._n_base_items])
        if not len(consumables):
            consumables = np.arange(self._n_base_items)
        cons_cat = self._item_cat[consumables]
        cust, items = [], []
        n_rep = np.where(rng.random(n) < 0.4, rng.integers(1, 3, size=n), 0)
        for i in np.flatnonzero(n_rep):
            w = np.diff(self._cat_cum[i], prepend=0.0)[cons_cat] * self._popularity[consumables]
            chosen = rng.choice(consumables, size=int(n_rep[i]), replace=False, p=w / w.sum())
            cust.extend([i] * len(chosen))
            items.extend(chosen.tolist())
        self._rep_cust = np.asarray(cust, dtype=np.int64)
        self._rep_item = np.asarray(items, dtype=np.int64)
        self._rep_cycle = rng.integers(7, 29, size=len(cust))
        self._rep_offset = (rng.random(len(cust)) * self._rep_cycle).astype(np.int64)

    # --- one day ------------------------------------------------------------------------------------------------
    def _price_vectors(self, day: date) -> tuple[np.ndarray, np.ndarray]:
        """Today's shelf and competitor price of every item: a slow wave, week-long promotions, and drift."""
        o, t = day.toordinal(), (day - self.start).days
        wave = 1 + 0.08 * np.sin(2 * np.pi * (o / self._wave_period + self._wave_phase))
        n_base = self._n_base_items
        promo_on = _per_item(self.seed, "promo", o // 7, n_base, lambda r, k: r.random(k) < 0.2)  # week-long
        promo_depth = _per_item(self.seed, "promo-depth", o // 7, n_base, lambda r, k: r.uniform(0.65, 0.9, k))
        factor = wave * np.where(promo_on, promo_depth, 1.0)
        if self.drift_kind == "price_shock" and t >= self.drift_index:
            factor = factor * np.where(self._shocked, PRICE_SHOCK_FACTOR, 1.0)
        price = np.round(self._list_price * factor, 2)
        noise = _per_item(self.seed, "competitor", o, n_base, lambda r, k: r.normal(0.0, 0.05, k))
        comp_promo = _per_item(self.seed, "competitor-promo", o, n_base, lambda r, k: r.random(k) < 0.08)
        comp = self._list_price * np.exp(noise) * np.where(comp_promo, 0.85, 1.0)
        return price, np.round(comp, 2)

    def _prices(self, day: date, t: int, price: np.ndarray, competitor: np.ndarray) -> pd.DataFrame:
        """One row per catalog item: the price, and units sold drawn from the item's true demand curve."""
        avail = np.flatnonzero(self._item_added <= t)
        rng = _rng(self.seed, "demand", day.toordinal())
        ref = self._list_price[avail]
        mean = (
            self._base_demand[avail]
            * (price[avail] / ref) ** self._elasticity[avail]
            * WEEKDAY_SEASONALITY[day.weekday()]
            * (competitor[avail] / ref) ** self._cross[avail]
        )
        units = rng.poisson(mean)
        return pd.DataFrame(
            {
                C.event_timestamp: pd.DatetimeIndex([_utc(day)] * len(avail)),
                C.item_id: self._item_ids[avail],
                C.price: price[avail],
                C.cost: self._cost[avail],
                C.competitor_price: competitor[avail],
                C.units_sold: units.astype(np.int64),
            }
        )[list(_PRICE_COLUMNS)]

    def _events(self, day: date, t: int, price: np.ndarray) -> pd.DataFrame:
        rng = _rng(self.seed, "events", day.toordinal())
        active = np.flatnonzero(self._signup_day <= t)
        # Repeat purchases due today.
        due = (
            (self._signup_day[self._rep_cust] <= t)
            & ((t - self._rep_offset) % self._rep_cycle == 0)
            & (rng.random(len(self._rep_cust)) < 0.9)
        )
        rep_cust, rep_item = self._rep_cust[due], self._rep_item[due]

        target = len(active) * self.settings.sim_events_per_customer_day
        per_session = _ROWS_PER_SESSION * (1 + _P_COMPANION)
        n_sessions = int(rng.poisson(max(target - 2.5 * len(rep_cust), 0.0) / per_session))
        w = self._activity[active]
        cust = active[rng.choice(len(active), size=n_sessions, p=w / w.sum())] if len(active) else active
        if self.drift_kind == "new_segment" and t == self.drift_index:
            arrivals = np.flatnonzero(self._signup_day == t)
            cust = np.concatenate([cust, arrivals[self._seg[arrivals] == len(SEGMENTS)]])
        n = len(cust)

        # Item per session: a favourite, or a category by taste and an item by the segment's taste in it.
        item = np.empty(n, dtype=np.int64)
        fav = rng.random(n) < _P_FAVOURITE
        item[fav] = self._favourites[cust[fav], rng.integers(6, size=int(fav.sum()))]
        cat = _sample_rows(self._cat_cum[cust], rng.random(n))
        u = rng.random(n)
        seg = self._seg[cust]
        for (s, k), (idx, cum) in self._item_tables.items():
            m = ~fav & (seg == s) & (cat == k)
            if m.any():
                item[m] = idx[np.minimum(np.searchsorted(cum, u[m]), len(idx) - 1)]
        if self.drift_kind == "new_category" and t >= self.drift_index:
            new = rng.random(n) < _P_NEW_CATEGORY
            item[new] = self._new_items[np.minimum(np.searchsorted(self._new_cum, rng.random(int(new.sum()))), 14)]

        chan = _sample_rows(self._chan_cum[cust], rng.random(n))
        start = self._session_seconds(rng, chan, cust, t)

        # Companions: the session goes on to a bundle-mate of its item.
        src = np.flatnonzero((rng.random(n) < _P_COMPANION) & (self._n_mates[item] > 0))
        mate = self._mates[item[src], (rng.random(len(src)) * self._n_mates[item[src]]).astype(np.int64)]
        cust, chan = np.concatenate([cust, cust[src]]), np.concatenate([chan, chan[src]])
        item = np.concatenate([item, mate])
        start = np.concatenate([start, start[src] + rng.integers(60, 900, size=len(src))])

        # Repeat purchases: a short, decisive session.
        rep_chan = _sample_rows(self._chan_cum[rep_cust], rng.random(len(rep_cust)))
        rep_start = self._session_seconds(rng, rep_chan, rep_cust, t)

        if self.drift_kind == "channel_outage" and t >= self.drift_index:  # the app is down: its sessions never happen
            up = chan != _APP
            cust, chan, item, start = cust[up], chan[up], item[up], start[up]
            up = rep_chan != _APP
            rep_cust, rep_item, rep_chan, rep_start = rep_cust[up], rep_item[up], rep_chan[up], rep_start[up]
        n, seg = len(cust), self._seg[cust]
        qty = 1 + rng.poisson(_SEG_EXTRA_UNITS[seg])
        rep_qty = 1 + rng.poisson(_SEG_EXTRA_UNITS[self._seg[rep_cust]])

        # Funnel: views ≫ carts > purchases > returns; store tills only see purchases.
        store = chan == _STORE
        p_buy = np.where(store, _P_STORE_BUY, _P_CART * _P_BUY_AFTER_CART)
        if self.drift_kind == "price_shock" and t >= self.drift_index:
            p_buy = p_buy * np.where(self._shocked[item], _SHOCK_BUY_FACTOR, 1.0)
        r_cart, r_buy = rng.random(n), rng.random(n)
        carted = ~store & (r_cart < _P_CART)
        bought = np.where(store, r_buy < p_buy, carted & (r_buy < p_buy / _P_CART))
        cart_sec = start + rng.integers(30, 600, size=n)
        buy_sec = cart_sec + rng.integers(60, 1200, size=n)
        online, rep_online = ~store, rep_chan != _STORE

        rows = _Rows()
        rows.add(cust[online], chan[online], item[online], start[online], 1, _VIEW)
        rows.add(cust[carted], chan[carted], item[carted], cart_sec[carted], qty[carted], _CART)
        rows.add(cust[bought], chan[bought], item[bought], buy_sec[bought], qty[bought], _PURCHASE)
        on = rep_online
        rows.add(rep_cust[on], rep_chan[on], rep_item[on], rep_start[on], 1, _VIEW)
        rows.add(rep_cust[on], rep_chan[on], rep_item[on], rep_start[on] + 60, rep_qty[on], _CART)
        rows.add(rep_cust, rep_chan, rep_item, rep_start + 180, rep_qty, _PURCHASE)
        # Returns of today's purchases, half of them through customer service.
        pc = np.concatenate([cust[bought], rep_cust])
        pchan = np.concatenate([chan[bought], rep_chan])
        pitem = np.concatenate([item[bought], rep_item])
        psec = np.concatenate([buy_sec[bought], rep_start + 180])
        pq = np.concatenate([qty[bought], rep_qty])
        ret = rng.random(len(pc)) < _P_RETURN
        ret_chan = np.where(rng.random(len(pc)) < 0.5, _SERVICE, pchan)
        ret_sec = psec + rng.integers(3600, 6 * 3600, size=len(pc))
        rows.add(pc[ret], ret_chan[ret], pitem[ret], ret_sec[ret], pq[ret], _RETURN)
        c, ch, it, sec, q, et = rows.arrays()

        sec = np.clip(sec, 0, 86_399)
        order = np.argsort(sec, kind="stable")
        c, ch, it, sec, q, et = c[order], ch[order], it[order], sec[order], q[order], et[order]
        ident = self._ident[c, ch]
        churned = (ch == _WEB) & (self._churn_day[c] <= t)
        ident[churned] = self._cookie2[c[churned]]
        stamp = day.strftime("%Y%m%d")
        return pd.DataFrame(
            {
                C.event_id: [f"E{stamp}-{i:06d}" for i in range(len(c))],
                C.event_timestamp: _timestamps(day, sec),
                C.customer_id: self._customer_ids[c],
                C.channel: np.asarray(_CH, dtype=object)[ch],
                C.identifier: ident,
                C.event_type: np.asarray(schemas.EVENT_TYPES, dtype=object)[et],
                C.item_id: self._item_ids[it],
                C.quantity: q,
                C.price: price[it],
            }
        )[list(_EVENT_COLUMNS)]

    def _session_seconds(self, rng: np.random.Generator, chan: np.ndarray, cust: np.ndarray, t: int) -> np.ndarray:
        """Seconds after midnight: by the channel's hour profile, and never before the customer signed up."""
        hour = _sample_rows(_HOUR_CUM[chan], rng.random(len(chan)))
        sec = hour * 3600 + rng.integers(0, 3600, size=len(chan))
        floor = np.where(self._signup_day[cust] == t, self._signup_sec[cust] + 60, 0)
        return np.maximum(sec, floor)

    def _support(self, day: date, t: int) -> pd.DataFrame:
        """Tickets to customer service: templated questions with paraphrases, sometimes with contact details."""
        rng = _rng(self.seed, "support", day.toordinal())
        active = np.flatnonzero(self._signup_day <= t)
        n = int(rng.poisson(_TICKETS_PER_ACTIVE_CUSTOMER * len(active))) if len(active) else 0
        w = self._activity[active]
        cust = active[rng.choice(len(active), size=n, p=w / w.sum())] if n else active[:0]
        intent = rng.choice(len(INTENTS), size=n, p=_INTENT_SHARE)
        fav_item = self._favourites[cust, rng.integers(6, size=n)]
        orders = rng.integers(10**6, 10**7, size=n)
        variant = rng.integers(100, size=(n, 4))
        contact = rng.random(n) < _P_CONTACT_IN_TEXT
        sec = self._session_seconds(rng, np.full(n, _SERVICE), cust, t)
        questions, answers, item_ids = [], [], []
        for i in range(n):
            name = INTENTS[intent[i]]
            it = int(fav_item[i])
            slots = {
                "order": f"OC-{orders[i]}",
                "item": self._items_df.at[it, C.title],
                "description": self._items_df.at[it, C.description],
                "city": _CITIES[int(self._city[cust[i]])][0],
                "email": self._email[cust[i]],
                "phone": self._phone[cust[i]],
            }
            templates = _QUESTIONS[name]
            template = templates[variant[i, 0] % len(templates)]
            q = template.format(**slots)
            q = _GREETINGS[variant[i, 1] % len(_GREETINGS)] + q
            if contact[i]:
                q += _CONTACTS[variant[i, 2] % len(_CONTACTS)].format(**slots)
            q += _SIGN_OFFS[variant[i, 3] % len(_SIGN_OFFS)]
            questions.append(q)
            answers.append(_ANSWERS[name].format(**slots))
            item_ids.append(self._item_ids[it] if "{item}" in template else None)
        order = np.argsort(sec, kind="stable")
        stamp = day.strftime("%Y%m%d")
        frame = pd.DataFrame(
            {
                C.ticket_id: [f"T{stamp}-{i:04d}" for i in range(n)],
                C.event_timestamp: _timestamps(day, sec[order]),
                C.customer_id: self._customer_ids[cust[order]],
                C.channel: np.full(n, _CH[_SERVICE], dtype=object),
                C.question: np.asarray(questions, dtype=object)[order] if n else np.asarray([], dtype=object),
                C.answer: np.asarray(answers, dtype=object)[order] if n else np.asarray([], dtype=object),
                C.intent: np.asarray(INTENTS, dtype=object)[intent[order]],
                C.item_id: np.asarray(item_ids, dtype=object)[order] if n else np.asarray([], dtype=object),
            }
        )
        return frame[list(_SUPPORT_COLUMNS)]


def write_ground_truth(truth: GroundTruth, directory: Path) -> None:
    """Write the ground truth as Parquet tables plus a JSON file, readable with ``read_ground_truth``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for attr, filename in _TRUTH_FILES.items():
        getattr(truth, attr).to_parquet(directory / filename, index=False)
    meta = {
        "drift_kind": truth.drift_kind,
        "drift_day": truth.drift_day.isoformat() if truth.drift_day else None,
        "weekday_seasonality": list(truth.weekday_seasonality),
        "hard_cases": truth.hard_cases,
    }
    (directory / _TRUTH_META).write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_ground_truth(directory: Path) -> GroundTruth:
    """Read what ``write_ground_truth`` wrote."""
    directory = Path(directory)
    meta = json.loads((directory / _TRUTH_META).read_text())
    frames = {attr: pd.read_parquet(directory / filename) for attr, filename in _TRUTH_FILES.items()}
    return GroundTruth(
        **frames,
        drift_kind=meta["drift_kind"],
        drift_day=date.fromisoformat(meta["drift_day"]) if meta["drift_day"] else None,
        weekday_seasonality=tuple(meta["weekday_seasonality"]),
        hard_cases=meta["hard_cases"],
    )
