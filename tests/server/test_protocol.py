"""The address table and the outgoing encoder, without sockets."""

import numpy as np
import pytest
from pythonosc import osc_packet
from pythonosc.osc_message_builder import OscMessageBuilder

from server import protocol
from server.osc import HANDLERS
from server.protocol import ProtocolError, parse
from server.wire import encode


def test_every_inbound_address_has_one_handler():
    assert set(HANDLERS) == {a.path for a in protocol.INBOUND}
    assert len({a.path for a in protocol.INBOUND}) == len(protocol.INBOUND)


def test_the_contract_addresses_of_the_issue_exist_with_their_arguments():
    specs = {a.path: a.spec() for a in protocol.INBOUND}
    assert specs["/inpaint"] == "s:layer i:t0 i:t1 i:f0 i:f1 [i:id]"
    assert specs["/codemap/set"] == "s:layer i:t i:f i:code ... [i:id]"
    assert specs["/note"] == "i:pitch i:velocity [i:id]"
    assert specs["/instrument"] == "i|s:instrument"
    out = {a.path: a.spec() for a in protocol.OUTBOUND}
    assert out["/render/done"] == "i:id s:wav_path i:frames i:sample_rate f:seconds f:level_db"
    assert out["/codemap"] == "s:layer i:version i:rows i:cols i:code ..."
    assert out["/error"] == "s:address s:message"
    assert specs["/export/instrument"] == "s:path [i:low] [i:high]"
    assert out["/export/progress"] == "i:done i:total"
    assert out["/export/done"] == "s:sfz_path s:sf2_path i:keys"


@pytest.mark.parametrize(
    ("path", "args", "values", "groups", "request_id"),
    [
        ("/generate", [], {}, [], None),
        ("/generate", [7], {}, [], 7),
        ("/inpaint", ["top", 0, 1.0, 2, 3], {"layer": "top", "t0": 0, "t1": 1, "f0": 2, "f1": 3}, [], None),
        ("/inpaint/cells", ["bottom", 1, 2, 3, 4, 9], {"layer": "bottom"}, [(1, 2), (3, 4)], 9),
        ("/codemap/set", ["top", 1, 2, 3], {"layer": "top"}, [(1, 2, 3)], None),
        ("/instrument", ["flute"], {"instrument": "flute"}, [], None),
        ("/instrument", [2.0], {"instrument": 2}, [], None),
        ("/temperature", [1], {"temperature": 1.0}, [], None),
        ("/play", [1], {"loop": 1}, [], None),
    ],
)
def test_parse_accepts_ints_and_floats_interchangeably_and_finds_the_request_id(path, args, values, groups, request_id):
    request = parse(path, args)
    assert (request.values, request.groups, request.request_id) == (values, groups, request_id)
    numbers = [v for k, v in request.values.items() if k in ("t0", "t1", "f0", "f1", "instrument") and v != "flute"]
    assert all(type(v) is int for v in numbers)


@pytest.mark.parametrize(
    ("path", "args", "message"),
    [
        ("/nowhere", [], "unknown address '/nowhere'"),
        ("/ping", [1], "expected no arguments, got 1 argument"),
        ("/pitch", [], "expected i:pitch, got 0 arguments"),
        ("/pitch", ["sixty"], "pitch must be a number, got the string 'sixty'"),
        ("/pitch", [60.5], "pitch must be a whole number, got 60.5"),
        ("/pitch", [float("nan")], "pitch must be finite"),
        ("/pitch", [True], "pitch must be a number, got bool"),
        ("/seed", [2**40], "seed 1099511627776 is outside 0..2147483647"),
        ("/top_p", [1.5], "top_p 1.5 is outside 0..1"),
        ("/inpaint", [3, 0, 1, 0, 1], "layer must be a string, got int 3"),
        ("/codemap/set", ["top", 1, 2], "expected s:layer i:t i:f i:code ... [i:id], got 3 arguments"),
        ("/generate", [1, 2], "expected [i:id], got 2 arguments"),
        ("/generate", [2**31], "request id 2147483648 is outside"),
        ("/note", [60, 128], "velocity 128 is outside 0..127"),
    ],
)
def test_parse_refuses_with_a_precise_message(path, args, message):
    with pytest.raises(ProtocolError) as err:
        parse(path, args)
    assert message in str(err.value)


def test_outgoing_messages_carry_only_int32_float32_and_strings():
    samples = np.linspace(-1, 1, 1024, dtype=np.float32)
    datagram = encode("/render/chunk", 3, 0, 1024, samples)
    assert len(datagram) <= protocol.MAX_DATAGRAM
    message = osc_packet.OscPacket(datagram).messages[0].message
    assert message.address == "/render/chunk" and message.params[:3] == [3, 0, 1024]
    np.testing.assert_array_equal(np.array(message.params[3:], np.float32), samples)
    datagram = encode("/render/done", 2**40, "/tmp/x.wav", np.int64(64000), 16000, np.float64(0.25))
    tags = datagram[datagram.index(b",") :].split(b"\0")[0]
    assert tags == b",isiif"  # no h, d, T/F or N: Max and Pd read none of them
    assert osc_packet.OscPacket(datagram).messages[0].message.params[0] == 2**31 - 1  # clipped to int32
    with pytest.raises(TypeError):
        encode("/x", True)
    with pytest.raises(ValueError):
        encode("/x", "a" * 9000)


def test_python_osc_builds_what_our_parser_reads():
    b = OscMessageBuilder("/inpaint")
    for value, tag in (("top", "s"), (0, "i"), (1.0, "d"), (2, "h"), (3, "f")):
        b.add_arg(value, tag)
    message = osc_packet.OscPacket(b.build().dgram).messages[0].message
    assert parse(message.address, message.params).values == {"layer": "top", "t0": 0, "t1": 1, "f0": 2, "f1": 3}


def test_markdown_table_lists_every_address_once_per_direction():
    table = protocol.markdown_table()
    for a in protocol.INBOUND:
        assert f"| in | `{a.path}` |" in table
    for a in protocol.OUTBOUND:
        assert f"| out | `{a.path}` |" in table


def test_the_documented_table_is_the_generated_one():
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "osc.md").read_text()
    documented = text.split("<!-- addresses:begin -->\n")[1].split("\n<!-- addresses:end -->")[0]
    assert documented == protocol.markdown_table()


def test_one_table_holds_each_settings_address_default_and_echo():
    """`protocol.SETTINGS` drives the address table, the handlers, the echo and `Settings`' defaults; the
    sampler's own defaults (sampling.Conditioning, kept as they are) must agree with it."""
    from dataclasses import asdict, fields

    from server.engine import Settings
    from server.osc import HANDLERS
    from server.sampling import Conditioning

    assert asdict(Settings()) == protocol.DEFAULTS
    assert {s.field for s in protocol.SETTINGS} == {f.name for f in fields(Settings)}
    for name in ("temperature", "top_p", "guidance", "harmonic"):
        assert getattr(Conditioning(60, 0), name) == protocol.DEFAULTS[name], name
    for s in protocol.SETTINGS:
        assert protocol.BY_PATH[s.address.path] is s.address and s.address.path in HANDLERS
