import pandas as pd

from omnicart.privacy.pseudonymise import pseudonymise, scrub_text, token
from omnicart.schemas import C


def test_tokens_are_keyed_stable_and_normalised():
    assert token("k", C.email, "Ann@X.com ") == token("k", C.email, "ann@x.com")
    assert token("k", C.email, "ann@x.com") != token("other", C.email, "ann@x.com")
    assert token("k", C.phone, "+44 7700-900123") == token("k", C.phone, "+447700900123")


def test_pseudonymise_replaces_every_pii_column_and_keeps_nulls():
    df = pd.DataFrame(
        {C.customer_id: ["C1", "C2"], C.email: ["a@b.com", None], C.phone: ["+1 555 0100", "+1 555 0101"]}
    )
    out = pseudonymise(df, "key")
    assert out[C.customer_id].tolist() == ["C1", "C2"]
    assert out[C.email].iloc[0].startswith("tok_") and pd.isna(out[C.email].iloc[1])
    assert "a@b.com" not in out.to_string() and "555" not in out.to_string()
    assert df[C.email].iloc[0] == "a@b.com"  # input untouched


def test_scrub_text_removes_emails_and_phones_but_keeps_order_numbers():
    text = "I am ann.lee@example.com, call +44 7700 900123 about order 12345"
    out = scrub_text(text, "k")
    assert "example.com" not in out and "7700" not in out
    assert "order 12345" in out
