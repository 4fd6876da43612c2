"""The walking skeleton end to end: the shop_daily DAG run by Airflow on a small simulated shop."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections import Counter

import httpx
import pytest

from edge import orchestration
from omnicart import lake, registry, schemas
from omnicart.datasets.simulator import NEW_SEGMENT, SEGMENTS
from omnicart.featurestore import feature_store, online_features
from omnicart.recommend.candidates import CHANNEL_FEATURES
from omnicart.recommend.predictor import CUSTOMER_FEATURES
from omnicart.schemas import C, F
from tests.integration.conftest import mails

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clean_run(platform):
    """The DAG for the last clean day, rebuilding the history before it."""
    s = platform.settings
    day = s.sim_start + dt.timedelta(days=s.sim_days - 2)
    run = orchestration.run_dag("shop_daily", day, conf={"history_days": s.sim_days - 2})
    return day, run


def test_dag_succeeds_through_every_task(clean_run):
    _, run = clean_run
    states = orchestration.task_states(run)
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}


def test_lake_holds_no_raw_pii(platform, clean_run):
    from omnicart.datasets.simulator import ShopSimulator

    s = platform.settings
    customers = ShopSimulator(s).customers()
    emails = set(customers[C.email].dropna().head(50))
    lake_customers = lake.read_table(s.lake_dir, schemas.CUSTOMERS)
    assert len(lake_customers) > 0
    assert not emails & set(lake_customers[C.email].dropna())
    assert lake_customers[C.email].dropna().str.startswith("tok_").all()


def test_customer_features_are_read_online(platform, clean_run):
    s = platform.settings
    day, _ = clean_run
    events = lake.read_table(s.lake_dir, schemas.EVENTS, day, day)
    customer = events[C.customer_id].dropna().iloc[0]
    refs = [f"{F.customer_view}:{C.segment}", f"{F.customer_view}:{F.recent_items}"]
    row = online_features(feature_store(s), refs, C.customer_id, [customer])[0]
    customers = lake.read_table(s.lake_dir, schemas.CUSTOMERS, end=day).drop_duplicates(C.customer_id)
    segment = customers.set_index(C.customer_id)[C.segment][customer]
    assert segment in (*SEGMENTS, NEW_SEGMENT)
    assert row[C.segment] == segment  # the customer's own segment, as the lake holds it
    assert row[F.recent_items], "an active customer has recent items online"


def test_model_registered_as_champion(platform, clean_run):
    from omnicart.pricing.features import DEMAND_FEATURES

    assert registry.champion_version(platform.settings, "recommend") is not None
    champion = registry.load(platform.settings, "recommend")
    # the ranker was trained on the Feast item windows, read point in time at its cuts, and on the request's channel
    assert champion.model_.extra_features_ == list(DEMAND_FEATURES)
    assert champion.model_.channel_features_ == list(CHANNEL_FEATURES)
    # and on the customer's Feast customer_channel windows in that channel
    assert champion.model_.customer_features_ == [f"cc_{n}" for n in CUSTOMER_FEATURES]


def _post(settings, body, key=True):
    headers = {"X-API-Key": settings.secret("api_key")} if key else {}
    return httpx.post(f"{settings.serve_url}/recommend", json=body, headers=headers, timeout=30)


def test_recommend_known_customer(platform, clean_run):
    s = platform.settings
    day, _ = clean_run
    events = lake.read_table(s.lake_dir, schemas.EVENTS, day, day)
    customer = events[C.customer_id].iloc[0]
    response = _post(s, {"customer_id": customer, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    items = [i["item_id"] for i in body["items"]]
    catalog = set(lake.read_table(s.lake_dir, schemas.ITEMS)[C.item_id])
    assert len(items) == 5 and len(set(items)) == 5 and set(items) <= catalog
    assert body["source"] == "personal" and body["fallback"] is None  # the online item features were read
    assert all(i["reason"] for i in body["items"])
    # the request's channel is a ranking feature: the same customer scores differently in store and in the app
    scores = {}
    for channel in ("store", "app"):
        answer = _post(s, {"customer_id": customer, "k": 5, "context": {"channel": channel}})
        assert answer.status_code == 200, answer.text
        scores[channel] = {i["item_id"]: i["score"] for i in answer.json()["items"]}
    assert scores["store"] != scores["app"]
    assert answer.json()["fallback"] is None  # the online customer x channel features were read


def test_recommend_requires_api_key(platform, clean_run):
    response = _post(platform.settings, {"customer_id": "C000001"}, key=False)
    assert response.status_code == 401
    assert response.json() == {"error": "missing or invalid API key", "field": "X-API-Key"}
    # the key is checked before the body: a huge, invalid body without a key is 401 too, not 413 or 422
    huge = httpx.post(f"{platform.settings.serve_url}/recommend", content=b"x" * 6_000_000, timeout=30)
    assert huge.status_code == 401
    # /health shows its counters only with the key
    assert httpx.get(f"{platform.settings.serve_url}/health", timeout=30).json() == {"status": "ok"}


def test_recommend_malformed_body_names_the_field(platform, clean_run):
    response = _post(platform.settings, {"customer_id": "C000001", "k": "many"})
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == ["k"]
    response = _post(platform.settings, {"k": 3})
    assert response.status_code == 422
    assert "customer_id" in [f["field"] for f in response.json()["fields"]]


def test_unknown_customer_gets_popular_items(platform, clean_run):
    response = _post(platform.settings, {"customer_id": "nobody-we-know", "k": 4})
    assert response.status_code == 200
    body = response.json()
    assert body["source"] == "popular" and len(body["items"]) == 4


def test_clean_day_sends_no_mail(platform, clean_run):
    assert mails(platform.settings.mail_dir) == []


def test_drift_day_emails_the_report(platform, clean_run):
    s = platform.settings
    drift_day = s.sim_start + dt.timedelta(days=s.drift_day)
    run = orchestration.run_dag("shop_daily", drift_day, conf={"history_days": 0})
    assert str(run.state) == "success", orchestration.task_states(run)
    sent = mails(s.mail_dir)
    assert len(sent) == 1
    from email import policy
    from email.parser import BytesParser

    message = BytesParser(policy=policy.default).parsebytes(sent[0].read_bytes())
    assert "drift" in message["Subject"].lower() and str(drift_day) in message["Subject"]
    assert C.price in message.get_body(("plain",)).get_content()
    attachments = [part for part in message.iter_attachments() if part.get_content_type() == "text/html"]
    assert attachments and len(attachments[0].get_content()) > 10_000


def test_recommend_rules_explanations_and_errors_over_http(platform, clean_run):
    s = platform.settings
    day, _ = clean_run
    customer = lake.read_table(s.lake_dir, schemas.EVENTS, day - dt.timedelta(days=1), day)[C.customer_id].iloc[0]
    first = _post(s, {"customer_id": customer, "k": 6}).json()["items"]
    assert all(i["reason"] and i["contributions"] for i in first)  # TreeSHAP of the ranker, in plain words
    gone = [i["item_id"] for i in first[:2]]
    body = {"customer_id": customer, "k": 6, "exclude_items": gone, "max_per_category": 2}
    again = _post(s, body)
    assert again.status_code == 200, again.text
    items = again.json()["items"]
    assert len(items) == 6 and not set(gone) & {i["item_id"] for i in items}
    assert max(Counter(i["category"] for i in items).values()) <= 2
    bad = _post(s, {"customer_id": customer, "context": {"channel": "fax"}})
    assert bad.status_code == 422 and [f["field"] for f in bad.json()["fields"]] == ["context.channel"]
    unknown = _post(s, {"customer_id": customer, "context": {"item_id": "NO-SUCH-ITEM"}})
    assert unknown.status_code == 404 and unknown.json() == {"error": "unknown item", "field": "context.item_id"}
    stranger = _post(s, {"customer_id": "nobody-at-all", "k": 3, "context": {"channel": "app"}}).json()
    assert stranger["source"] == "popular" and stranger["fallback"] == "unknown_customer"
    # /health sums every replica's counters; the answering one may report a moment after its answer
    deadline, counted = time.monotonic() + 5, 0
    while not counted and time.monotonic() < deadline:
        health = httpx.get(f"{s.serve_url}/health", headers={"X-API-Key": s.secret("api_key")}, timeout=30).json()
        counted = health["fallbacks"]["recommend"].get("unknown_customer", 0)
        time.sleep(0.05)
    assert counted >= 1, health


def test_train_models_dag_gates_promotion_and_rollback_restores(platform, clean_run):
    """A retrain on the same day is evaluated against the champion on the same data; rollback moves the alias back."""
    from training import recommend

    s = platform.settings
    day, _ = clean_run
    before = registry.champion_version(s, "recommend")
    run = orchestration.run_dag("train_models", day, conf={"families": ["recommend"]})
    assert str(run.state) == "success", orchestration.task_states(run)
    versions = registry.client(s).search_model_versions(f"name='{registry.model_name('recommend')}'")
    newest = max(int(v.version) for v in versions)
    metrics = registry.version_metrics(s, "recommend", str(newest))
    # promoted exactly when the challenger's gate metric is at least the champion's on the same evaluation day
    promoted = metrics[f"model.{recommend.GATE_METRIC}"] >= metrics["gate.champion"]
    after = registry.champion_version(s, "recommend")
    assert before is not None and str(newest) != before
    assert after == (str(newest) if promoted else before)
    # Rollback always has a promotion to undo: the challenger is made champion by hand when the gate kept the old one
    # (a no-op when the gate promoted it); either way the champion before the retrain comes back.
    registry.promote(s, "recommend", str(newest))
    assert registry.champion_version(s, "recommend") == str(newest)
    assert registry.rollback(s, "recommend") == before
    assert registry.champion_version(s, "recommend") == before


def test_events_push_real_time_features_or_name_the_unknown_customer(platform, clean_run):
    s = platform.settings
    day, _ = clean_run
    customer = lake.read_table(s.lake_dir, schemas.EVENTS, day, day)[C.customer_id].iloc[0]
    item = lake.read_table(s.lake_dir, schemas.ITEMS)[C.item_id].iloc[0]
    headers = {"X-API-Key": s.secret("api_key")}
    event = {"customer_id": customer, "channel": "web", "event_type": "view", "item_id": item}
    ok = httpx.post(f"{s.serve_url}/events", json=event, headers=headers, timeout=30)
    assert ok.status_code == 200, ok.text
    assert ok.json()["pushed"] is True
    anonymous = {k: v for k, v in event.items() if k != "customer_id"} | {"identifier": "cookie-never-seen"}
    unknown = httpx.post(f"{s.serve_url}/events", json=anonymous, headers=headers, timeout=30)
    assert unknown.status_code == 404 and unknown.json() == {"error": "unknown_customer", "field": "identifier"}
    bad = httpx.post(f"{s.serve_url}/events", json={**event, "channel": "fax"}, headers=headers, timeout=30)
    assert bad.status_code == 422 and [f["field"] for f in bad.json()["fields"]] == ["channel"]


def _event(settings, customer, item, event_type="view"):
    body = {"customer_id": customer, "channel": "web", "event_type": event_type, "item_id": item}
    response = httpx.post(
        f"{settings.serve_url}/events", json=body, headers={"X-API-Key": settings.secret("api_key")}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_an_event_changes_the_next_recommendation(platform, clean_run):
    """/events writes the list /recommend reads: the next answer draws on the viewed item and says so."""
    s = platform.settings
    day, _ = clean_run
    catalog = lake.read_table(s.lake_dir, schemas.ITEMS).drop_duplicates(C.item_id, keep="last")
    titles = catalog.set_index(C.item_id)[C.title].to_dict()
    categories = catalog.set_index(C.item_id)[C.category].to_dict()
    # A CRM customer the model never saw buy and with no activity online: answered from popularity ...
    active = set(lake.read_table(s.lake_dir, schemas.EVENTS)[C.customer_id].dropna())
    quiet = sorted(set(lake.read_table(s.lake_dir, schemas.CUSTOMERS)[C.customer_id].dropna()) - active)
    stranger = before = None
    for candidate in quiet[:20]:
        answer = _post(s, {"customer_id": candidate, "k": 10}).json()
        if answer["source"] == "popular":
            stranger, before = candidate, answer
            break
    assert stranger is not None, "the simulated shop has CRM customers without activity"
    assert before["fallback"] == "unknown_customer"
    viewed = before["items"][-1]["item_id"]  # an item the model knows (it sold), not the most popular
    pushed = _event(s, stranger, viewed)
    assert pushed["pushed"] is True and pushed["features"][F.recent_items] == [viewed]
    # ... and right after one view, a personal answer built on the viewed item, which the reasons name: the item
    # itself ("often bought with <it>", "similar to <it>") or its range, the customer's only one ("from a range you
    # often buy (<its category>)"), whichever the ranker's contributions put first. The answer from popularity
    # before the view named neither.
    after = _post(s, {"customer_id": stranger, "k": 10}).json()
    assert after["source"] == "personal" and after["fallback"] is None
    assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]

    def drawn_on_the_view(reason: str) -> bool:
        return titles[viewed] in reason or f"range you often buy ({categories[viewed]})" in reason

    assert any(drawn_on_the_view(i["reason"]) for i in after["items"]), [i["reason"] for i in after["items"]]
    assert not any(drawn_on_the_view(i["reason"]) for i in before["items"]), [i["reason"] for i in before["items"]]

    # A known customer: a view of an item they never touched changes the ranking, and the view is remembered.
    customer = lake.read_table(s.lake_dir, schemas.EVENTS, day, day)[C.customer_id].dropna().iloc[0]
    first = _post(s, {"customer_id": customer, "k": 10}).json()
    events = lake.read_table(s.lake_dir, schemas.EVENTS)
    touched = set(events.loc[events[C.customer_id] == customer, C.item_id])
    sold = events.loc[events[C.event_type] == "purchase", C.item_id].value_counts().index
    fresh = next(i for i in sold if i not in touched)  # sold often (the model knows it), never touched by them
    pushed = _event(s, customer, fresh, "add_to_cart")
    assert pushed["features"][F.recent_items][0] == fresh
    second = _post(s, {"customer_id": customer, "k": 10}).json()
    assert second["source"] == "personal" and second["fallback"] is None
    ranked = lambda answer: [(i["item_id"], i["score"]) for i in answer["items"]]  # noqa: E731
    assert ranked(second) != ranked(first)
    # a return shows no interest: the list, and so the answer's candidates, stay as they were
    returned = _event(s, customer, fresh, "return")
    assert returned["features"][F.recent_items] == pushed["features"][F.recent_items]


def test_price_without_a_pricing_champion_is_a_clear_503(platform, clean_run):
    s = platform.settings
    response = httpx.post(
        f"{s.serve_url}/price", json={"product_id": "I00001"}, headers={"X-API-Key": s.secret("api_key")}, timeout=30
    )
    assert response.status_code == 503
    assert "pricing" in response.json()["error"] and response.json()["field"] is None


# --- support: no champion (503), then a tiny model trained on the lake's tickets, answering over HTTP -------------
SUPPORT_CONFIG = {"epochs": 1, "max_pairs": 64, "batch_size": 16, "max_val": 40, "onnx": False}


def _support(settings, path, body):
    headers = {"X-API-Key": settings.secret("api_key")}
    return httpx.post(f"{settings.serve_url}/support/{path}", json=body, headers=headers, timeout=60)


def test_support_without_a_champion_is_a_clear_503(platform, clean_run):
    response = _support(platform.settings, "answer", {"question": "Where is my order?"})
    assert response.status_code == 503
    assert "support" in response.json()["error"] and response.json()["field"] is None


@pytest.fixture(scope="module")
def support_champion(platform, clean_run):
    """Two support models trained on the tickets before the clean day, each judged on that day's tickets against
    the champion (the first has none); then the app is redeployed with the champion."""
    from serving.app import deploy
    from training.run import train_family

    s = platform.settings
    day, _ = clean_run
    first = train_family(s, "support", day, params=SUPPORT_CONFIG)
    second = train_family(s, "support", day, params=SUPPORT_CONFIG)
    deploy(s)
    return first, second


def test_support_answers_over_http_with_sources_or_hands_over(platform, clean_run, support_champion):
    s = platform.settings
    day, _ = clean_run
    tickets = lake.read_table(s.lake_dir, schemas.SUPPORT, day, day)
    health = httpx.get(f"{s.serve_url}/health", headers={"X-API-Key": s.secret("api_key")}, timeout=30).json()
    assert health["models"]["support"] == support_champion[1].champion_version

    one = _support(s, "answer", {"question": tickets[C.question].iloc[0], "channel": "web"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["sources"] and 0.0 <= body["confidence"] <= 1.0
    assert body["answered"] == (body["confidence"] >= body["threshold"])
    assert (body["answer"] is not None) == body["answered"] and (body["escalation"] is None) == body["answered"]

    questions = tickets[C.question].head(3).tolist()
    batch = _support(s, "answer/batch", {"requests": [{"question": q} for q in questions]})
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["responses"]) == 3

    feedback = _support(s, "feedback", {"request_id": body["request_id"], "helpful": False, "question": questions[0]})
    assert feedback.status_code == 200 and feedback.json()["stored"] is True
    from serving.support import feedback_path

    stored = [json.loads(line) for line in feedback_path(s.home_dir).read_text().splitlines()]
    assert stored[-1]["request_id"] == body["request_id"] and stored[-1]["helpful"] is False


@pytest.mark.parametrize("question", ["", "   ", "x" * 1001])
def test_support_bad_question_is_4xx_naming_the_field(platform, support_champion, question):
    response = _support(platform.settings, "answer", {"question": question})
    assert response.status_code == 422
    assert [f["field"] for f in response.json()["fields"]] == ["question"]


def test_support_is_gated_against_its_champion_and_rolls_back(platform, support_champion):
    first, second = support_champion
    s = platform.settings
    assert first.promoted and first.champion_metric is None
    assert second.champion_metric is not None  # judged against the champion on the same day's tickets
    assert second.promoted == (second.metrics["model.hit_at_1"] >= second.champion_metric)
    assert second.version != first.version
    # Rollback always has a promotion to undo: the second model is made champion by hand when the gate kept the first
    # (a no-op when the gate promoted it); either way the first comes back.
    registry.promote(s, "support", second.version)
    assert registry.champion_version(s, "support") == second.version
    assert registry.rollback(s, "support") == first.version
    assert registry.champion_version(s, "support") == first.version
