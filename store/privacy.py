"""PII redaction of captured text: finds emails, phones, cards, IBANs, IPs and secrets, masks them.

Each detector is a precompiled regex (ASCII semantics) that proposes candidate spans, followed
where the format has one by a checksum or structural check in Python. No pattern nests unbounded
quantifiers, and patterns that can scan long runs may only start at the beginning of a run, so
the work grows linearly with the input (about 0.1-0.4 ms for a 2 KB chat message, well under a
second for 1 MB). A pre-check passes over text that no detector could match, and cheap substring
checks skip the detectors that cannot match. Detected spans become `[EMAIL]`, `[PHONE]`,
`[CARD]`, `[IBAN]`, `[IP]` or `[SECRET]`.

Patterns and their known limits:

- EMAIL: `local@domain.tld`, found from each `@`: the local part is the run of `A-Za-z0-9._%+-`
  right before it (at most 64 characters: a longer run is masked only in its last 64), the
  domain is 1-8 dot-separated labels and an alphabetic TLD of 2-24 letters. Not found: quoted
  local parts, IP-literal domains, non-ASCII or punycode-TLD addresses, `john%40example.com`.
- PHONE: international `+<cc>` (or `00<cc>` then a separator) with digit groups separated by
  single spaces, dots or dashes and an optional parenthesised group (`+33 (0)1 ...`), trailing
  groups beyond 15 digits dropped; US `(555) 123-4567`, `555-123-4567`, `555.123.4567`,
  `555 123 4567`, optionally `1-` first; trunk-prefixed European national numbers: FR
  `01 23 45 67 89` (spaces, dots, dashes or none), UK/DE `020 7946 0958`, `07700 900123`,
  `030 1234567`, `030/1234567`, `(030) 1234567`, and `0` + 9-10 digits unseparated. 7-15 digits in
  all; not glued to letters, digits, `+ . , / $ -`, not right after "<digit> " and not after
  "ISBN". Dates, times, prices, versions and years do not have these shapes. Not found: other
  national shapes (7-digit local numbers, numbers missing their `+` or trunk `0`). Any 3-3-4
  digit group with one consistent separator counts as a US number.
- CARD: 13-19 digits, either one unseparated run or consecutive groups of 3-6 digits separated
  by single spaces or dashes, starting with an issuer digit 2-6 (Mastercard 2/5, Amex, Diners,
  JCB 3, Visa 4, Discover, UnionPay, Maestro 6) and passing Luhn; the longest valid window of a
  run of groups wins. Not found: numbers glued to letters or inside a longer unseparated digit
  run. About 1 in 10 random issuer-prefixed numbers passes Luhn, so a Luhn-valid order number of
  card length is masked.
- IBAN: two upper-case letters, two check digits and up to 30 upper-case alphanumerics, compact
  or in groups of 4 separated by single spaces; ISO 7064 mod-97 must give 1 and the length must
  match the country's (the SWIFT registry's lengths; 15-34 for a code not listed). Not found:
  lower-case IBANs, other groupings. About 1 in 97 random strings of this shape passes.
- IP: IPv4 dotted quads, octets 0-255 without leading zeros (so a 4-part version number whose
  parts are valid octets is an IP; `v1.2.3.4`, glued to a letter, is not); IPv6 full, compressed
  and IPv4-embedded forms with an optional `%zone`, checked by `ipaddress`; not glued to a word
  (after a colon only when a non-hex letter precedes it: `IP:fe80::1` yes, `Code:fe80::1` no).
  An IPv6 candidate must contain a decimal digit (hex-only code paths like `abc::def` are not
  addresses; `1::` is). Times and MAC addresses are not valid IPv6.
- SECRET: `sk-` keys (OpenAI `sk-`, `sk-proj-`, Anthropic `sk-ant-`: 20+ URL-safe characters
  that include a digit and a letter), loopgate keys `lg-<16 hex>-<43>` and `lg-admin-<43>`, AWS
  access key ids `AKIA`/`ASIA` + 16, GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and
  `github_pat_`, Slack `xox[baprs]-`, Google `AIza` + 35, JWTs (`eyJ...`.`eyJ...`.`...`); the
  credential after `Bearer` (it must contain a character other than a lower-case letter, so
  "bearer instruments" stays) and after `Authorization:`; PEM private key blocks (through the END
  line when it follows within 64 KiB, else through the base64 lines that follow); the password
  in `scheme://user:password@host`; and the value of assignments (`=`, `:`, `:=`, `=>`, `==`)
  whose key ends in password, passwd, passphrase, pwd, secret, api_key/apikey, access_key,
  secret_key, private_key or token (`DB_PASSWORD=...`, `"api_key": "..."`, `token: ...`; the key
  is kept, trailing sentence punctuation of an unquoted value too). Left alone: references and
  placeholders (`$VAR`, `${...}`, `{{...}}`, `os.getenv(...)`, `None`, `***`), keys such as
  `max_tokens` or `tokenizer`, and model special tokens (`eos_token`, `pad_token`, ...). Not
  found: secrets in prose ("my password is hunter2"), keys without a known prefix or key name.

Overlapping detections are merged: the union of overlapping spans is masked once, under the kind
of the longest span, ties going to SECRET > CARD > IBAN > EMAIL > IP > PHONE. Placeholders are
never detected again, so redacting twice changes nothing.
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate


class PiiKind(enum.StrEnum):
    EMAIL = enum.auto()
    PHONE = enum.auto()
    CARD = enum.auto()
    IBAN = enum.auto()
    IP = enum.auto()
    SECRET = enum.auto()

    @property
    def placeholder(self) -> str:
        return f"[{self.name}]"


ALL: frozenset[PiiKind] = frozenset(PiiKind)

# Lower rank wins a tie between overlapping spans of the same length.
_RANK: dict[PiiKind, int] = {
    PiiKind.SECRET: 0,
    PiiKind.CARD: 1,
    PiiKind.IBAN: 2,
    PiiKind.EMAIL: 3,
    PiiKind.IP: 4,
    PiiKind.PHONE: 5,
}


@dataclass(frozen=True, slots=True)
class Redaction:
    """The redacted text and how many spans of each kind were masked (kinds with none omitted)."""

    text: str
    counts: dict[PiiKind, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


_Spans = Iterator[tuple[int, int]]
_A = re.ASCII
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# Patterns start with a character class or literal (so the regex engine can skip ahead fast) and
# check what precedes the match with a fixed-width lookbehind placed right after that first
# character: `X(?<![...].)` means "X, not preceded by one of ...". Starting only at the beginning
# of a run is what keeps the scans linear.

# --------------------------------------------------------------------------------------- EMAIL

_LOCAL_CHARS = _ALNUM | frozenset("._%+-")
_AT_DOMAIN_RE = re.compile(
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24}(?![A-Za-z0-9-])",
    _A,
)

_URL_USER_RE = re.compile(r"://[^\s/:@]{1,128}\Z", _A)


def _emails(text: str) -> _Spans:
    last_end = 0
    for m in _AT_DOMAIN_RE.finditer(text):
        at = m.start()
        start = at
        floor = max(last_end, at - 64)
        while start > floor and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        if start > 0 and text[start - 1] == ":" and _URL_USER_RE.search(text, floor, start - 1):
            continue  # the password of scheme://user:password@host, left to SECRET
        if start < at:
            last_end = m.end()
            yield start, last_end


# ---------------------------------------------------------------------------------------- CARD

_CARD_RUN_RE = re.compile(
    r"[0-9](?<![0-9A-Za-z_.,+-].)[0-9]*(?:[ -][0-9]+)*(?![0-9A-Za-z_]|[.,-][0-9])", _A
)


# Luhn doubles every second digit from the right and adds the digits of the product; for a
# single digit that is again a single digit, so doubling can be done with a translation table.
_LUHN_DOUBLE = str.maketrans("0123456789", "0246813579")


def _luhn_ok(digits: str) -> bool:
    return sum(map(int, digits[-1::-2] + digits[-2::-2].translate(_LUHN_DOUBLE))) % 10 == 0


def _card_ok(digits: str) -> bool:
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn_ok(digits)


def _longest_card_from(groups: list[str], i: int) -> int:
    """Index of the last group of the longest card that starts at group i, or -1."""
    first = groups[i]
    if first[0] not in "23456":
        return -1  # no issuer starts with this digit
    if len(first) >= 13:
        return i if _card_ok(first) else -1
    if not 3 <= len(first) <= 6:
        return -1
    found = -1
    digits = first
    j = i + 1
    while j < len(groups) and 3 <= len(groups[j]) <= 6:
        digits += groups[j]
        if len(digits) > 19:
            break
        if len(digits) >= 13 and _luhn_ok(digits):
            found = j
        j += 1
    return found


def _cards_in_run(run: str, base: int) -> _Spans:
    """Cards in a run of digit groups: one whole group, or consecutive groups of 3-6 digits."""
    groups = run.replace("-", " ").split(" ")
    starts = list(accumulate((len(g) + 1 for g in groups[:-1]), initial=base))
    i = 0
    while i < len(groups):
        last = _longest_card_from(groups, i)
        if last < 0:
            i += 1
        else:
            yield starts[i], starts[last] + len(groups[last])
            i = last + 1


def _cards(text: str) -> _Spans:
    for m in _CARD_RUN_RE.finditer(text):
        if m.end() - m.start() >= 13:
            yield from _cards_in_run(m.group(), m.start())


# ---------------------------------------------------------------------------------------- IBAN

# Total IBAN length per country (SWIFT IBAN registry).
_IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN_RE = re.compile(
    r"[A-Z](?<![A-Za-z0-9].)[A-Z][0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])",
    _A,
)


def _iban_ok(compact: str) -> bool:
    expected = _IBAN_LENGTHS.get(compact[:2])
    if expected is None:
        if not 15 <= len(compact) <= 34:
            return False
    elif len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _ibans(text: str) -> _Spans:
    for m in _IBAN_RE.finditer(text):
        cand = m.group()
        # Possible ends: before each space (a following word may have been taken as a group).
        ends = [len(cand)] + [i for i in range(len(cand) - 1, 0, -1) if cand[i] == " "]
        for end in ends:
            if _iban_ok(cand[:end].replace(" ", "")):
                yield m.start(), m.start() + end
                break


# --------------------------------------------------------------------------------------- PHONE

# Not glued to a word, a number, a sign or a currency, and not the tail of "<digit> ".
_PHONE_START = r"(?<![0-9A-Za-z_+.,/$-].)(?<![0-9] .)"
_PHONE_END = r"(?![0-9A-Za-z_]|[.,:/-][0-9])"
_PHONE_INTL_RE = re.compile(
    rf"(?:\+{_PHONE_START}|0{_PHONE_START}0(?=[1-9][0-9]{{0,2}}[ .-]))[1-9][0-9]{{0,14}}"
    r"(?:(?:[ .-]|[ ]?\([0-9]{1,4}\)[ ]?)[0-9]{1,12}){0,7}" + _PHONE_END,
    _A,
)
# Each alternative first asserts (lookbehind) which character the shared first class consumed.
_PHONE_NATIONAL_RE = re.compile(
    rf"[0-9(]{_PHONE_START}(?:"
    r"(?<=1)[ .-](?:\([0-9]{3}\)[ ]?[0-9]{3}[ .-]|[0-9]{3}(?P<us1>[ .-])[0-9]{3}(?P=us1))[0-9]{4}"
    r"|(?<=\()[0-9]{3}\)[ ]?[0-9]{3}[ .-][0-9]{4}"  # US (555) 123-4567
    r"|(?<=[0-9])[0-9]{2}(?P<us>[ .-])[0-9]{3}(?P=us)[0-9]{4}"  # US 555-123-4567
    r"|(?<=0)[1-9](?P<fr>[ .-]?)[0-9]{2}(?:(?P=fr)[0-9]{2}){3}"  # FR 01 23 45 67 89
    r"|(?<=\()0[1-9][0-9]{1,4}\)[ ]?[0-9]{3,8}(?:[ -][0-9]{3,8})?"  # (030) 1234567
    r"|(?<=0)[1-9][0-9]{1,4}[ /-][0-9]{3,8}(?:[ -][0-9]{3,8})?"  # UK / DE 020 7946 0958
    r"|(?<=0)[1-9][0-9]{8,9}"  # unseparated 0 + 9-10 digits
    r")" + _PHONE_END,
    _A,
)
_SEPARATOR_RE = re.compile(r"[ .-]|[ ]?\(", _A)


def _digit_count(s: str) -> int:
    return sum(1 for c in s if "0" <= c <= "9")


def _after_isbn(text: str, start: int) -> bool:
    return "ISBN" in text[max(0, start - 12) : start].upper()


def _phones(text: str) -> _Spans:
    intl = _PHONE_INTL_RE.finditer(text) if "+" in text or "00" in text else iter(())
    for m in intl:
        cand = m.group()
        if _after_isbn(text, m.start()):
            continue
        offset = 2 if cand.startswith("00") else 0
        # Trailing groups past 15 digits are most likely a following number, not the phone.
        while _digit_count(cand) - offset > 15:
            cuts = [s.start() for s in _SEPARATOR_RE.finditer(cand)]
            if not cuts:
                break
            cand = cand[: cuts[-1]]
        if 7 <= _digit_count(cand) - offset <= 15:
            yield m.start(), m.start() + len(cand)
    for m in _PHONE_NATIONAL_RE.finditer(text):
        if not 7 <= _digit_count(m.group()) <= 15:
            continue
        if _after_isbn(text, m.start()):
            continue
        yield m.start(), m.end()


# ------------------------------------------------------------------------------------------ IP

# Candidates are loose (octets and groups are checked in Python, IPv6 by `ipaddress`).
_IPV4_RE = re.compile(
    r"[0-9](?<![0-9A-Za-z_.].)[0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
    r"(?![0-9A-Za-z_]|\.[0-9])",
    _A,
)
_IPV6_RE = re.compile(
    # Not glued to a word or a dot; after a colon only if that follows a non-hex letter ("IP:").
    r"[0-9A-Fa-f:](?<![0-9A-Za-z_.].)(?<![0-9A-Fa-f:]:.)(?=[0-9A-Fa-f]{0,3}:)"
    r"(?:[0-9A-Fa-f:]{0,40}:[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}|[0-9A-Fa-f:]{1,45})"
    r"(?:%[0-9A-Za-z_.-]{1,32})?(?![0-9A-Za-z_]|\.[0-9])",
    _A,
)
_IPV6_HINT_RE = re.compile(r"[0-9A-Fa-f]:[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]", _A)
_HAS_DIGIT_RE = re.compile(r"[0-9]", _A)


def _octets_ok(dotted: str) -> bool:
    """Four decimal octets 0-255 without leading zeros."""
    octets = dotted.split(".")
    return len(octets) == 4 and all(
        octet.isascii()
        and octet.isdigit()
        and len(octet) <= 3
        and int(octet) <= 255
        and (len(octet) == 1 or octet[0] != "0")
        for octet in octets
    )


def _ips(text: str) -> _Spans:
    if text.count(".") >= 3:
        for m in _IPV4_RE.finditer(text):
            if _octets_ok(m.group()):
                yield m.span()
    if "::" not in text and (text.count(":") < 6 or _IPV6_HINT_RE.search(text) is None):
        return
    for m in _IPV6_RE.finditer(text):
        cand = m.group()
        if cand.endswith(":") and not cand.endswith("::"):
            cand = cand[:-1]  # a colon ending a sentence
        if cand.count(":") < 2 or _HAS_DIGIT_RE.search(cand) is None:
            continue
        address = cand.partition("%")[0]
        if "." in address and not _octets_ok(address[address.rindex(":") + 1 :]):
            continue
        try:
            ipaddress.IPv6Address(cand)
        except ValueError:
            continue
        yield m.start(), m.start() + len(cand)


# -------------------------------------------------------------------------------------- SECRET

_NOT_GLUED = r"(?<![0-9A-Za-z_-].)"
_TOKEN_RE = re.compile(
    rf"(?:s{_NOT_GLUED}(?P<sk>k-[A-Za-z0-9_-]{{20,}})"
    rf"|l{_NOT_GLUED}g-(?:admin-|[0-9a-f]{{16}}-)[A-Za-z0-9_-]{{43}}"
    rf"|A{_NOT_GLUED}(?:(?:KIA|SIA)[0-9A-Z]{{16}}|Iza[0-9A-Za-z_-]{{35}})"
    rf"|g{_NOT_GLUED}(?:h[pousr]_[A-Za-z0-9]{{36,255}}|ithub_pat_[A-Za-z0-9_]{{22,255}})"
    rf"|x{_NOT_GLUED}ox[baprs]-[A-Za-z0-9-]{{10,255}}"
    rf"|e{_NOT_GLUED}yJ[A-Za-z0-9_-]{{8,}}\.eyJ[A-Za-z0-9_-]{{8,}}\.[A-Za-z0-9_-]*"
    r")(?![0-9A-Za-z_-])",
    _A,
)
_TOKEN_HINTS = ("sk-", "lg-", "AKIA", "ASIA", "AIza", "xox", "eyJ", "github_pat_", "gh")
_GITHUB_HINTS = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")
_BEARER_RE = re.compile(
    r"(?i)(?<![0-9A-Za-z_-])bearer[ \t]+(?P<v>[A-Za-z0-9._~+/-]{8,}=*)(?![A-Za-z0-9._~+/=-])", _A
)
_AUTH_HEADER_RE = re.compile(
    r"(?i)(?<![0-9A-Za-z_-])(?:proxy-)?authorization[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"(?:(?:bearer|basic|token|digest|apikey)[ \t]+)?(?P<v>[^\s\"',;]{4,4096})",
    _A,
)
_AUTH_SCHEMES = ("bearer", "basic", "token", "digest", "apikey")
_URL_CREDENTIALS_RE = re.compile(
    r"(?i)(?<![0-9A-Za-z+.-])[a-z][a-z0-9+.-]{1,15}://[^\s/:@]{1,128}:(?P<v>[^\s/@]{1,256})@", _A
)
# Assignments are found from their operator: the key must end right before it (an optional
# closing quote and blanks in between) with one of these names, not glued to a letter or digit.
_ASSIGN_OP_RE = re.compile(r"=>|:=|==?|:", _A)
_ASSIGN_KEY_NAMES = (
    *(f"{stem}{sep}key" for stem in ("api", "access", "secret", "private") for sep in "_-"),
    *("apikey", "accesskey", "secretkey", "privatekey"),
    *("password", "passwd", "passphrase", "pwd", "secret", "token"),
)
# Run over the lower-cased text to find candidate operators quickly.
_ASSIGN_HIT_RE = re.compile(
    r"(?:key|password|passwd|passphrase|pwd|secret|token)[\"']?[ \t]{0,8}(?P<op>=>|:=|==?|:)", _A
)
_ASSIGN_VALUE_RE = re.compile(
    r"[ \t]{0,8}(?:\"(?P<dq>[^\"\r\n]{1,1024})\"|'(?P<sq>[^'\r\n]{1,1024})'"
    r"|(?P<bare>[^\s\"',;&<>]{1,1024}))",
    _A,
)
_QUOTED_VALUE_RE = re.compile(
    r"[ \t]{0,8}(?:\"(?P<dq>[^\"\r\n]{1,1024})\"|'(?P<sq>[^'\r\n]{1,1024})')", _A
)
_KEY_CHARS = _ALNUM | frozenset("_.-")
_PEM_BEGIN_RE = re.compile(r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----", _A)
_PEM_END_RE = re.compile(r"-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----", _A)
_PEM_BODY_RE = re.compile(
    r"(?:[ \t]*\r?\n(?:[A-Za-z0-9+/=]{1,128}|[A-Za-z-]{1,32}: [^\r\n]{0,256}))*", _A
)
_PEM_MAX_BODY = 65536

_PLACEHOLDERS = tuple(kind.placeholder for kind in PiiKind)
_SPECIAL_TOKEN_KEYS = ("eos", "bos", "pad", "unk", "sep", "cls", "mask", "special", "stop")
_PLACEHOLDER_VALUES = frozenset(
    {"none", "null", "nil", "undefined", "true", "false", "redacted", "[secret]", "<redacted>"}
)
_REFERENCE_RE = re.compile(r"\$|\{\{|%\(|[A-Za-z_][A-Za-z0-9_.]*[(\[]", _A)
_TRAILING_PUNCTUATION = ".,!?:)]}\u00bb\u201d\u2019"
_KEY_SPLIT_RE = re.compile(r"[_.-]", _A)
_MASK_CHARS = frozenset("*xX.•-_ ")


def _looks_random(body: str) -> bool:
    has_digit = has_lower = has_upper = False
    for c in body:
        if "0" <= c <= "9":
            has_digit = True
        elif "a" <= c <= "z":
            has_lower = True
        elif "A" <= c <= "Z":
            has_upper = True
    return has_digit and (has_lower or has_upper)


def _assigned_value_ok(key: str, value: str) -> bool:
    low_key = key.lower()
    if low_key.endswith("token"):
        stem = _KEY_SPLIT_RE.split(low_key[:-5].rstrip("_.-"))[-1]
        if stem in _SPECIAL_TOKEN_KEYS:
            return False
    low = value.strip().lower()
    if not low or low in _PLACEHOLDER_VALUES or low == low_key:
        return False
    if all(c in _MASK_CHARS for c in low):
        return False
    return _REFERENCE_RE.match(value) is None


def _pem_blocks(text: str) -> _Spans:
    if "-----BEGIN" not in text:
        return
    ends = [m.end() for m in _PEM_END_RE.finditer(text)]
    last_end = 0
    for m in _PEM_BEGIN_RE.finditer(text):
        if m.start() < last_end:
            continue
        k = bisect.bisect_left(ends, m.end())
        if k < len(ends) and ends[k] - m.end() <= _PEM_MAX_BODY:
            last_end = ends[k]
        else:
            body = _PEM_BODY_RE.match(text, m.end())
            last_end = body.end() if body is not None else m.end()
        yield m.start(), last_end


def _tokens(text: str) -> _Spans:
    hints = [hint for hint in _TOKEN_HINTS if hint in text]
    if hints == ["gh"] and not any(hint in text for hint in _GITHUB_HINTS):
        return
    if not hints:
        return
    for m in _TOKEN_RE.finditer(text):
        sk = m.group("sk")
        if sk is not None:
            body = sk[2:]
            for prefix in ("proj-", "ant-", "svcacct-", "admin-"):
                if body.startswith(prefix):
                    body = body[len(prefix) :]
                    break
            if not _looks_random(body):
                continue
        yield m.start(), m.end()


def _credentials(text: str) -> _Spans:
    lower = text.lower()
    if "bearer" in lower:
        for m in _BEARER_RE.finditer(text):
            if any(not ("a" <= c <= "z") for c in m.group("v")):
                yield m.span("v")
    if "authorization" in lower:
        for m in _AUTH_HEADER_RE.finditer(text):
            value = m.group("v")
            if value.lower() not in _AUTH_SCHEMES and not value.startswith(_PLACEHOLDERS):
                yield m.span("v")
    if "://" in text:
        for m in _URL_CREDENTIALS_RE.finditer(text):
            yield m.span("v")


def _assignment_key(text: str, op: int) -> str | None:
    """The secret-looking key that ends right before the operator at `op`, if there is one."""
    end = op
    floor = max(0, op - 8)
    while end > floor and text[end - 1] in " \t":
        end -= 1
    if end > 0 and text[end - 1] in "\"'":
        end -= 1
    tail = text[max(0, end - 12) : end].lower()
    if not tail.endswith(_ASSIGN_KEY_NAMES):
        return None
    start = end - next(len(name) for name in _ASSIGN_KEY_NAMES if tail.endswith(name))
    if start > 0 and text[start - 1] in _ALNUM:
        return None
    floor = max(0, start - 160)
    while start > floor and text[start - 1] in _KEY_CHARS:
        start -= 1
    return text[start:end]


def _assignment_ops(text: str) -> Iterator[tuple[int, int, int]]:
    """(start of the hit, operator start, operator end) of each candidate, in text order."""
    if ":" not in text and "=" not in text:
        return
    lower = text.lower()
    if len(lower) == len(text):  # the usual case: offsets in `lower` are offsets in `text`
        for m in _ASSIGN_HIT_RE.finditer(lower):
            yield m.start(), *m.span("op")
    else:  # lower() lengthened a character (e.g. U+0130): look at every operator instead
        for m in _ASSIGN_OP_RE.finditer(text):
            yield m.start(), *m.span()


def _with_next_start(
    ops: Iterator[tuple[int, int, int]], end: int
) -> Iterator[tuple[int, int, int]]:
    """Each operator's span, with where the next candidate starts (or `end`)."""
    previous: tuple[int, int] | None = None
    for start, op_start, op_end in ops:
        if previous is not None:
            yield previous[0], previous[1], start
        previous = (op_start, op_end)
    if previous is not None:
        yield previous[0], previous[1], end


def _assignments(text: str) -> _Spans:
    """`key = value` secrets. An unquoted value ends before the next candidate key starts, so
    each part of the text is read once however many candidates it holds (linear time: a body of
    `token=a(` repeated used to rescan up to 1,024 characters per candidate). A quoted value
    runs to its closing quote, which the next candidate's own quoted value cannot pass."""
    last_end = 0
    for op_start, op_end, next_start in _with_next_start(_assignment_ops(text), len(text)):
        if op_start < last_end:
            continue  # inside the value just masked
        key = _assignment_key(text, op_start)
        if key is None:
            continue
        m = _ASSIGN_VALUE_RE.match(text, op_end, max(next_start, op_end))
        if m is None or m.group("bare") is None:  # a quoted value may hold a key name
            m = _QUOTED_VALUE_RE.match(text, op_end) or m
        if m is None:
            continue
        group = "dq" if m.group("dq") is not None else "sq" if m.group("sq") else "bare"
        if m.group(group).startswith(_PLACEHOLDERS):
            continue  # already redacted
        start, end = m.span(group)
        if group == "bare":
            # Sentence punctuation or a closing bracket after an unquoted value is not part of it.
            end = start + len(m.group(group).rstrip(_TRAILING_PUNCTUATION))
        if end > start and _assigned_value_ok(key, text[start:end]):
            last_end = end
            yield start, end


def _secrets(text: str) -> _Spans:
    yield from _tokens(text)
    yield from _pem_blocks(text)
    yield from _credentials(text)
    yield from _assignments(text)


# ------------------------------------------------------------------------------------- driver

_Detector = Callable[[str], _Spans]
# Each kind's detector and the fewest (ASCII) digits a match of it holds (EMAIL and SECRET need
# none).
_DETECTORS: tuple[tuple[PiiKind, _Detector, int], ...] = (
    (PiiKind.SECRET, _secrets, 0),
    (PiiKind.CARD, _cards, 13),
    (PiiKind.IBAN, _ibans, 2),
    (PiiKind.EMAIL, _emails, 0),
    (PiiKind.IP, _ips, 1),
    (PiiKind.PHONE, _phones, 7),
)


def _applicable(text: str, kinds: frozenset[PiiKind]) -> Iterator[tuple[PiiKind, _Detector]]:
    digits = -1
    every = kinds is ALL  # (an enum's hash is Python code: skip the lookups in the usual case)
    for kind, detector, need in _DETECTORS:
        if not every and kind not in kinds:
            continue
        if kind is PiiKind.SECRET and not _may_hold_secret(text):
            continue
        if kind is PiiKind.EMAIL and "@" not in text:
            continue
        if need:
            if digits < 0:
                digits = sum(map(text.count, "0123456789"))
            if digits < need:
                continue
        yield kind, detector


# A character every match needs somewhere in the text, whatever its kind: a digit, `@`, the `:`
# or `=` of an assignment or URL, or a character of each token prefix (`-` of sk-/lg-/xox*-/PEM,
# `A` of AKIA/ASIA/AIza, `J` of eyJ, `_` of ghp_/github_pat_). Bearer and Authorization are
# checked on their own. Most prompts and answers hold none: they skip every detector.
_MAY_MATCH_RE = re.compile(r"[-0-9@:=AJ_]", _A)
_MAY_HOLD_SECRET_RE = re.compile(r"[-@:=AJ_]", _A)  # the same without the digits


def _may_contain_pii(text: str) -> bool:
    return _MAY_MATCH_RE.search(text) is not None or _names_a_credential(text)


def _may_hold_secret(text: str) -> bool:
    """Whether a SECRET could match: a text whose only trigger character is a digit (a model name
    such as `smollm2`) skips the secret detectors; the digit kinds have their own minimums."""
    return _MAY_HOLD_SECRET_RE.search(text) is not None or _names_a_credential(text)


def _names_a_credential(text: str) -> bool:
    lower = text.lower()
    return "bearer" in lower or "authorization" in lower


def redact(text: str, kinds: frozenset[PiiKind] = ALL) -> Redaction:
    """Mask every detected span of the given kinds; see the module docstring for what is found."""
    if not _may_contain_pii(text):
        return Redaction(text, {})
    spans: list[tuple[int, int, PiiKind]] = []
    for kind, detector in _applicable(text, kinds):
        spans.extend((start, end, kind) for start, end in detector(text) if end > start)
    if not spans:
        return Redaction(text, {})
    spans.sort(key=lambda s: (s[0], -s[1]))
    out: list[str] = []
    counts: dict[PiiKind, int] = {}
    pos = 0
    i = 0
    while i < len(spans):
        start, end, kind = spans[i]
        best = (end - start, -_RANK[kind], kind)
        i += 1
        while i < len(spans) and spans[i][0] < end:
            s2, e2, k2 = spans[i]
            end = max(end, e2)
            best = max(best, (e2 - s2, -_RANK[k2], k2))
            i += 1
        out.append(text[pos:start])
        out.append(best[2].placeholder)
        counts[best[2]] = counts.get(best[2], 0) + 1
        pos = end
    out.append(text[pos:])
    return Redaction("".join(out), {k: counts[k] for k in PiiKind if k in counts})


def contains_pii(text: str, kinds: frozenset[PiiKind] = ALL) -> bool:
    """Whether `redact` would mask anything; stops at the first detection."""
    if not _may_contain_pii(text):
        return False
    for _kind, detector in _applicable(text, kinds):
        for start, end in detector(text):
            if end > start:
                return True
    return False
