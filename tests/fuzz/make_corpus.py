#!/usr/bin/python3
"""Writes the seed corpus of fuzz_envelope: a handful of encoded ChatMessages,
valid and invalid, one per file in tests/fuzz/corpus/envelope/.

The protobuf wire format is written by hand (varints and length-delimited
fields), so the script needs nothing beyond Python's standard library and can
also produce encodings a protobuf library would refuse to write.
Usage: tests/fuzz/make_corpus.py [OUTDIR]
"""
import os
import sys


def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    return varint(num << 3 | 2) + varint(len(data)) + data


def field_varint(num, value):
    return varint(num << 3 | 0) + varint(value)


def chat_message(message_id="m-1", channel="general", sender_id="alice",
                 sent_at_us=1700000000000000, body=b"hello",
                 content_type="text/plain", attributes=(), reply_to=None):
    out = b""
    if message_id is not None:
        out += field_bytes(1, message_id)
    if channel is not None:
        out += field_bytes(2, channel)
    if sender_id is not None:
        out += field_bytes(3, sender_id)
    if sent_at_us is not None:
        out += field_varint(4, sent_at_us)
    if body is not None:
        out += field_bytes(5, body)
    if content_type is not None:
        out += field_bytes(6, content_type)
    for key, value in attributes:
        out += field_bytes(7, field_bytes(1, key) + field_bytes(2, value))
    if reply_to is not None:
        out += field_bytes(8, reply_to)
    return out


SEEDS = {
    "valid_minimal": chat_message(sender_id=None, sent_at_us=None, body=None,
                                  content_type=None),
    "valid_full": chat_message(attributes=[("lang", "fr"), ("emoji", "\U0001F600")],
                               reply_to="team.acks"),
    "valid_x": chat_message(channel="x", body=b"\x00\x01\xff" * 20),
    "valid_long_channel": chat_message(channel="x" * 200),
    "valid_id_128": chat_message(message_id="i" * 128, body=b"b" * 256),
    "valid_negative_time": chat_message(sent_at_us=-1),
    "valid_unknown_field": chat_message() + field_varint(15, 7) + field_bytes(99, b"zz"),
    "valid_repeated_field": chat_message() + field_bytes(1, "m-2"),
    "empty": b"",
    "garbage": b"\xff\xff\xff\xff\x0f",
    "truncated_length": b"\x0a\x64abc",
    "wrong_wire_type": field_varint(1, 5) + field_bytes(2, "general"),
    "empty_id": chat_message(message_id=""),
    "id_129": chat_message(message_id="i" * 129),
    "bad_channel": chat_message(channel="gen eral"),
    "channel_mismatch": chat_message(channel="random"),
    "body_too_large": chat_message(body=b"b" * 5000),
    "sender_not_utf8": chat_message(sender_id=b"al\xffice"),
    "id_with_nul": chat_message(message_id=b"m\x00-1"),
    "attr_surrogate": chat_message(attributes=[("k", b"\xed\xa0\x80")]),
    "reply_to_chat": chat_message(reply_to="chat.other"),
    "reply_to_dlq": chat_message(reply_to="chatvault.dlq"),
    "reply_to_bad_name": chat_message(reply_to=".."),
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "envelope")
    os.makedirs(outdir, exist_ok=True)
    for name, data in sorted(SEEDS.items()):
        with open(os.path.join(outdir, name + ".pb"), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {outdir}")


if __name__ == "__main__":
    main()
