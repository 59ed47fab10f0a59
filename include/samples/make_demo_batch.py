"""Write the demo's sample batch (``demo_batch.json``): 1,200 requests over ten interfaces.

Run it again to regenerate the same file (the random generator is seeded). The batch holds fake
people, queries and writes for five institutions, a few requests the gateway refuses (an ID
number with a wrong check digit) and a few invalid ones that must be REJECTED at the door.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from samples.fake_people import make_person

HERE = Path(__file__).resolve().parent


def make_batch(seed: int = 20261203) -> list[dict]:
    """Return the sample requests, in a stable order."""
    rng = random.Random(seed)
    institutions = json.loads((HERE / "institutions.json").read_text(encoding="utf-8"))["institutions"]
    orgs = list(institutions)
    requests: list[dict] = []

    def add(api_code: str, org: str, data: dict, **extra) -> None:
        requests.append(
            {
                "request_id": f"demo-{len(requests):05d}",
                "api_code": api_code,
                "org_code": org,
                "data": data,
                **extra,
            }
        )

    for i in range(480):
        org = orgs[i % len(orgs)]
        person = make_person(rng, institutions[org]["mdtrtarea_admvs"], bad_check_digit=i % 160 == 7)
        if i % 10 == 0:
            add("1101", org, {"mdtrt_cert_type": "01", "mdtrt_cert_no": f"E{rng.randrange(10**19, 10**20)}"})
        else:
            add(
                "1101",
                org,
                {"mdtrt_cert_type": "02", "mdtrt_cert_no": person.certno, "psn_name": person.name},
            )
    for i in range(150):
        org = orgs[i % len(orgs)]
        add("5301", org, {"psn_no": make_person(rng).psn_no})
    for i in range(150):
        org = orgs[i % len(orgs)]
        day = 1 + i % 28
        add(
            "5201",
            org,
            {
                "psn_no": make_person(rng).psn_no,
                "begntime": f"2026-11-{day:02d} 00:00:00",
                "endtime": f"2026-11-{day:02d} 23:59:59",
            },
        )
    for i in range(60):
        add("1312", orgs[i % len(orgs)], {"query_date": "2026-12-01", "page_num": 1 + i, "page_size": 100})
    for i in range(20):
        add("1201", orgs[i % len(orgs)], {"fixmedins_type": "1", "fixmedins_code": orgs[(i + 1) % len(orgs)]})
    for i in range(100):
        org = orgs[i % len(orgs)]
        person = make_person(rng, institutions[org]["mdtrtarea_admvs"])
        add(
            "2201",
            org,
            {
                "psn_no": person.psn_no,
                "insutype": "310",
                "begntime": f"2026-12-02 {8 + i % 9:02d}:{i % 60:02d}:00",
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": person.certno,
                "ipt_otp_no": f"MZ2026120{i:05d}",
                "atddr_no": f"D{1000 + i % 40}",
                "dr_name": make_person(rng).name,
                "dept_code": f"K{i % 12:02d}",
                "dept_name": ["内科", "外科", "儿科", "妇产科", "中医科", "口腔科"][i % 6],
                "caty": f"A{i % 12:02d}",
            },
        )
    for i in range(200):
        org = orgs[i % len(orgs)]
        person = make_person(rng, institutions[org]["mdtrtarea_admvs"])
        add(
            "2207",
            org,
            {
                "psn_no": person.psn_no,
                "mdtrt_cert_type": "02",
                "mdtrt_cert_no": person.certno,
                "mdtrt_id": f"MDT{org[-5:]}{i:07d}",
                "chrg_bchno": f"CB{i:08d}",
                "insutype": "310",
                "medfee_sumamt": round(rng.uniform(20, 3000), 2),
                "psn_setlway": "01",
                "acct_used_flag": "1",
            },
        )
    for org in orgs:
        add(
            "3201",
            org,
            {
                "insutype": "310",
                "clr_type": "11",
                "setl_optins": institutions[org]["insuplc_admdvs"],
                "stmt_begndate": "2026-12-02",
                "stmt_enddate": "2026-12-02",
                "medfee_sumamt": 0.0,
                "fund_pay_sumamt": 0.0,
                "acct_pay": 0.0,
                "fixmedins_setl_cnt": 0,
            },
        )
    # Names with characters outside the Basic Multilingual Plane, kept byte for byte.
    add(
        "1101",
        orgs[0],
        {"mdtrt_cert_type": "02", "mdtrt_cert_no": make_person(rng).certno, "psn_name": "𠀀明😀"},
    )

    # Invalid on purpose: each must become REJECTED with its reason and never reach the gateway.
    add("9999", orgs[0], {"psn_no": "1"})
    add("1101", orgs[1], {"mdtrt_cert_type": "02"})
    add("1101", orgs[2], {"mdtrt_cert_type": "09", "mdtrt_cert_no": make_person(rng).certno})
    add("2207", orgs[3], {"psn_no": make_person(rng).psn_no, "medfee_sumamt": "一百元"})
    add("5301", "H00000000000", {"psn_no": make_person(rng).psn_no})
    add("1312", orgs[4], {"query_date": "2026/12/01", "hilist_code": "X" * 40})
    requests.append({**requests[0], "data": dict(requests[0]["data"])})  # duplicate request_id
    requests.append({"api_code": "5301", "org_code": orgs[0], "data": {"psn_no": "1"}, "note": "typo field"})
    return requests


def main() -> None:
    batch = make_batch()
    path = HERE / "demo_batch.json"
    path.write_text(json.dumps(batch, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(batch)} requests to {path}")


if __name__ == "__main__":
    main()
