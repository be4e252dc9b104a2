"""A small OSC client over UDP: what `inpaint-osc send`, the benchmark and the tests use to talk to a server.

It binds its own port and announces it with `/reply_port`, so replies reach it even while a patch listens
on the default reply port.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from pythonosc import osc_packet
from pythonosc.osc_message_builder import OscMessageBuilder

from server.wire import encode


class OscClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 9000, announce: bool = True, timeout: float = 10.0):
        self.server = (host, port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # a render's chunks arrive in a burst
        self.sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
        self.reply_port = self.sock.getsockname()[1]
        if announce:
            self.send("/reply_port", self.reply_port)
            self.wait_for("/pong", timeout=timeout)

    def send(self, address: str, *args: Any) -> None:
        self.sock.sendto(encode(address, *args), self.server)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def send_typed(self, address: str, *typed: tuple[str, Any]) -> None:
        """Arguments with explicit OSC types ("d", "h", "T", ...), for clients that send more than i/f/s."""
        b = OscMessageBuilder(address)
        for tag, value in typed:
            b.add_arg(value, tag)
        self.send_raw(b.build().dgram)

    def receive(self, timeout: float) -> tuple[str, list[Any]] | None:
        self.sock.settimeout(max(timeout, 1e-4))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        message = osc_packet.OscPacket(data).messages[0].message
        return message.address, list(message.params)

    def wait_for(self, *addresses: str, timeout: float = 30.0) -> tuple[str, list[Any]]:
        """The next reply on one of `addresses`; other replies are skipped. TimeoutError if none comes."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            reply = self.receive(left)
            if reply is not None and reply[0] in addresses:
                return reply
        raise TimeoutError(f"no {' or '.join(addresses)} within {timeout} s")

    def drain(self, quiet: float = 0.05) -> list[tuple[str, list[Any]]]:
        """Every reply until none arrives for `quiet` seconds."""
        out = []
        while (reply := self.receive(quiet)) is not None:
            out.append(reply)
        return out

    def close(self) -> None:
        self.sock.close()
