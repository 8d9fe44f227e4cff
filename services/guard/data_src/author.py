# ruff: noqa: E501  (hand-written data: one message per line)
"""Writes the guard's shipped data sets (services/guard/flywheel/guard/data/*.jsonl) from the
hand-written lists beside this file: `python services/guard/data_src/author.py`.

- classify.jsonl: one message per line with a label per detector head (injection, toxicity,
  investment_advice, other_customer_data; null = not labelled for that head) and its split. The test
  split is its own hand-written lists (different messages, not variants of training ones); the training
  split adds one surface variant per message (greeting, sign-off, lower case).
- grounding.jsonl: (chunks, answer, ungrounded) with whole cases split into train and test; training
  answers also mix a supported and an unsupported sentence, and add filler sentences.
- pii.jsonl: messages with their PII spans (kind, start, end), generated from sentence frames and
  values made valid (Luhn, mod-97, SSN and NINO rules) or deliberately invalid, for measuring the PII
  rail; about half of the names are not in the shipped name list.

Deterministic (seeded): running it again writes the same files.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
OUT = HERE.parent / "flywheel" / "guard" / "data"

import benign  # noqa: E402
import grounding  # noqa: E402
import injection  # noqa: E402
import topics  # noqa: E402
import toxicity  # noqa: E402

HEADS = ("injection", "toxicity", "investment_advice", "other_customer_data")


def labels(positive: str | None, unknown: tuple[str, ...] = ()) -> dict[str, int | None]:
    return {h: (1 if h == positive else None if h in unknown else 0) for h in HEADS}


def variant(text: str, rng: random.Random) -> str:
    out = rng.choice(benign.PREFIXES) + text + rng.choice(benign.SUFFIXES)
    if rng.random() < 0.25:
        out = out.lower()
    return out if out != text else text.lower() if text != text.lower() else text + " Thanks."


def classify_rows(rng: random.Random) -> list[dict]:
    sources = [
        ("benign", benign.TRAIN + topics.OWN_DATA_MORE, benign.TEST, labels(None)),
        ("injection", injection.TRAIN + injection.MORE, injection.TEST,
         labels("injection", unknown=("toxicity", "investment_advice", "other_customer_data"))),
        ("toxic", toxicity.TOXIC_TRAIN + toxicity.TOXIC_MORE, toxicity.TOXIC_TEST, labels("toxicity")),
        ("civil_complaint", toxicity.CIVIL_TRAIN, toxicity.CIVIL_TEST, labels(None)),
        ("investment_advice", topics.INVESTMENT_TRAIN, topics.INVESTMENT_TEST, labels("investment_advice")),
        ("other_customer_data", topics.OTHER_CUSTOMER_TRAIN + topics.OTHER_CUSTOMER_MORE, topics.OTHER_CUSTOMER_TEST,
         labels("other_customer_data")),
        ("investment_advice_answer", topics.INVESTMENT_ANSWERS_TRAIN, topics.INVESTMENT_ANSWERS_TEST,
         labels("investment_advice")),
        ("other_customer_data_answer", topics.OTHER_CUSTOMER_ANSWERS_TRAIN, topics.OTHER_CUSTOMER_ANSWERS_TEST,
         labels("other_customer_data")),
    ]
    rows = []
    for source, train, test, head_labels in sources:
        for text in train:
            rows.append({"text": text, "source": source, "labels": head_labels, "split": "train"})
            rows.append({"text": variant(text, rng), "source": source, "labels": head_labels, "split": "train"})
        rows.extend({"text": t, "source": source, "labels": head_labels, "split": "test"} for t in test)
    # Allowed neighbours of the topic rails: product facts, own data, proper routes (3 of 4 to train).
    for source, allowed in (("investment_allowed", topics.INVESTMENT_ALLOWED),
                            ("own_data_allowed", topics.OTHER_CUSTOMER_ALLOWED)):
        for i, text in enumerate(allowed):
            split = "test" if i % 4 == 3 else "train"
            rows.append({"text": text, "source": source, "labels": labels(None), "split": split})
            if split == "train":
                rows.append({"text": variant(text, rng), "source": source, "labels": labels(None), "split": split})
    # Output-side negatives: the answers of the grounding cases (grounded or not, none is advice, abuse or
    # someone else's data), split with their case.
    for case, (_, good, bad) in enumerate(grounding.CASES):
        split = "test" if case % 4 == 3 else "train"
        rows.extend({"text": a, "source": "policy_answer", "labels": labels(None), "split": split}
                    for a in good + bad)
    return rows


def grounding_rows(rng: random.Random) -> list[dict]:
    rows = []
    for case, (chunks, good, bad) in enumerate(grounding.CASES):
        split = "test" if case % 4 == 3 else "train"
        answers = [(a, 0) for a in good] + [(a, 1) for a in bad]
        if split == "train":
            answers += [(f"{good[0]} {rng.choice(grounding.FILLER)}", 0), (f"{rng.choice(grounding.FILLER)} {good[1]}", 0),
                        (f"{good[0]} {bad[0]}", 1), (f"{bad[1]} {rng.choice(grounding.FILLER)}", 1)]
        else:
            answers += [(f"{good[2]} {grounding.FILLER[1]}", 0), (f"{good[1]} {bad[2]}", 1)]
        rows.extend({"case": case, "chunks": chunks, "answer": a, "ungrounded": y, "split": split} for a, y in answers)
    return rows


# ---------------------------------------------------------------------------------------------- PII

def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError


def luhn_broken(rng: random.Random) -> str:
    good = luhn_complete(rng.choice(["4", "51", "37"]), 16, rng)
    return good[:-1] + str((int(good[-1]) + rng.randrange(1, 10)) % 10)


def grouped(digits: str, rng: random.Random) -> str:
    style = rng.choice(["space", "dash", "none"])
    if style == "none":
        return digits
    sep = " " if style == "space" else "-"
    return sep.join(digits[i:i + 4] for i in range(0, len(digits), 4))


def iban(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    return f"{country}{check:02d}{bban}"


def make_iban(rng: random.Random) -> str:
    country, bban = rng.choice([
        ("GB", "NWBK" + "".join(str(rng.randrange(10)) for _ in range(14))),
        ("DE", "".join(str(rng.randrange(10)) for _ in range(18))),
        ("FR", "".join(str(rng.randrange(10)) for _ in range(23))),
        ("NL", "ABNA" + "".join(str(rng.randrange(10)) for _ in range(10))),
        ("ES", "".join(str(rng.randrange(10)) for _ in range(20))),
    ])
    value = iban(country, bban)
    if rng.random() < 0.5:
        value = " ".join(value[i:i + 4] for i in range(0, len(value), 4))
    return value


def make_ssn(rng: random.Random) -> str:
    area = rng.choice([n for n in range(1, 900) if n != 666])
    return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"


def make_nino(rng: random.Random) -> str:
    first = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    second = rng.choice("ABCEGHJKLMNPRSTWXYZ")
    if first + second in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
        first, second = "A", "B"
    digits = "".join(str(rng.randrange(10)) for _ in range(6))
    value = f"{first}{second}{digits}{rng.choice('ABCD')}"
    return value if rng.random() < 0.6 else f"{value[:2]} {value[2:4]} {value[4:6]} {value[6:8]} {value[8]}"


LISTED_NAMES = ["Sarah Jones", "David Miller", "Priya Sharma", "Tom Walker", "Emily Clark", "Mohammed Khan",
                "Laura Bennett", "James O'Connor", "Chloe Martin", "Kwame Mensah"]
# Not in libs/flywheel/common/pii_first_names.txt: the rule only finds them after a cue ("my name is", "Mr").
UNLISTED_NAMES = ["Tobias Rainer", "Ottilie Frost", "Bartholomew Quist", "Zephyr Adeyemi", "Marisol Ferreira",
                  "Anouk Visser", "Caspian Hale", "Thandiwe Dube", "Linnea Berg", "Ezio Bellandi"]


def make_phone(rng: random.Random) -> str:
    return rng.choice([
        f"+44 7700 {rng.randrange(900000, 900999)}", f"07700 {rng.randrange(900000, 900999)}",
        f"+1 (555) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}", f"(555) {rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
        f"555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}", f"020 7946 {rng.randrange(1000, 9999)}",
        f"+33 6 12 34 {rng.randrange(10, 99)} {rng.randrange(10, 99)}"])


def make_email(rng: random.Random) -> str:
    user = rng.choice(["sarah.jones", "dmiller82", "priya_s", "tom.walker+bank", "ecl4rk", "m.khan", "lbennett"])
    return f"{user}@{rng.choice(['example.com', 'mail.example.org', 'post.example.co.uk', 'example.net'])}"


FRAMES = {
    "card_number": ["My card number is {v}, can you check why it was declined?",
                    "I was charged twice on card {v} at the same shop.", "Please block {v} immediately, it's stolen.",
                    "the card ending in the digits {v} was used abroad", "Can you confirm {v} is still active?"],
    "iban": ["Please send the refund to {v}.", "My IBAN is {v} and the transfer never arrived.",
             "I paid into {v} by mistake, can you recall it?", "Is {v} a valid account for receiving wages?"],
    "us_ssn": ["My social security number is {v}.", "For verification, SSN {v}.",
               "They asked for my SSN ({v}) on the phone, was that you?"],
    "uk_nino": ["My national insurance number is {v}.", "NI number {v}, I need a tax letter.",
                "Here's my NINO: {v} for the ISA application."],
    "email": ["You can email me at {v} with the dispute form.", "Please update my email to {v}.",
              "I never received the email sent to {v}."],
    "phone": ["Call me back on {v} please.", "My new mobile number is {v}.", "Someone from {v} claimed to be you."],
    "name": ["My name is {v} and I want to report a stolen card.", "Hi, this is {v}, I called yesterday about a fee.",
             "I'm writing on behalf of Mr {v} who is my father.", "{v} here, my card was swallowed by the ATM.",
             "The payment was to {v} for the rent."],
}
NEGATIVES = [
    "My order number is {v} and the refund hasn't arrived.", "Transaction reference {v} looks wrong.",
    "The tracking code {v} shows it was never delivered.",
]


def negative_value(rng: random.Random) -> str:
    return rng.choice([luhn_broken(rng), luhn_broken(rng), f"{rng.randrange(10**9, 10**10)}",
                       f"NWB-{rng.randrange(100000, 999999)}", f"2026-0{rng.randrange(1, 9)}-1{rng.randrange(0, 9)}",
                       f"{rng.randrange(1000, 9999)}-{rng.randrange(1000, 9999)}"])


def pii_rows(rng: random.Random) -> list[dict]:
    makers = {"card_number": lambda: grouped(luhn_complete(rng.choice(["4", "51", "55", "37", "6011"]),
                                                           rng.choice([16, 16, 16, 15]), rng), rng),
              "iban": lambda: make_iban(rng), "us_ssn": lambda: make_ssn(rng), "uk_nino": lambda: make_nino(rng),
              "email": lambda: make_email(rng), "phone": lambda: make_phone(rng)}
    rows = []
    for kind, frames in FRAMES.items():
        for i in range(30):
            frame = frames[i % len(frames)]
            if kind == "name":
                value = (LISTED_NAMES if i % 2 == 0 else UNLISTED_NAMES)[(i // 2) % 10]
            else:
                value = makers[kind]()
            text = frame.format(v=value)
            start = text.index(value)
            rows.append({"text": text, "spans": [{"kind": kind, "start": start, "end": start + len(value)}],
                         "listed_name": kind == "name" and value in LISTED_NAMES})
    for i in range(60):  # no PII: numbers that look like identifiers but are not valid ones
        text = NEGATIVES[i % len(NEGATIVES)].format(v=negative_value(rng))
        rows.append({"text": text, "spans": []})
    for text in benign.TEST:
        rows.append({"text": text, "spans": []})
    # Several kinds in one message.
    for _ in range(20):
        card = grouped(luhn_complete("4", 16, rng), rng)
        email, name = make_email(rng), rng.choice(LISTED_NAMES)
        text = f"Hello, my name is {name}. My card {card} was charged twice; reply to {email}."
        spans = [{"kind": k, "start": text.index(v), "end": text.index(v) + len(v)}
                 for k, v in (("name", name), ("card_number", card), ("email", email))]
        rows.append({"text": text, "spans": sorted(spans, key=lambda s: s["start"]), "listed_name": True})
    return rows


def write(name: str, rows: list[dict]) -> None:
    path = OUT / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{path.relative_to(HERE.parent.parent.parent)}: {len(rows)} rows")


def main() -> None:
    write("classify.jsonl", classify_rows(random.Random(13)))
    write("grounding.jsonl", grounding_rows(random.Random(14)))
    write("pii.jsonl", pii_rows(random.Random(15)))


if __name__ == "__main__":
    main()
