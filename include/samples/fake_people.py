"""Deterministic fake people: Chinese names, 18-digit ID numbers with a valid check digit."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta

SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
)
GIVEN = (
    "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉兰萍红建国志强海燕雪梅晓东婷子涵浩然欣怡宇轩梓萱"
)
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def id_check_digit(first17: str) -> str:
    """Return the ISO 7064 MOD 11-2 check character of an 18-digit resident ID number."""
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


@dataclass(frozen=True)
class Person:
    """One fake insured person."""

    name: str
    certno: str
    psn_no: str
    birthday: date
    gender: str


def make_person(rng: random.Random, area: str = "440106", *, bad_check_digit: bool = False) -> Person:
    """Return a fake person; with ``bad_check_digit`` the ID number's last character is wrong."""
    birthday = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 365 * 80))
    seq = rng.randrange(0, 1000)
    gender = "1" if seq % 2 else "2"
    first17 = f"{area}{birthday:%Y%m%d}{seq:03d}"
    check = id_check_digit(first17)
    if bad_check_digit:
        check = _CHECK[(_CHECK.index(check) + 1) % 11]
    name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
    psn_no = area[:4] + f"{rng.randrange(10**15, 10**16)}"
    return Person(name=name, certno=first17 + check, psn_no=psn_no, birthday=birthday, gender=gender)
