"""Generated scenario files: load_scenario returns a scenario whose to_toml() loads back equal, or raises one
FedAuditError line. Never another exception."""

import datetime
import math
import tempfile
from dataclasses import fields
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedaudit.config import SECTIONS, load_scenario
from fedaudit.errors import FedAuditError

KNOWN = {name: [f.name for f in fields(cls)] for name, cls in SECTIONS.items()}
CHOICES = ["iid", "dirichlet:0.5", "dirichlet:0", "dirichlet:-1", "dirichlet:nan", "shards:2", "shards:0.5",
           "fedavg", "fedadam", "fedavgm", "fedprox", "adam", "sgd", "server", "participant", "client", "none",
           "digits", "mlp", "loss", "whitebox", "lira", "", "127.0.0.1:6379"]

# Every character but surrogates (which UTF-8 cannot hold): quotes, backslashes, newlines, NUL, DEL, ...
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
odd_text = st.one_of(text, st.sampled_from(['"', "'", "\\", "\n", "\r\n", "\x00", "\x7f", "\x1b[31m", '"""',
                                            "a\"b'c", "\\u0041", "é", "\U0001F600", "[x]", "a.b", "= 1"]))
key = st.one_of(st.sampled_from(sorted({k for ks in KNOWN.values() for k in ks} | {"options"})), odd_text)
scalar = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
    st.integers(min_value=-3, max_value=12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1),
    odd_text,
    st.sampled_from(CHOICES),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from([datetime.timezone.utc,
                                            datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))])),
    st.times(),
)
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(key, inner, max_size=3)), max_leaves=8)


@st.composite
def section(draw, name):
    keys = draw(st.lists(st.one_of(st.sampled_from(KNOWN[name]), key), max_size=6, unique=True))
    return {k: draw(value) for k in keys}


@st.composite
def scenario_doc(draw):
    doc = {}
    if draw(st.booleans()):
        doc["name"] = draw(st.one_of(st.sampled_from(["fuzz", "a-b.c_1"]), value))
    for name in draw(st.lists(st.sampled_from(sorted(KNOWN)), max_size=6, unique=True)):
        doc[name] = draw(section(name)) if draw(st.integers(0, 9)) else draw(value)
    if draw(st.integers(0, 9)) == 0:
        doc[draw(key)] = draw(value)
    return doc


# --- an independent TOML writer (every key quoted, every non-printable character as \uXXXX) ---

def t_str(s: str) -> str:
    return '"' + "".join(f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F or c in '"\\' else c
                         for c in s) + '"'


def t_val(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return t_str(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(t_val(x) for x in v) + "]"
    return "{" + ", ".join(f"{t_str(k)} = {t_val(x)}" for k, x in v.items()) + "}"


def to_text(doc: dict) -> str:
    lines = [f"{t_str(k)} = {t_val(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines.append(f"[{t_str(k)}]")
            lines += [f"{t_str(kk)} = {t_val(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def same(a, b) -> bool:
    """Equal, type for type (1 is not 1.0 nor true), NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def check(data: bytes, folder: Path) -> None:
    path = folder / "scenario.toml"
    path.write_bytes(data)
    try:
        s = load_scenario(path)
    except FedAuditError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        return
    resolved = s.to_toml()
    again_path = folder / "resolved.toml"
    again_path.write_text(resolved, encoding="utf-8")
    again = load_scenario(again_path)          # a resolved scenario always loads
    assert same(again.to_dict(), s.to_dict()), (resolved, s.to_dict(), again.to_dict())
    assert again.to_toml() == resolved


FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(scenario_doc())
def test_generated_scenarios_load_and_round_trip_or_fail_in_one_line(doc):
    with tempfile.TemporaryDirectory() as tmp:
        check(to_text(doc).encode("utf-8"), Path(tmp))


@FUZZ
@given(scenario_doc(), st.integers(min_value=0), st.binary(max_size=6), st.sampled_from(["cut", "insert", "bytes"]))
def test_damaged_scenario_files_fail_in_one_line(doc, where, junk, how):
    data = to_text(doc).encode("utf-8")
    at = where % (len(data) + 1)
    if how == "cut":
        data = data[:at]
    elif how == "insert":
        data = data[:at] + junk + data[at:]
    else:
        data = junk
    with tempfile.TemporaryDirectory() as tmp:
        check(data, Path(tmp))


def test_control_characters_survive_a_round_trip(tmp_path):
    weird = 'a"b\\c\nd\re\tf\x00g\x1bh\x7fi\U0001F600'
    path = tmp_path / "s.toml"
    path.write_text(to_text({"ray": {"address": weird}, "data": {"options": {weird: [weird], "k": {"x": weird}}}}))
    s = load_scenario(path)
    (tmp_path / "r.toml").write_text(s.to_toml())
    again = load_scenario(tmp_path / "r.toml")
    assert again.ray.address == weird and again.data.options == {weird: [weird], "k": {"x": weird}}
