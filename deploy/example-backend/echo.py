"""An example WebSocket backend for docker-compose.yml: echoes every message."""
import asyncio

import websockets


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main():
    async with websockets.serve(echo, "0.0.0.0", 9000):
        await asyncio.Future()


asyncio.run(main())
