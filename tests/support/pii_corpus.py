"""A synthetic, seeded PII corpus for the redaction tests: no external data, valid checksums.

`positives()` gives sentences that embed known PII values of known kinds; `negatives()` gives
sentences full of look-alikes (dates, times, versions, prices, order numbers failing Luhn, ISBNs,
UUIDs, hex colours, code) that must come back unchanged. UUIDs, hashes, MAC addresses and
postcodes are deliberately not PII here. The checksum helpers are written independently of
`store.privacy` so the tests do not grade the module with its own arithmetic.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from store.privacy import PiiKind

ALNUM = string.ascii_letters + string.digits
URLSAFE = ALNUM + "-_"
UPPER_DIGITS = string.ascii_uppercase + string.digits


@dataclass(frozen=True, slots=True)
class Embedded:
    kind: PiiKind
    snippet: str  # what goes into the sentence
    value: str  # what must not survive redaction


@dataclass(frozen=True, slots=True)
class Positive:
    text: str
    values: tuple[Embedded, ...]


@dataclass(frozen=True, slots=True)
class Negative:
    text: str
    categories: tuple[str, ...]


# ------------------------------------------------------------------------------ checksum helpers


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def luhn_complete(partial: str) -> str:
    """`partial` plus the check digit that makes it Luhn-valid."""
    return next(partial + d for d in string.digits if luhn_valid(partial + d))


def luhn_break(partial: str) -> str:
    """`partial` plus a last digit that makes it fail Luhn."""
    return next(partial + d for d in string.digits if not luhn_valid(partial + d))


def iban_check_digits(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{98 - int(numeric) % 97:02d}"


def iban_valid(iban: str) -> bool:
    compact = iban.replace(" ", "")
    numeric = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return int(numeric) % 97 == 1


def group4(s: str) -> str:
    return " ".join(s[i : i + 4] for i in range(0, len(s), 4))


# ------------------------------------------------------------------------------ value generators


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _chars(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


FIRST = ["john", "marie", "juergen", "aiko", "li", "olga", "pierre", "anna", "omar", "sofia"]
LAST = ["doe", "dupont", "mueller", "tanaka", "wang", "ivanova", "martin", "smith", "haddad"]
DOMAINS = [
    "example.com",
    "mail.example.co.uk",
    "corp.example.org",
    "example.de",
    "sub.dept.example.fr",
    "example-mail.net",
    "uni.example.edu",
    "example.io",
]


def gen_email(rng: random.Random) -> Embedded:
    f, last, dom = rng.choice(FIRST), rng.choice(LAST), rng.choice(DOMAINS)
    local = rng.choice(
        [
            f"{f}.{last}",
            f"{f}+{rng.choice(['news', 'shop', 'work', 'x1'])}",
            f"{f[0]}{last}{rng.randint(1, 999)}",
            f"{f}_{last}",
            f"{last}-{f}",
            f"{f}.{last}.{rng.randint(10, 99)}",
            f"{f.upper()}.{last.capitalize()}",
        ]
    )
    value = f"{local}@{dom}"
    return Embedded(PiiKind.EMAIL, value, value)


def _card_digits(rng: random.Random) -> tuple[str, str]:
    brand = rng.choice(["visa16", "visa13", "visa19", "mc", "mc2", "amex", "discover", "jcb"])
    prefix, length = {
        "visa16": ("4", 16),
        "visa13": ("4", 13),
        "visa19": ("4", 19),
        "mc": (str(rng.randint(51, 55)), 16),
        "mc2": (str(rng.randint(2221, 2720)), 16),
        "amex": (rng.choice(["34", "37"]), 15),
        "discover": ("6011", 16),
        "jcb": (str(rng.randint(3528, 3589)), 16),
    }[brand]
    return brand, luhn_complete(prefix + _digits(rng, length - len(prefix) - 1))


def format_card(rng: random.Random, brand: str, digits: str) -> str:
    style = rng.choice(["plain", "space", "dash"])
    if style == "plain":
        return digits
    sep = " " if style == "space" else "-"
    sizes = {13: [4, 4, 5], 15: [4, 6, 5], 16: [4, 4, 4, 4], 19: [4, 4, 4, 4, 3]}[len(digits)]
    parts, pos = [], 0
    for size in sizes:
        parts.append(digits[pos : pos + size])
        pos += size
    return sep.join(parts)


def gen_card(rng: random.Random) -> Embedded:
    brand, digits = _card_digits(rng)
    snippet = format_card(rng, brand, digits)
    return Embedded(PiiKind.CARD, snippet, snippet)


# country: (IBAN length, BBAN builder)
IBAN_COUNTRIES: dict[str, tuple[int, Callable[[random.Random], str]]] = {
    "DE": (22, lambda r: _digits(r, 18)),
    "FR": (27, lambda r: _digits(r, 23)),
    "GB": (22, lambda r: _chars(r, string.ascii_uppercase, 4) + _digits(r, 14)),
    "ES": (24, lambda r: _digits(r, 20)),
    "IT": (27, lambda r: _chars(r, string.ascii_uppercase, 1) + _digits(r, 22)),
    "NL": (18, lambda r: _chars(r, string.ascii_uppercase, 4) + _digits(r, 10)),
    "BE": (16, lambda r: _digits(r, 12)),
    "CH": (21, lambda r: _digits(r, 17)),
    "AT": (20, lambda r: _digits(r, 16)),
    "PL": (28, lambda r: _digits(r, 24)),
    "NO": (15, lambda r: _digits(r, 11)),
    "PT": (25, lambda r: _digits(r, 21)),
}


def make_iban(rng: random.Random, country: str | None = None) -> str:
    country = country or rng.choice(sorted(IBAN_COUNTRIES))
    length, bban_of = IBAN_COUNTRIES[country]
    bban = bban_of(rng)
    iban = country + iban_check_digits(country, bban) + bban
    assert len(iban) == length and iban_valid(iban), iban
    return iban


def gen_iban(rng: random.Random) -> Embedded:
    iban = make_iban(rng)
    snippet = group4(iban) if rng.random() < 0.5 else iban
    return Embedded(PiiKind.IBAN, snippet, snippet)


def gen_phone(rng: random.Random) -> Embedded:
    def d(n: int) -> str:
        return _digits(rng, n)

    area, exch, line = str(rng.randint(201, 989)), str(rng.randint(200, 999)), d(4)
    fr = [str(rng.randint(1, 9))] + [d(2) for _ in range(4)]
    snippet = rng.choice(
        [
            # US
            f"({area}) {exch}-{line}",
            f"{area}-{exch}-{line}",
            f"{area}.{exch}.{line}",
            f"{area} {exch} {line}",
            f"1-{area}-{exch}-{line}",
            f"+1 ({area}) {exch}-{line}",
            f"+1 {area} {exch} {line}",
            f"+1-{area}-{exch}-{line}",
            f"+1.{area}.{exch}.{line}",
            f"+1{area}{exch}{line}",
            # UK
            f"020 7946 {d(4)}",
            f"07700 9{d(5)}",
            f"0161 496 {d(4)}",
            f"+44 20 7946 {d(4)}",
            f"+44 7700 9{d(5)}",
            f"+44 (0)20 7946 {d(4)}",
            # FR
            "0" + " ".join(fr),
            "0" + ".".join(fr),
            "0" + "".join(fr),
            "+33 " + " ".join(fr),
            "+33 (0)" + " ".join(fr),
            # DE
            f"030 {d(7)}",
            f"089 {d(8)}",
            f"0171 {d(7)}",
            f"030/{d(7)}",
            f"(030) {d(7)}",
            f"+49 30 {d(7)}",
            f"+49 (0)30 {d(8)}",
            f"+49 171 {d(7)}",
            f"0049 30 {d(7)}",
            # elsewhere
            f"+81 3-{d(4)}-{d(4)}",
            f"+41 44 {d(3)} {d(2)} {d(2)}",
            f"+91 98{d(3)} {d(5)}",
            f"+61 2 {d(4)} {d(4)}",
        ]
    )
    return Embedded(PiiKind.PHONE, snippet, snippet)


def _ipv4(rng: random.Random) -> str:
    return ".".join(str(x) for x in [rng.randint(1, 223), *(rng.randint(0, 255) for _ in range(3))])


def gen_ip(rng: random.Random) -> Embedded:
    rand6 = ipaddress.IPv6Address(rng.getrandbits(128))
    doc6 = ipaddress.IPv6Address((0x20010DB8 << 96) | rng.getrandbits(32))
    snippet = rng.choice(
        [
            _ipv4(rng),
            _ipv4(rng),
            _ipv4(rng),
            f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            rand6.compressed,
            rand6.exploded,
            doc6.compressed,
            "::1",
            f"fe80::{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}%eth0",
            f"fe80::{rng.randint(1, 9)}",
            f"::ffff:{_ipv4(rng)}",
        ]
    )
    return Embedded(PiiKind.IP, snippet, snippet)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(rng: random.Random) -> str:
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64url(
        json.dumps({"sub": _digits(rng, 10), "name": rng.choice(FIRST), "iat": 1700000000}).encode()
    )
    return f"{header}.{payload}.{_b64url(rng.randbytes(32))}"


def _random_key(rng: random.Random, alphabet: str, n: int) -> str:
    """Random characters from `alphabet`, with at least one digit and one letter."""
    body = [*_chars(rng, alphabet, n - 2), rng.choice(string.digits), rng.choice("aZ")]
    rng.shuffle(body)
    return "".join(body)


def make_pem(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "])
    lines = [base64.b64encode(rng.randbytes(48)).decode() for _ in range(rng.randint(3, 6))]
    block = "\n".join(
        [f"-----BEGIN {label}PRIVATE KEY-----", *lines, f"-----END {label}PRIVATE KEY-----"]
    )
    return block, lines[0]


def _password(rng: random.Random) -> str:
    return _random_key(rng, ALNUM + "!#%^*_+-", rng.randint(10, 20))


def gen_secret(rng: random.Random) -> Embedded:
    s = PiiKind.SECRET
    choice = rng.randrange(17)
    if choice == 0:
        v = "sk-" + _random_key(rng, ALNUM, 48)
    elif choice == 1:
        v = "sk-proj-" + _random_key(rng, URLSAFE, rng.randint(60, 150))
    elif choice == 2:
        v = "sk-ant-api03-" + _random_key(rng, URLSAFE, 93) + "AA"
    elif choice == 3:
        v = f"lg-{rng.randbytes(8).hex()}-{_chars(rng, URLSAFE, 43)}"
    elif choice == 4:
        v = "AKIA" + _chars(rng, UPPER_DIGITS, 16)
    elif choice == 5:
        v = rng.choice(["ghp_", "gho_"]) + _chars(rng, ALNUM, 36)
    elif choice == 6:
        v = "github_pat_" + _chars(rng, ALNUM, 22) + "_" + _chars(rng, ALNUM, 59)
    elif choice == 7:
        team, user = _digits(rng, 12), _digits(rng, 12)
        v = f"xox{rng.choice('baprs')}-{team}-{user}-{_chars(rng, ALNUM, 24)}"
    elif choice == 8:
        v = "AIza" + _chars(rng, URLSAFE, 35)
    elif choice == 9:
        v = make_jwt(rng)
    elif choice == 10:
        token = _random_key(rng, URLSAFE, 32)
        return Embedded(s, f"Authorization: Bearer {token}", token)
    elif choice == 11:
        token = _random_key(rng, URLSAFE + ".~", rng.randint(20, 40))
        return Embedded(s, f"Bearer {token}", token)
    elif choice == 12:
        block, body_line = make_pem(rng)
        return Embedded(s, block, body_line)
    else:
        value = _password(rng)
        key = rng.choice(
            [
                "password={}",
                "api_key: {}",
                "secret={}",
                "token={}",
                'DB_PASSWORD="{}"',
                '"api_key": "{}"',
                "AWS_SECRET_ACCESS_KEY={}",
                "client_secret: '{}'",
                "export GITHUB_TOKEN={}",
                "passwd = {}",
                "Password: {}",
            ]
        )
        return Embedded(s, key.format(value), value)
    return Embedded(s, v, v)


GENERATORS: dict[PiiKind, Callable[[random.Random], Embedded]] = {
    PiiKind.EMAIL: gen_email,
    PiiKind.PHONE: gen_phone,
    PiiKind.CARD: gen_card,
    PiiKind.IBAN: gen_iban,
    PiiKind.IP: gen_ip,
    PiiKind.SECRET: gen_secret,
}

# ------------------------------------------------------------------------------------ sentences

INTROS: dict[PiiKind, list[str]] = {
    PiiKind.EMAIL: ["my email is ", "mon e-mail : ", "E-Mail: ", "write to ", ""],
    PiiKind.PHONE: ["call me on ", "mon numéro est le ", "Telefon: ", "tel. ", ""],
    PiiKind.CARD: ["card number ", "ma carte ", "Kartennummer ", "CC: ", ""],
    PiiKind.IBAN: ["IBAN ", "mon IBAN : ", "Bankverbindung ", "account ", ""],
    PiiKind.IP: ["server ", "l'adresse IP ", "IP-Adresse ", "from ", ""],
    PiiKind.SECRET: ["", "", "key ", "voici la clé ", "Schlüssel: "],
}

TEMPLATES_1 = [
    "Hi, {0}. Thanks!",
    "Please update my details: {0}",
    "The customer wrote '{0}' and asked for a refund.",
    "Can you check why {0} fails? It worked yesterday at 10:30.",
    "```\n{0}\n```",
    "{0}",
    "Forwarding this ({0}) to the team, see ticket #4512.",
    "Bonjour, voici mes coordonnées : {0}. Merci d'avance !",
    "Mon collègue m'a donné {0}, c'est bien ça ?",
    "Hallo, {0}. Viele Grüße, Jürgen",
    "Könnten Sie {0} an die Buchhaltung weiterleiten? Danke schön 🙏",
    "日本語のテキスト {0} を確認してください 😀",
    "Emoji test 🚀🔥 {0} ✅",
    "Grüße aus Zürich, {0}, ça va? 👍",
    "Привет! {0} — это мои данные.",
    "«{0}» était noté dans le formulaire.",
    "<{0}>",
    "Note for 2024-03-15: {0}\nNext step: call back on Monday.",
    "**{0}**",
    "Use `{0}` for that.",
    "[{0}]",
    '"{0}"',
    "Is it {0}?",
    "- item one\n- {0}\n- item three",
    "| name | value |\n|---|---|\n| x | {0} |",
    "Kontakt:{0}",
    "{0}!!",
]
TEMPLATES_2 = [
    "{0} is what I have on file, and also {1}.",
    "My details: {0}; backup: {1}.",
    "Pouvez-vous vérifier {0} et {1} s'il vous plaît ?",
    "Bitte prüfen Sie {0} und {1} bis Freitag.",
    "{0}\n{1}",
    "First {0}, then {1} 🙂",
    "経由 {0} と {1} です。",
    "{0}\t{1}",
    '{{"a": "{0}", "b": "{1}"}}',
    "({0}) / ({1})",
]
TEMPLATES_3 = [
    "Summary: {0} | {1} | {2}",
    "Here you go: {0}, {1} and {2}. Cheers!",
    "Daten: {0}; {1}; {2} — Grüße",
]


def _slots(template: str) -> int:
    return len({field for _, field, _, _ in string.Formatter().parse(template) if field})


def positives(seed: int = 20240515, n: int = 600) -> list[Positive]:
    rng = random.Random(seed)
    kinds = list(PiiKind)
    out: list[Positive] = []
    for i in range(n):
        template = rng.choice(rng.choice([TEMPLATES_1, TEMPLATES_1, TEMPLATES_2, TEMPLATES_3]))
        slots = _slots(template)
        embedded = []
        for j in range(slots):
            kind = kinds[(i + j) % len(kinds)] if j == 0 else rng.choice(kinds)
            embedded.append(GENERATORS[kind](rng))
        snippets = [rng.choice(INTROS[e.kind]) + e.snippet for e in embedded]
        out.append(Positive(template.format(*snippets), tuple(embedded)))
    return out


# ------------------------------------------------------------------------------------ negatives


def _isbn13(rng: random.Random) -> str:
    body = "978" + _digits(rng, 9)
    total = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body))
    return body + str((10 - total % 10) % 10)


def _isbn10(rng: random.Random) -> str:
    body = "0" + _digits(rng, 8)
    check = (11 - sum((10 - i) * int(c) for i, c in enumerate(body)) % 11) % 11
    return body + ("X" if check == 10 else str(check))


def _hyphenated_isbn13(s: str) -> str:
    return f"{s[:3]}-{s[3]}-{s[4:6]}-{s[6:12]}-{s[12]}"


def _hyphenated_isbn10(s: str) -> str:
    return f"{s[0]}-{s[1:4]}-{s[4:9]}-{s[9]}"


def _uuid(rng: random.Random) -> str:
    h = rng.randbytes(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}"


def _failing_order_number(rng: random.Random) -> str:
    length = rng.randint(13, 19)
    return luhn_break(str(rng.randint(2, 6)) + _digits(rng, length - 2))


def _bad_iban(rng: random.Random) -> str:
    iban = make_iban(rng)
    wrong = f"{(int(iban[2:4]) + rng.randint(1, 90)) % 100:02d}"
    return iban[:2] + wrong + iban[4:]


LOOKALIKES: dict[str, Callable[[random.Random], str]] = {
    "date": lambda r: r.choice(
        [
            f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
            f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/20{r.randint(10, 30)}",
            f"{r.randint(1, 12):02d}/{r.randint(1, 28):02d}/20{r.randint(10, 30)}",
            f"{r.randint(1, 28):02d}.{r.randint(1, 12):02d}.20{r.randint(10, 30)}",
            f"{r.randint(1, 28):02d}-{r.randint(1, 12):02d}-20{r.randint(10, 30)}",
            f"20{r.randint(10, 30)}/{r.randint(1, 12):02d}/{r.randint(1, 28):02d}",
            f"Jan {r.randint(1, 28)}, 20{r.randint(10, 30)}",
        ]
    ),
    "time": lambda r: r.choice(
        [
            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
            f"2024-01-{r.randint(10, 28)}T{r.randint(10, 23)}:{r.randint(10, 59)}:00Z",
            f"{r.randint(8, 11)}:00-{r.randint(12, 18)}:30",
            f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}.{_digits(r, 3)}",
        ]
    ),
    "version": lambda r: r.choice(
        [
            f"{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 30)}",
            f"v{r.randint(1, 4)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
            f"Python 3.{r.randint(8, 13)}.{r.randint(0, 9)}",
            f"10.0.{r.randint(10000, 22000)}.{r.randint(1000, 5000)}",
            f"{r.randint(0, 2)}.{r.randint(0, 40)}.0-rc.{r.randint(1, 5)}",
        ]
    ),
    "order": lambda r: r.choice(
        [
            f"order {_failing_order_number(r)}",
            f"Bestellnummer {_failing_order_number(r)}",
            f"order #{r.choice('1789')}{_digits(r, r.randint(12, 18))}",
            "ref " + group4(luhn_break(str(r.randint(2, 6)) + _digits(r, 14))),
            f"ORD-2024-{_digits(r, 6)}",
            f"tracking 1Z{_chars(r, UPPER_DIGITS, 16)}",
        ]
    ),
    "price": lambda r: r.choice(
        [
            f"${r.randint(1, 9)},{_digits(r, 3)}.{_digits(r, 2)}",
            f"€{r.randint(1, 999)}.{_digits(r, 2)}",
            f"{r.randint(1, 9)}.{_digits(r, 3)},{_digits(r, 2)} €",
            f"USD {r.randint(1, 99)},{_digits(r, 3)}.00",
            f"£{r.randint(1, 99)}.{_digits(r, 2)}",
            f"¥ {r.randint(1, 99)},{_digits(r, 3)}",
            f"{r.randint(1, 999)} {_digits(r, 3)},{_digits(r, 2)} €",
        ]
    ),
    "year": lambda r: r.choice(
        [f"in {r.randint(1950, 2030)}", f"since {r.randint(1990, 2024)}", "1990-2020", "FY2024"]
    ),
    "isbn": lambda r: r.choice(
        [
            "ISBN " + _hyphenated_isbn13(_isbn13(r)),
            "ISBN-13: " + _isbn13(r),
            "ISBN " + _isbn10(r),
            "ISBN " + _hyphenated_isbn10(_isbn10(r)),
        ]
    ),
    "hex colour": lambda r: r.choice(
        [f"#{r.randbytes(3).hex()}", f"#{r.randbytes(3).hex().upper()}", "#FFF", "#0a0"]
    ),
    "uuid": _uuid,
    "hash": lambda r: r.choice(
        [r.randbytes(20).hex(), r.randbytes(32).hex(), r.randbytes(4).hex()]
    ),
    "number": lambda r: r.choice(
        [
            f"{r.randint(1, 99)},{_digits(r, 3)},{_digits(r, 3)} users",
            f"{r.randint(1, 99)} {_digits(r, 3)} {_digits(r, 3)} habitants",
            f"{r.randint(1, 100)}%",
            f"{r.randint(640, 3840)}x{r.randint(480, 2160)}",
            f"3.{_digits(r, r.randint(5, 20))}",
            f"{r.randint(-90, 90)}.{_digits(r, 4)}, {r.randint(-180, 180)}.{_digits(r, 4)}",
            f"timestamp 17{_digits(r, 8)}",
            f"epoch ms 17{_digits(r, 11)}",
            f"room {r.randint(100, 999)}",
            f"ext. {_digits(r, 4)}",
            f"ZIP {_digits(r, 5)}",
            f"page {r.randint(1, 99)} of {r.randint(100, 999)}",
            f"score {r.randint(0, 5)}-{r.randint(0, 5)}",
            "John 3:16",
            f"{r.randint(1, 9)} + {r.randint(1, 9)} = {r.randint(10, 18)}",
            f"+{r.randint(1, 99)}% growth",
            f"{r.randint(10, 20)}-{r.randint(21, 40)} items",
        ]
    ),
    "network-ish": lambda r: r.choice(
        [
            f"{r.randint(256, 999)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(0, 255)}",
            ":".join(r.randbytes(1).hex().upper() for _ in range(6)),
            "std::vector<int>",
            "Foo::bar()",
            f"localhost:{r.randint(1024, 65535)}",
            f"port {r.randint(1024, 65535)}",
        ]
    ),
    "code": lambda r: r.choice(
        [
            f"max_tokens={r.choice([128, 256, 512, 4096])}",
            f"temperature: 0.{r.randint(1, 9)}",
            'eos_token: "</s>"',
            "pad_token = '<pad>'",
            f"top_p=0.{r.randint(80, 99)}",
            "tokenizer: gpt2",
            f"num_tokens={r.randint(1, 9999)}",
            "api_key=os.environ['OPENAI_API_KEY']",
            "password: ********",
            "token: null",
            "api_key=${OPENAI_API_KEY}",
            "for i in range(10):",
        ]
    ),
    "wordy": lambda r: r.choice(
        [
            "the bearer of bad news",
            "a bearer bond",
            "reset your password via the portal",
            "the token was invalid",
            "sk-learn style estimators",
            "task-force meeting",
            "@property decorator",
            "user at example dot com",
            "ping @alice on chat",
            "AKIA123 is too short",
            "DE12 3456",
            f"invoice {_bad_iban(r)}",
        ]
    ),
}

NEGATIVE_TEMPLATES = [
    "Meeting on {0}, bring {1}.",
    "Le rendez-vous est prévu le {0} ({1}).",
    "Bitte beachten: {0} und {1}. Grüße!",
    "Release notes: {0}; also {1} 🚀",
    "{0}",
    "日本語: {0} と {1}",
    "Quick note: {0}, {1}, {2}.",
    "```\n{0}\n{1}\n```",
    "— {0} — «{1}» 😀",
]


def negatives(seed: int = 20240516, n: int = 300) -> list[Negative]:
    rng = random.Random(seed)
    categories = sorted(LOOKALIKES)
    out: list[Negative] = []
    for i in range(n):
        template = rng.choice(NEGATIVE_TEMPLATES)
        slots = _slots(template)
        cats = [categories[(i + j) % len(categories)] if j == 0 else rng.choice(categories)
                for j in range(slots)]  # fmt: skip
        out.append(Negative(template.format(*(LOOKALIKES[c](rng) for c in cats)), tuple(cats)))
    return out
