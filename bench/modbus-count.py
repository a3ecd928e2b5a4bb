"""A Modbus/TCP relay that counts requests: listens on 127.0.0.1:LISTEN, forwards every
connection to 127.0.0.1:TARGET, and counts the frames the client sends by their MBAP headers
(transaction, protocol, length, then `length` bytes). The count is written to FILE after every
frame.

    modbus-count.py LISTEN TARGET FILE
"""

import asyncio
import sys

LISTEN, TARGET, FILE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
count = 0


async def pipe(reader, writer, frames):
    global count
    buffer = b""
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
            if frames:
                buffer += data
                while len(buffer) >= 6:
                    length = int.from_bytes(buffer[4:6], "big")
                    if len(buffer) < 6 + length:
                        break
                    buffer = buffer[6 + length:]
                    count += 1
                    with open(FILE, "w") as out:
                        out.write(f"{count}\n")
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(client_reader, client_writer):
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", TARGET)
    await asyncio.gather(
        pipe(client_reader, server_writer, True), pipe(server_reader, client_writer, False)
    )


async def main():
    with open(FILE, "w") as out:
        out.write("0\n")
    server = await asyncio.start_server(serve, "127.0.0.1", LISTEN)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
