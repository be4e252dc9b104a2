"""Tools around the instrument, not part of it: the OSC latency benchmark (`latency`), the reliability suite
(`stress`) and the soak (`soak`), and the one way they and the tests start a server process (`launcher`).
The runtime (`server.osc`, `server.worker`, `server.engine`, ...) never imports this package."""
