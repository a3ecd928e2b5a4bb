"""A Modbus server for fieldagent's tests: pymodbus (an implementation we did not write), over
TCP on a loopback port or RTU on a serial device (a pseudo-terminal the test relays).

    server.py tcp PORT
    server.py rtutcp PORT     (RTU framing over TCP, as a serial gateway speaks)
    server.py rtu DEVICE

Units 1 and 3 hold the same known values (zero-based addresses, as on the wire):
  holding 0 = 1234 (u16), 1 = 0xFF9C (-100 as i16), 2..3 = 0x0001 0x0000 (65536 as u32, big),
          4..5 = 0xFFFF 0xFFFE (-2 as i32), 6..7 = 0x4148 0x0000 (12.5 as f32, big),
          8..9 = 0x0000 0x4148 (12.5 as f32, little), 10..49 = 10..49;
  input 0..49 = 100 + address; coil 0..49 = address % 2; discrete 0..49 = 1 - address % 2.
Anything at address 50 or above is "illegal data address" (exception 2).
Unit 5 holds the wider shapes, packed here with Python's struct (not by fieldagent's code), in
the four byte orders of the meter vendors' tables (ABCD big-endian; CDAB words swapped; BADC
bytes swapped in each register; DCBA little-endian):
  holding 0..3 = 1234.5678 as f64 ABCD, 4..7 = the same CDAB, 8..11 = 2**40 + 7 as u64 BADC,
          12..15 = -123456789012 as i64 DCBA, 16..17 = 123456.0 as f32 DCBA,
          18..21 = 2**53 as u64 ABCD.
Prints "ready" once it serves.
"""

import asyncio
import logging
import struct
import sys

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.framer import FramerType
from pymodbus.server import StartAsyncSerialServer, StartAsyncTcpServer

SIZE = 50


def unit():
    # pymodbus adds 1 to the address on the wire before it looks in a block, so each block
    # starts at 1 to put wire address 0 at its first value.
    holding = [1234, 0xFF9C, 0x0001, 0x0000, 0xFFFF, 0xFFFE, 0x4148, 0x0000, 0x0000, 0x4148]
    holding += list(range(10, SIZE))
    return ModbusSlaveContext(
        hr=ModbusSequentialDataBlock(1, holding),
        ir=ModbusSequentialDataBlock(1, [100 + a for a in range(SIZE)]),
        co=ModbusSequentialDataBlock(1, [a % 2 for a in range(SIZE)]),
        di=ModbusSequentialDataBlock(1, [1 - a % 2 for a in range(SIZE)]),
    )


def words(big_endian_bytes, order):
    """The registers that put a value (its bytes, most significant first) on the wire in
    `order`."""
    pairs = [big_endian_bytes[i : i + 2] for i in range(0, len(big_endian_bytes), 2)]
    if order in ("BADC", "DCBA"):
        pairs = [p[::-1] for p in pairs]
    if order in ("CDAB", "DCBA"):
        pairs = pairs[::-1]
    return [int.from_bytes(p, "big") for p in pairs]


def wide_unit():
    holding = (
        words(struct.pack(">d", 1234.5678), "ABCD")
        + words(struct.pack(">d", 1234.5678), "CDAB")
        + words(struct.pack(">Q", 2**40 + 7), "BADC")
        + words(struct.pack(">q", -123456789012), "DCBA")
        + words(struct.pack(">f", 123456.0), "DCBA")
        + words(struct.pack(">Q", 2**53), "ABCD")
    )
    return ModbusSlaveContext(hr=ModbusSequentialDataBlock(1, holding))


async def main():
    logging.basicConfig(level=logging.ERROR)
    kind, where = sys.argv[1], sys.argv[2]
    context = ModbusServerContext(slaves={1: unit(), 3: unit(), 5: wide_unit()}, single=False)
    if kind == "tcp":
        server = StartAsyncTcpServer(context=context, address=("127.0.0.1", int(where)))
    elif kind == "rtutcp":
        # A serial gateway in transparent mode: RTU frames, CRC included, over TCP.
        server = StartAsyncTcpServer(
            context=context, address=("127.0.0.1", int(where)), framer=FramerType.RTU
        )
    else:
        server = StartAsyncSerialServer(
            context=context, port=where, framer=FramerType.RTU, baudrate=19200
        )
    task = asyncio.create_task(server)
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await task


asyncio.run(main())
