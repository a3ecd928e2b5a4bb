"""A Modbus TCP device for bench/scale: pymodbus (an implementation we did not write) serving
COUNT holding registers (unit 1, wire addresses 0..COUNT-1) on 127.0.0.1:PORT whose values change
every second: register a holds (a * 7 + t) % 1000 at second t, so every value differs from the
one a second before and each crosses 990 once every 1000 s (the bench's alert threshold).

    server.py PORT COUNT

Prints "ready" once it serves.
"""

import asyncio
import logging
import sys
import time

from pymodbus.datastore import (
    ModbusSequentialDataBlock,
    ModbusServerContext,
    ModbusSlaveContext,
)
from pymodbus.server import StartAsyncTcpServer


def values(count, t):
    return [(a * 7 + t) % 1000 for a in range(count)]


async def tick(block, count):
    while True:
        t = int(time.time())
        # pymodbus adds 1 to the wire address before it looks in a block.
        block.setValues(1, values(count, t))
        await asyncio.sleep(t + 1 - time.time())


async def main():
    logging.basicConfig(level=logging.ERROR)
    port, count = int(sys.argv[1]), int(sys.argv[2])
    block = ModbusSequentialDataBlock(1, values(count, int(time.time())))
    context = ModbusServerContext(slaves={1: ModbusSlaveContext(hr=block)}, single=False)
    asyncio.create_task(tick(block, count))
    server = asyncio.create_task(StartAsyncTcpServer(context=context, address=("127.0.0.1", port)))
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    await server


asyncio.run(main())
