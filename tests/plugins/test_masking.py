"""Personal data is masked before anyone reads it."""

from __future__ import annotations

import pytest

from medins.masking import mask_data, mask_text, mask_value


@pytest.mark.parametrize(
    ("field", "value", "masked"),
    [
        ("psn_name", "张三丰", "张**"),
        ("psn_name", "李", "李*"),
        ("mdtrt_cert_no", "440106199001011234", "440************234"),
        ("psn_no", "44010000000000000001", "440**************001"),
        ("tel", "13812345678", "138*****678"),
        ("card_sn", "1234", "****"),
    ],
)
def test_mask_value_keeps_only_enough_to_tell_records_apart(field, value, masked):
    assert mask_value(field, value) == masked


def test_mask_data_masks_personal_fields_at_any_depth():
    data = {
        "baseinfo": {"psn_name": "王小明", "certno": "44010619900101123X"},
        "insuinfo": [{"psn_no": "4401999"}],
    }

    masked = mask_data(data)

    assert masked["baseinfo"]["psn_name"] == "王**"
    assert "19900101" not in str(masked)
    assert masked["insuinfo"][0]["psn_no"] != "4401999"


@pytest.mark.parametrize(
    "text",
    [
        "证件号码 440106199001011234 校验失败",
        "手机 13812345678 已存在",
        "人员编号44010000000000000001不存在",
    ],
)
def test_mask_text_hides_numbers_inside_messages(text):
    import re

    secret = re.search(r"\d{11,}", text).group(0)

    assert secret not in mask_text(text)


def test_mask_text_leaves_institution_codes_and_interface_numbers():
    text = "institution H44010600001: 1101 refused"

    assert mask_text(text) == text
