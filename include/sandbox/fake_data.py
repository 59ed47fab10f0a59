"""Deterministic fake data of the real output shapes: the same input always gives the same output.

Everything is derived from SHA-256 of the input, never from ``random``, so a test or a demo can
predict an answer by sending the same message again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

T = TypeVar("T")

CENT = Decimal("0.01")
DATE_FMT = "%Y-%m-%d"
DATETIME_FMT = "%Y-%m-%d %H:%M:%S"

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"

_AREAS = ("440106", "440104", "440305", "110105", "110108", "310104", "320106", "330106", "420106", "510107")
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁"
_GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚华玉萍红玲芬燕彬斌宇浩凯健俊帆旭宁龙林欣晨阳"
_EMPLOYERS = (
    "越秀建筑工程有限公司",
    "南山电子科技有限公司",
    "朝阳商贸有限公司",
    "浦东物流有限公司",
    "西湖软件有限公司",
    "江汉机械制造有限公司",
    "第一中学",
)
_CITIES = ("广州市", "深圳市", "北京市", "上海市", "杭州市", "武汉市", "成都市")
_INSTITUTION_KINDS = ("第一人民医院", "中医院", "妇幼保健院", "中西医结合医院", "社区卫生服务中心", "大药房")
_CATALOG_ITEMS = (
    ("阿莫西林胶囊", "09", "101"),
    ("布洛芬缓释胶囊", "09", "101"),
    ("头孢克肟片", "09", "101"),
    ("复方丹参滴丸", "10", "102"),
    ("板蓝根颗粒", "10", "102"),
    ("血常规检查", "04", "201"),
    ("心电图检查", "04", "201"),
    ("普通门诊诊查费", "01", "201"),
    ("静脉输液", "05", "201"),
    ("胸部X线摄影", "04", "201"),
)
_CHRONIC_DISEASES = (
    ("M03900", "高血压病"),
    ("M01600", "糖尿病"),
    ("M05300", "冠心病"),
    ("M00500", "慢性阻塞性肺疾病"),
    ("M07800", "慢性肾功能衰竭"),
)


def number(*parts: Any) -> int:
    """Return a large non-negative integer derived from ``parts``."""
    text = "\x1f".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")


def digits(length: int, *parts: Any) -> str:
    """Return ``length`` decimal digits derived from ``parts`` (at most 70)."""
    return str(number(*parts)).zfill(78)[-length:]


def pick(options: Sequence[T], *parts: Any) -> T:
    """Return one of ``options`` chosen by ``parts``."""
    return options[number(*parts) % len(options)]


def money(value: Decimal | int | float) -> Decimal:
    """Round an amount to cents."""
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def id_check_char(first17: str) -> str:
    """Return the ISO 7064 MOD 11-2 check character of an 18-digit resident ID number."""
    total = sum(int(char) * weight for char, weight in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def is_valid_id_number(value: str) -> bool:
    """Tell whether ``value`` is an 18-digit ID number with a real birth date and check character."""
    if len(value) != 18 or not value[:17].isascii() or not value[:17].isdigit():
        return False
    try:
        datetime.strptime(value[6:14], "%Y%m%d")
    except ValueError:
        return False
    return value[17].upper() == id_check_char(value[:17])


def person(mdtrt_cert_type: str, mdtrt_cert_no: str, *, psn_name: str | None, on: date) -> dict[str, Any]:
    """
    Return the ``1101`` output for a certificate, its ID number valid when the type is ``02``.

    :param mdtrt_cert_type: ``01`` e-voucher, ``02`` ID card, ``03`` social security card.
    :param mdtrt_cert_no: The certificate number.
    :param psn_name: The name the caller gave, echoed unchanged; a derived one when None.
    :param on: The day the age is counted on.
    """
    if mdtrt_cert_type == "02":
        certno = mdtrt_cert_no.upper()
    else:
        birth = date(1940, 1, 1) + timedelta(days=number("brdy", mdtrt_cert_no) % 27_000)
        first17 = pick(_AREAS, "area", mdtrt_cert_no) + f"{birth:%Y%m%d}" + digits(3, "seq", mdtrt_cert_no)
        certno = first17 + id_check_char(first17)
    brdy = datetime.strptime(certno[6:14], "%Y%m%d").date()
    age = max(0, on.year - brdy.year - ((on.month, on.day) < (brdy.month, brdy.day)))
    psn_no = certno[:6] + digits(14, "psn_no", certno)
    if psn_name is None:
        psn_name = pick(_SURNAMES, "surname", certno) + "".join(
            pick(_GIVEN, "given", certno, i) for i in range(1 + number("name_len", certno) % 2)
        )

    employed = age >= 18 and number("employed", certno) % 10 < 6
    insutype = "310" if employed else "390"
    insu_start = max(date(1999, 1, 1), brdy) + timedelta(days=number("insu_date", certno) % 3650)
    insuinfo = {
        "balc": float(money(Decimal(number("balc", certno) % 800_000) / 100)) if employed else 0.0,
        "insutype": insutype,
        "psn_type": ("12" if age >= 60 else "11") if employed else "15",
        "psn_insu_stas": "1",
        "psn_insu_date": f"{insu_start:{DATE_FMT}}",
        "paus_insu_date": None,
        "cvlserv_flag": "1" if employed and number("cvlserv", certno) % 10 == 0 else "0",
        "insuplc_admdvs": certno[:4] + "00",
        "emp_name": pick(_CITIES, "emp_city", certno) + pick(_EMPLOYERS, "emp", certno) if employed else None,
    }
    idetinfo = []
    if number("idet", certno) % 7 == 0:
        idetinfo.append(
            {
                "psn_idet_type": pick(("2201", "2301", "2401"), "idet_type", certno),
                "psn_type_lv": None,
                "memo": None,
                "begntime": f"{insu_start:{DATE_FMT}} 00:00:00",
                "endtime": None,
            }
        )
    return {
        "baseinfo": {
            "psn_no": psn_no,
            "psn_cert_type": "01",
            "certno": certno,
            "psn_name": psn_name,
            "gend": "1" if int(certno[16]) % 2 else "2",
            "naty": "01",
            "brdy": f"{brdy:{DATE_FMT}}",
            "age": age,
        },
        "insuinfo": [insuinfo],
        "idetinfo": idetinfo,
    }


def institution(
    fixmedins_type: str, fixmedins_code: str | None, fixmedins_name: str | None
) -> dict[str, Any]:
    """Return one ``1201`` institution entry, echoing the code and name the caller gave."""
    seed = fixmedins_code or fixmedins_name
    return {
        "fixmedins_code": fixmedins_code or "H" + digits(11, "fixmedins_code", fixmedins_name),
        "fixmedins_name": fixmedins_name
        or pick(_CITIES, "city", seed) + pick(_INSTITUTION_KINDS, "kind", seed),
        "uscc": "12" + digits(15, "uscc", seed) + pick("0123456789ABCDEFGHJKLMNPQRTUWXY", "uscc_check", seed),
        "fixmedins_type": fixmedins_type,
        "hosp_lv": pick(("11", "12", "21", "22", "31"), "hosp_lv", seed),
    }


def catalog_page(
    query_date: str, hilist_code: str | None, page_num: int | None, page_size: int | None
) -> dict[str, Any]:
    """Return a ``1312`` answer: one item by code, or one page of the whole fake catalog."""
    if hilist_code:
        rows = [_catalog_row(hilist_code, number("hilist", hilist_code), query_date)]
        return {"data": rows, "recordCounts": 1, "pageNum": page_num or 1, "pageSize": page_size or 1}

    total = 1200 + number("catalog_size", query_date) % 300
    page_num, page_size = page_num or 1, page_size or 100
    first = (page_num - 1) * page_size
    rows = [
        _catalog_row(f"{'X' if index % 2 else 'S'}{index:09d}", index, query_date)
        for index in range(first, min(first + page_size, total))
    ]
    return {"data": rows, "recordCounts": total, "pageNum": page_num, "pageSize": page_size}


def _catalog_row(code: str, index: int, query_date: str) -> dict[str, Any]:
    name, chrgitm_type, list_type = _CATALOG_ITEMS[index % len(_CATALOG_ITEMS)]
    return {
        "hilist_code": code,
        "hilist_name": name,
        "insu_admdvs": pick(_AREAS, "catalog_area", code)[:4] + "00",
        "begndate": "2020-01-01",
        "enddate": "2099-12-31",
        "med_chrgitm_type": chrgitm_type,
        "chrgitm_lv": pick(("01", "02", "03"), "chrgitm_lv", code),
        "list_type": list_type,
        "vali_flag": "1",
        "updt_time": f"{query_date} 00:00:00",
    }


def visit_history(psn_no: str) -> list[dict[str, Any]]:
    """Return a person's fake past visits elsewhere (the ``5201`` shape), the same on every call."""
    visits = []
    for index in range(number("visit_count", psn_no) % 8):
        begin = datetime(2020, 1, 1, 8) + timedelta(minutes=number("visit_time", psn_no, index) % 3_700_000)
        med_type = pick(("11", "11", "11", "14", "21"), "med_type", psn_no, index)
        stay = (
            timedelta(days=1 + number("stay", psn_no, index) % 10) if med_type == "21" else timedelta(hours=1)
        )
        code = "H" + pick(_AREAS, "visit_area", psn_no, index) + digits(5, "visit_inst", psn_no, index)
        visits.append(
            {
                "mdtrt_id": digits(24, "history_mdtrt", psn_no, index),
                "psn_no": psn_no,
                "fixmedins_code": code,
                "fixmedins_name": pick(_CITIES, "city", code) + pick(_INSTITUTION_KINDS, "kind", code),
                "med_type": med_type,
                "begntime": f"{begin:{DATETIME_FMT}}",
                "endtime": f"{begin + stay:{DATETIME_FMT}}",
                "insutype": pick(("310", "390"), "visit_insutype", psn_no),
                "ipt_otp_no": digits(12, "visit_otp", psn_no, index),
            }
        )
    return visits


def years_later(day: date, years: int) -> date:
    """Return the same day ``years`` later; 29 February becomes 28 February in a common year."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def chronic_filings(psn_no: str) -> list[dict[str, Any]]:
    """Return a person's chronic or special disease filings (the ``5301`` ``feedetail`` shape)."""
    filings = []
    for index in range(number("chronic_count", psn_no) % 3):
        code, name = pick(_CHRONIC_DISEASES, "chronic", psn_no, index)
        begin = date(2019, 1, 1) + timedelta(days=number("chronic_date", psn_no, index) % 2000)
        filings.append(
            {
                "psn_no": psn_no,
                "opsp_dise_code": code,
                "opsp_dise_name": name,
                "begndate": f"{begin:{DATE_FMT}}",
                "enddate": f"{years_later(begin, 5):{DATE_FMT}}",
                "hosp_opnn": None,
            }
        )
    return filings


def settlement_split(
    psn_no: str, mdtrt_id: str, insutype: str, medfee_sumamt: Decimal, use_account: bool
) -> dict[str, Decimal]:
    """Split a bill into fund, personal account and cash parts that add up to the bill exactly."""
    total = money(medfee_sumamt)
    share = Decimal(500 + number("fund_share", psn_no, mdtrt_id, insutype) % 351) / 1000
    fund = money(total * share)
    acct = Decimal("0.00")
    if use_account and insutype == "310":
        acct = money((total - fund) * Decimal(number("acct_share", psn_no, mdtrt_id) % 1001) / 1000)
    return {
        "medfee_sumamt": total,
        "fund_pay_sumamt": fund,
        "acct_pay": acct,
        "psn_cash_pay": total - fund - acct,
    }
