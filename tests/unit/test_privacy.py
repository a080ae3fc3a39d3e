"""PII redaction: recall on a synthetic corpus, precision on look-alikes, canaries, robustness.

Run with `-s` to see the per-kind recall/precision table and the timings.
"""

from __future__ import annotations

import random
import string
import time
from collections import Counter

import pytest

from store import privacy
from store.privacy import ALL, PiiKind, Redaction, contains_pii, redact
from tests.support import pii_corpus as corpus

POSITIVES = corpus.positives()
NEGATIVES = corpus.negatives()
MIN_RECALL = 0.95
MIN_NEGATIVE_PRECISION = 0.95
MIN_PRECISION = 0.95
GENEROUS_S = 10.0  # bound for the large inputs: catches runaway backtracking, not slow machines


def _found(value: str, result: Redaction) -> bool:
    return value not in result.text


# -------------------------------------------------------------------------------- the corpus


def test_corpus_is_large_and_valid() -> None:
    assert len(POSITIVES) >= 500
    assert len(NEGATIVES) >= 200
    per_kind = Counter(e.kind for p in POSITIVES for e in p.values)
    assert all(per_kind[kind] >= 50 for kind in PiiKind), per_kind
    for p in POSITIVES:
        for e in p.values:
            assert e.snippet in p.text and e.value in e.snippet
            if e.kind is PiiKind.CARD:
                assert corpus.luhn_valid(e.value.replace(" ", "").replace("-", "")), e.value
            if e.kind is PiiKind.IBAN:
                assert corpus.iban_valid(e.value), e.value
    assert corpus.positives() == POSITIVES  # seeded: the same corpus every run


def test_recall_and_precision_per_kind() -> None:
    total: Counter[PiiKind] = Counter()
    found: Counter[PiiKind] = Counter()
    true_pos: Counter[PiiKind] = Counter()
    false_pos: Counter[PiiKind] = Counter()
    misses: list[str] = []
    for p in POSITIVES:
        result = redact(p.text)
        embedded = Counter(e.kind for e in p.values)
        for e in p.values:
            total[e.kind] += 1
            if _found(e.value, result):
                found[e.kind] += 1
            else:
                misses.append(f"{e.kind}: {e.snippet!r} in {result.text!r}")
        for kind in PiiKind:
            true_pos[kind] += min(embedded[kind], result.counts.get(kind, 0))
            false_pos[kind] += max(0, result.counts.get(kind, 0) - embedded[kind])
    for n in NEGATIVES:
        for kind, count in redact(n.text).counts.items():
            false_pos[kind] += count

    recall = {kind: found[kind] / total[kind] for kind in PiiKind}
    precision = {
        kind: true_pos[kind] / max(1, true_pos[kind] + false_pos[kind]) for kind in PiiKind
    }
    print("\nPII redaction on the synthetic corpus")
    print(f"{'kind':8} {'values':>6} {'recall':>7} {'labelled':>8} {'precision':>9}")
    for kind in PiiKind:
        print(
            f"{kind.name:8} {total[kind]:6d} {recall[kind]:7.3f} "
            f"{true_pos[kind] / total[kind]:8.3f} {precision[kind]:9.3f}"
        )
    low = {k.name: round(r, 3) for k, r in recall.items() if r < MIN_RECALL}
    assert not low, f"recall below {MIN_RECALL}: {low}; first misses: {misses[:10]}"
    low = {k.name: round(p, 3) for k, p in precision.items() if p < MIN_PRECISION}
    assert not low, f"precision below {MIN_PRECISION}: {low}"


def test_negative_sentences_come_back_unchanged() -> None:
    changed: list[tuple[tuple[str, ...], str, str]] = []
    by_category: Counter[str] = Counter()
    for n in NEGATIVES:
        result = redact(n.text)
        assert (result.text == n.text) == (not result.counts)
        if result.text != n.text:
            changed.append((n.categories, n.text, result.text))
            by_category.update(set(n.categories))
    unchanged = 1 - len(changed) / len(NEGATIVES)
    print(f"\nnegative set: {len(NEGATIVES)} sentences, {unchanged:.3f} unchanged")
    if changed:
        print(f"  changed by look-alike category: {dict(by_category)}")
        for categories, before, after in changed[:10]:
            print(f"  {categories}: {before!r} -> {after!r}")
    assert unchanged >= MIN_NEGATIVE_PRECISION, changed[:10]


def test_contains_pii_agrees_with_redact() -> None:
    for text in [p.text for p in POSITIVES] + [n.text for n in NEGATIVES]:
        assert contains_pii(text) == bool(redact(text).counts), text


def test_the_pre_checks_never_hide_a_detection() -> None:
    """redact() skips every detector for text without any trigger character, the secret
    detectors for text whose only trigger is a digit, and the digit detectors for text with too
    few digits: run the detectors directly (past the checks) and every text they find something
    in must pass them."""
    texts = [e.snippet for p in POSITIVES for e in p.values]
    texts += [p.text for p in POSITIVES] + [n.text for n in NEGATIVES]
    texts += [c for values in CANARIES.values() for c in values]
    texts += [text for text, _ in CANARY_CONTEXTS]
    detections = 0
    for text in texts:
        digits = sum(ch in string.digits for ch in text)
        for kind, detect, min_digits in privacy._DETECTORS:
            if any(end > start for start, end in detect(text)):
                detections += 1
                assert privacy._may_contain_pii(text), text
                assert digits >= min_digits, (kind, text)
                if kind is PiiKind.SECRET:
                    assert privacy._may_hold_secret(text), text
    assert detections >= len(POSITIVES)


def test_plain_prose_skips_the_detectors() -> None:
    for text in ["Where is my parcel? It was sent on Monday.", "user", "Hello from the mock."]:
        assert not privacy._may_contain_pii(text)
    for text in ["x@y", "Bearer abc", "AUTHORIZATION", "eyJ", "ghp_", "sk-", "10.0.0.1"]:
        assert privacy._may_contain_pii(text)
    for text in ["smollm2", "call 0800 1234 5678", "10.0.0.1"]:  # digits only: no secret
        assert privacy._may_contain_pii(text)
        assert not privacy._may_hold_secret(text)


def test_redaction_is_idempotent_and_counts_its_placeholders() -> None:
    for p in POSITIVES:
        once = redact(p.text)
        placeholders = sum(once.text.count(kind.placeholder) for kind in PiiKind)
        assert once.total == placeholders, (p.text, once)
        twice = redact(once.text)
        assert twice.text == once.text and not twice.counts, (once.text, twice.text)


# ---------------------------------------------------------------------------------- canaries

CANARIES: dict[PiiKind, list[str]] = {
    PiiKind.EMAIL: [
        "canary.q7x3@loopgate-canary.example.com",
        "zz-canary+lg42@mx.canary.example.org",
        "CANARY_9@sub.canary.example.co.uk",
    ],
    PiiKind.PHONE: [
        "+1 (202) 555-0147",
        "+44 20 7946 0321",
        "06 98 76 54 32",
        "030 98765432",
        "(415) 555-0199",
        "+49 (0)89 2345678",
    ],
    PiiKind.CARD: [
        "4242 4242 4242 4242",
        "5555-5555-5555-4444",
        "3782 822463 10005",
        "6011111111111117",
        corpus.luhn_complete("222300004840001"),  # Mastercard 2-series
    ],
    PiiKind.IBAN: [
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
        "BE68 5390 0754 7034",
        "CH9300762011623852957",
        "AT611904300234573201",
        "PL61 1090 1014 0000 0712 1981 2874",
        "ES9121000418450200051332",
        "IT60X0542811101000000123456",
    ],
    PiiKind.IP: [
        "203.0.113.77",
        "198.51.100.254",
        "2001:db8:85a3::8a2e:370:7334",
        "fe80::1ff:fe23:4567:890a%eth0",
        "::1",
    ],
    PiiKind.SECRET: [
        "sk-canaryA1b2C3d4E5f6G7h8I9j0K1l2M3n4",
        "sk-proj-Canary_7s9dKx2LmQ4pR8tV1wY3zB5nC6fH0jG",
        "sk-ant-api03-CanaryK3y_zZ9xX8wW7vV6uU5tT4sS3rR2qQ1pP0oO-AA",
        "AKIACANARY0123456789",
        "ghp_CanaryGithubToken0123456789abcdefABCD",
        "lg-0123456789abcdef-CanaryLoopgateKey_0123456789-abcdefghijklmn",
        "xoxb-123456789012-canary-SlackToken",
        "AIzaSyCanary-GoogleKey_0123456789abcdef",
        "eyJhbGciOiJIUzI1NiJ9.eyJjYW5hcnkiOiJ5ZXMifQ.c2lnbmF0dXJlLWNhbmFyeQ",
    ],
}
# Secrets whose context stays and only a value goes: (text, value).
CANARY_CONTEXTS = [
    ("Authorization: Bearer canary-bearer-7f3a9c1e", "canary-bearer-7f3a9c1e"),
    ("curl -H 'Authorization: Basic Y2FuYXJ5OnBhc3M='", "Y2FuYXJ5OnBhc3M="),
    ("DB_PASSWORD=Canary-Pa55word!", "Canary-Pa55word!"),
    ('{"api_key": "canary api key 42"}', "canary api key 42"),
    ("secret: canary_secret_value", "canary_secret_value"),
    ("token=canaryTokenValue99", "canaryTokenValue99"),
    ("postgres://app:CanaryDbPass1@db.internal:5432/app", "CanaryDbPass1"),
    (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEcanaryPEMbody0123456789+/abc\n"
        "-----END RSA PRIVATE KEY-----",
        "MIIEcanaryPEMbody0123456789+/abc",
    ),
]


def test_canary_values_are_valid() -> None:
    for card in CANARIES[PiiKind.CARD]:
        assert corpus.luhn_valid(card.replace(" ", "").replace("-", "")), card
    for iban in CANARIES[PiiKind.IBAN]:
        assert corpus.iban_valid(iban), iban


@pytest.mark.parametrize("kind", list(PiiKind), ids=lambda k: k.name)
def test_canaries_never_survive(kind: PiiKind) -> None:
    canaries = CANARIES[kind]
    for canary in canaries:
        result = redact(f"Grüße — see {canary}, thanks 🙂")
        assert canary not in result.text, result.text
        assert result.counts == {kind: 1}, (canary, result)
    together = "\n".join(f"{i}) value: {c}." for i, c in enumerate(canaries, 1))
    result = redact(together)
    leaked = [c for c in canaries if c in result.text]
    assert not leaked, result.text
    assert result.counts.get(kind) == len(canaries), result


def test_canary_secrets_in_context() -> None:
    for text, value in CANARY_CONTEXTS:
        result = redact(text)
        assert value not in result.text, result.text
        assert result.counts == {PiiKind.SECRET: 1}, (text, result)


# ------------------------------------------------------------------------------ behaviours


def test_no_pii_gives_the_text_back() -> None:
    for text in ["", "hello", "Grüße aus 日本 🚀", "[EMAIL] [PHONE] [CARD] [IBAN] [IP] [SECRET]"]:
        assert redact(text) == Redaction(text, {})
        assert not contains_pii(text)


def test_placeholders_and_counts() -> None:
    result = redact("mail a@example.com or b@example.org, call +33 1 23 45 67 89")
    assert result.text == "mail [EMAIL] or [EMAIL], call [PHONE]"
    assert result.counts == {PiiKind.EMAIL: 2, PiiKind.PHONE: 1}
    assert result.total == 3
    assert PiiKind.EMAIL.placeholder == "[EMAIL]"
    assert frozenset(PiiKind) == ALL


def test_kinds_limits_what_is_redacted() -> None:
    text = "a@example.com 4242 4242 4242 4242 10.0.0.1"
    only_email = redact(text, frozenset({PiiKind.EMAIL}))
    assert only_email.text == "[EMAIL] 4242 4242 4242 4242 10.0.0.1"
    assert redact(text, frozenset()).text == text
    assert not contains_pii("4242 4242 4242 4242", frozenset({PiiKind.IP}))


def test_overlaps_are_masked_once_under_the_longest_or_strongest_kind() -> None:
    # A card as a secret's value: same span, SECRET outranks CARD.
    assert redact("password=4242424242424242").text == "password=[SECRET]"
    # An email whose local part is a valid card number: the longer email wins, nothing is left.
    result = redact("write to 4242424242424242@example.com now")
    assert (result.text, result.counts) == ("write to [EMAIL] now", {PiiKind.EMAIL: 1})
    # A JWT after Bearer: one secret, not two.
    jwt = CANARIES[PiiKind.SECRET][-1]
    assert redact(f"Authorization: Bearer {jwt}").counts == {PiiKind.SECRET: 1}


@pytest.mark.parametrize(
    "text",
    [
        "order 4242424242424241 shipped",  # fails Luhn
        "timestamp 1705312345678",  # 13 digits, no issuer prefix
        "DE89370400440532013001",  # bad IBAN checksum
        "DE8937040044053201300",  # wrong length for DE
        "de89370400440532013000",  # lower case
        "on 2024-01-15 at 10:30:45, v1.2.3, $1,299.99, since 1999",
        "ISBN 978-3-16-148410-0 and ISBN 0306406152",
        "uuid 123e4567-e89b-12d3-a456-426614174000, colour #ff00aa",
        "MAC 00:1A:2B:3C:4D:5E, std::vector, Foo::bar, 10.0.19045.3803",
        "max_tokens=256 eos_token: '</s>' pad_token = '<pad>' tokenizer: gpt2",
        "api_key=${OPENAI_API_KEY} password: ******** token: null key=os.getenv('K')",
        "the bearer of bad news; a bearer bond; sk-learn pipelines",
        "user at example dot com, @property, foo@bar",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert redact(text).text == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+1 (555) 123-4567", "[PHONE]"),
        ("555.123.4567", "[PHONE]"),
        ("07700 900123", "[PHONE]"),
        ("01 23 45 67 89", "[PHONE]"),
        ("030 1234567", "[PHONE]"),
        ("+49 (0)30 12345678", "[PHONE]"),
        ("0049 30 1234567", "[PHONE]"),
        ("4111-1111-1111-1111", "[CARD]"),
        ("IBAN GB82WEST12345698765432.", "IBAN [IBAN]."),
        ("BE68 5390 0754 7034 CODE", "[IBAN] CODE"),
        ("ping 8.8.8.8:53", "ping [IP]:53"),
        ("::ffff:192.0.2.1", "[IP]"),
        ("fe80::1%eth0 is up", "[IP] is up"),
        ("Bearer abc.DEF-123_xyz", "Bearer [SECRET]"),
        (
            "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
            "export AWS_SECRET_ACCESS_KEY=[SECRET]",
        ),
        ("(password=hunter2).", "(password=[SECRET])."),
        ("-----BEGIN PRIVATE KEY-----\nMIIBVQIBADAN\nBgkqhkiG9w0B\n\nbye", "[SECRET]\n\nbye"),
    ],
)
def test_shapes(text: str, expected: str) -> None:
    assert redact(text).text == expected


def test_known_limits() -> None:
    """What is deliberately not found (documented in the module); a change here is a decision."""
    for text in [
        "my password is hunter2",  # secrets in prose
        "call 555-0100",  # 7-digit local numbers
        "iban de89370400440532013000",  # lower-case IBANs
        "john%40example.com",  # URL-encoded emails
    ]:
        assert redact(text).text == text


# ------------------------------------------------------------------------------ robustness


def _random_text(rng: random.Random, length: int) -> str:
    pools = [
        string.printable,
        string.digits + " -.+()/:@",
        "".join(chr(c) for c in range(0xA0, 0x250)),
        "日本語テキスト中文한국어",
        "😀🚀🔥✅🙂👍",
        "\u0301\u0308\u200b\u200d\ufeff\u0130",  # combining marks, zero-width, dotted capital I
        "".join(chr(c) for c in range(0xD800, 0xD810)),  # lone surrogates are valid str
        "[]{}<>\"'=*%$#&;,",
    ]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(length))


def test_random_unicode_never_raises() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        text = _random_text(rng, rng.randint(0, 300))
        result = redact(text)
        assert isinstance(result.text, str)
        assert contains_pii(text) == bool(result.counts)


def test_mutated_pii_never_raises() -> None:
    """PII snippets cut, glued and spliced with noise: nothing raises, counts stay consistent."""
    rng = random.Random(11)
    snippets = [e.snippet for p in POSITIVES for e in p.values]
    found: Counter[PiiKind] = Counter()
    for _ in range(3000):
        parts = []
        for _ in range(rng.randint(1, 4)):
            s = rng.choice(snippets)
            a, b = sorted(rng.randint(0, len(s)) for _ in range(2))
            parts.append(rng.choice([s, s[a:b], s[:b], s[a:]]))
            parts.append(_random_text(rng, rng.randint(0, 3)))
        text = "".join(parts)
        result = redact(text)
        assert result.total == sum(result.text.count(k.placeholder) for k in PiiKind) - sum(
            text.count(k.placeholder) for k in PiiKind
        )
        found.update(result.counts)
    # Every detector still fired somewhere in the noise (a redact() that gave its input back
    # would pass the checks above, and fail this).
    assert set(found) == set(PiiKind), found


def _timed(text: str) -> tuple[float, Redaction]:
    """CPU seconds (other processes on a busy machine do not count) and the result."""
    start = time.process_time()
    result = redact(text)
    return time.process_time() - start, result


def test_one_megabyte_of_digits_and_letters() -> None:
    rng = random.Random(3)
    mb = 1 << 20
    inputs = {
        "letters+digits+spaces": "".join(
            rng.choice(string.ascii_letters + string.digits + " ") for _ in range(mb)
        ),
        "digits only": "".join(rng.choice(string.digits) for _ in range(mb)),
        "letters+digits": "".join(
            rng.choice(string.ascii_letters + string.digits) for _ in range(mb)
        ),
    }
    for name, text in inputs.items():
        elapsed, result = _timed(text)
        print(f"\n1 MB {name}: {elapsed:.3f} s CPU, {result.total} spans")
        assert elapsed < GENEROUS_S, name


TAIL_EMAIL = "canary.tail-7k2@example.org"


@pytest.mark.parametrize(
    "text",
    [
        "4111 " * 200_000,  # card-like groups without end
        "0 " * 500_000,
        "+1 (1) " * 100_000,
        "1:" * 500_000,
        "1.1.1.1." * 100_000,
        "a@" * 500_000,
        "x@" + "a." * 500_000,
        "eyJ" * 300_000,
        "sk-" * 300_000,
        "-----BEGIN PRIVATE KEY-----\n" * 30_000,
        "password=" * 100_000,
        "api_key: " * 100_000,
        "DE89 " * 200_000,
        "1::" * 300_000,
        "Authorization: " * 60_000,
        "(030) " * 150_000,
    ],
    ids=lambda t: repr(t[:12]),
)
def test_pathological_inputs_stay_linear(text: str) -> None:
    tail = f"\n\nReal mail after the noise: {TAIL_EMAIL}, thanks."
    elapsed, result = _timed(text + tail)
    print(f"\n{len(text) / 1e6:.2f} MB of {text[:12]!r}...: {elapsed:.3f} s CPU")
    assert elapsed < GENEROUS_S
    assert _found(TAIL_EMAIL, result), result.text[-200:]  # the scan did not give up on the way


def test_typical_chat_message_speed() -> None:
    rng = random.Random(5)
    prose = (
        "Hello! I'm having trouble with my order placed on 2024-01-15 at 10:30. The total was "
        "$129.99 and version 3.2.1 of the app keeps crashing. Could you please look into it? "
        "Thanks a lot — Grüße aus München 😀. "
    )
    message = ""
    while len(message) < 2048:
        message += prose + rng.choice(POSITIVES).text + " "
    message = message[:2048]
    clean = (prose * 12)[:2048]
    for name, text in [("2 KB with PII", message), ("2 KB without PII", clean)]:
        redact(text)
        runs = 300
        start = time.process_time()
        for _ in range(runs):
            redact(text)
        per_call = (time.process_time() - start) / runs
        print(f"\n{name}: {per_call * 1e6:.0f} us CPU per redact()")
        assert per_call < 0.05  # generous: typical is a few hundred microseconds


def test_assignment_scan_reads_each_part_of_the_text_once() -> None:
    # `token=a(` repeated: every candidate used to rescan up to 1,024 characters after it.
    # Counted in regex calls' scanned characters, not in seconds (no timing assertion).
    text = "token=a(" * 20_000 + " password=Hunter2Secret9"
    scanned = 0
    real_match = privacy._ASSIGN_VALUE_RE.match

    class Counting:
        def match(self, s: str, pos: int = 0, endpos: int = 1 << 62) -> object:
            nonlocal scanned
            scanned += min(endpos, pos + 1024 + 8) - pos
            return real_match(s, pos, endpos)

    original = privacy._ASSIGN_VALUE_RE
    privacy._ASSIGN_VALUE_RE = Counting()  # type: ignore[assignment]
    try:
        result = redact(text)
    finally:
        privacy._ASSIGN_VALUE_RE = original
    assert result.text.endswith("password=[SECRET]")
    assert result.text.startswith("token=a(token=a(")  # references are not secrets
    assert scanned <= 2 * len(text)  # linear: was ~1,024 per candidate (20x the text)


def test_a_quoted_value_may_hold_a_key_name() -> None:
    assert redact('password="my token=xyz" ok').text == 'password="[SECRET]" ok'
