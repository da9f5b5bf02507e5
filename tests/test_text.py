from proslushka.text import LABELS, check, ctc_collapse, decode, encode, normalize


def test_alphabet_is_nemo_russian():
    assert len(LABELS) == 33 and LABELS[0] == " " and LABELS[-1] == "я" and "ё" not in LABELS


def test_normalize():
    assert (
        normalize("Съешь же ещё э\u0301тих — мягких, «французских» булок!")
        == "съешь же еще этих мягких французских булок"
    )
    assert normalize("  Кто-то  пришёл...\n") == "кто то пришел"
    assert normalize("2+2") == "2 плюс 2"


def test_check_reports_foreign_characters():
    assert check("привет") is None
    assert "'a'" in check("привет a")
    assert "'1'" in check("в 1 час")
    assert check("") == "empty text"


def test_encode_decode_round_trip():
    s = "в лесу родилась елочка"
    ids = encode(s)
    assert ids[0] == LABELS.index("в") and ids[1] == 0
    assert decode(ids) == s


def test_ctc_collapse_merges_repeats_then_drops_blanks():
    blank = 33
    assert ctc_collapse([blank, 1, 1, blank, 1, 2, 2, blank], blank) == [1, 1, 2]
    assert ctc_collapse([blank, blank], blank) == []
